//! `CommandAction`: restarts a host by running a program, such as `ssh HOST sudo
//! systemctl reboot`, from an argv template.
//!
//! Each job runs as its own task on a runtime of the action's own, on its own thread:
//! starting a process forks the service, which takes long enough that a thousand of them
//! held the event loop for a second, so no process is started on the event loop. The template's placeholders are filled inside one argv element each
//! and never go through a shell. The child gets an environment cleared down to an
//! allow-list, a closed stdin, and a process group of its own, which is killed whole at
//! the timeout, when the service stops, or when the task is dropped: no child, and no
//! child of a child, outlives its restart.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Recipient;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::io::AsyncReadExt;

use super::{ActionsDone, JobDone, RestartAction, RestartError, RestartJob};
use crate::FastSet;

/// The environment variables a command keeps; every other one is cleared.
pub const ENV_ALLOWED: [&str; 8] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "SSH_AUTH_SOCK",
];

/// How much of a failed command's standard error its failure keeps: the end of it.
const STDERR_KEPT: usize = 4096;

/// Why a command template cannot be used; found at start-up.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("the command is empty; give at least a program")]
    Empty,
    #[error("unknown placeholder {{{name}}} in {element:?}; known: {{instance}}, {{hostname}}, {{message_id}}")]
    Unknown { element: String, name: String },
    #[error("unclosed '{{' in {0:?}; write '{{{{' for a brace")]
    Unclosed(String),
    #[error("program {program:?} not found: {reason}")]
    NotFound { program: String, reason: String },
}

/// One part of an argv element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Instance,
    Hostname,
    MessageId,
}

/// An argv template: the program, then its arguments, each with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    program: PathBuf,
    args: Vec<Vec<Piece>>,
}

impl Template {
    /// The program it runs.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// Parses `argv` and finds its program on the `PATH`, so that a typo is a start-up
    /// error rather than a failure per message.
    pub fn parse(argv: &[String]) -> Result<Self, TemplateError> {
        let (program, args) = argv.split_first().ok_or(TemplateError::Empty)?;
        if program.is_empty() {
            return Err(TemplateError::Empty);
        }
        let found = which::which(program).map_err(|e| TemplateError::NotFound {
            program: program.clone(),
            reason: e.to_string(),
        })?;
        let args = args.iter().map(|a| pieces(a)).collect::<Result<_, _>>()?;
        Ok(Self {
            program: found,
            args,
        })
    }

    /// The arguments for one job.
    fn render(&self, job: &RestartJob, domain: &Arc<str>) -> Vec<String> {
        self.args
            .iter()
            .map(|element| {
                element
                    .iter()
                    .map(|p| match p {
                        Piece::Text(t) => t.clone(),
                        Piece::Instance => job.host.to_string(),
                        Piece::Hostname => job.host.hostname(domain).to_string(),
                        Piece::MessageId => job.message_id.to_string(),
                    })
                    .collect()
            })
            .collect()
    }

    /// The command line a job would run, for logs: the program and its arguments as
    /// Rust string literals, so that an element with spaces reads as one.
    pub fn shown(&self, job: &RestartJob, domain: &Arc<str>) -> String {
        std::iter::once(format!("{:?}", self.program.display().to_string()))
            .chain(self.render(job, domain).iter().map(|a| format!("{a:?}")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Splits one argv element into text and placeholders; `{{` and `}}` are braces.
fn pieces(element: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                if !element.contains('}') {
                    return Err(TemplateError::Unclosed(element.to_string()));
                }
                let piece = match name.as_str() {
                    "instance" => Piece::Instance,
                    "hostname" => Piece::Hostname,
                    "message_id" => Piece::MessageId,
                    _ => {
                        return Err(TemplateError::Unknown {
                            element: element.to_string(),
                            name,
                        })
                    }
                };
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(piece);
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() || out.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// How the command action runs.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    pub template: Template,
    /// A command still running after this is killed, with its whole process group.
    pub timeout: Duration,
    pub domain: Arc<str>,
}

/// The process groups of commands still running, so that they can all be killed.
type Groups = Arc<Mutex<FastSet<i32>>>;

/// Restarts hosts by running a command per host.
pub struct CommandAction {
    config: Arc<CommandConfig>,
    groups: Groups,
    /// Where the commands run; `None` once shut down.
    runtime: Option<tokio::runtime::Runtime>,
}

impl CommandAction {
    /// Starts the action's runtime; it fails only if a thread cannot be started.
    pub fn new(config: CommandConfig) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mandrill-commands")
            .enable_all()
            .build()?;
        Ok(Self {
            config: Arc::new(config),
            groups: Groups::default(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for CommandAction {
    fn drop(&mut self) {
        // Dropped on the event loop, which must not wait: the tasks are dropped, and
        // their guards kill what they started.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl RestartAction for CommandAction {
    fn name(&self) -> &'static str {
        "command"
    }

    fn start(&mut self, jobs: Vec<RestartJob>, done: &Recipient<ActionsDone>) {
        let Some(runtime) = &self.runtime else {
            let outcomes = jobs
                .into_iter()
                .map(|job| JobDone {
                    job,
                    result: Err(RestartError::Unavailable(
                        "the command action is stopped".into(),
                    )),
                })
                .collect();
            return done.do_send(ActionsDone(outcomes));
        };
        for job in jobs {
            let (config, groups, done) = (self.config.clone(), self.groups.clone(), done.clone());
            runtime.spawn(async move {
                let result = run(&config, &job, &groups).await;
                done.do_send(ActionsDone(vec![JobDone { job, result }]));
            });
        }
    }

    fn describe(&self, job: &RestartJob) -> String {
        self.config.template.shown(job, &self.config.domain)
    }

    fn stop(&mut self) {
        let groups = std::mem::take(&mut *self.groups.lock().expect("process groups"));
        for pgid in groups {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Kills a process group when dropped, unless its leader was reaped: a task dropped at
/// shutdown, or cancelled by its timeout, takes its children with it.
struct GroupGuard {
    pgid: i32,
    groups: Groups,
    reaped: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
        self.groups
            .lock()
            .expect("process groups")
            .remove(&self.pgid);
    }
}

/// Runs one job's command to its end or its timeout.
async fn run(
    config: &CommandConfig,
    job: &RestartJob,
    groups: &Groups,
) -> Result<(), RestartError> {
    let hostname = || job.host.hostname(&config.domain);
    let mut command = tokio::process::Command::new(&config.template.program);
    command
        .args(config.template.render(job, &config.domain))
        .env_clear()
        .envs(
            ENV_ALLOWED
                .iter()
                .filter_map(|k| Some((*k, std::env::var_os(k)?))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        RestartError::Unavailable(format!(
            "cannot run {}: {e}",
            config.template.program.display()
        ))
    })?;
    // The child leads its own group, whose id is its pid.
    let pgid = child.id().map_or(0, |id| id as i32);
    groups.lock().expect("process groups").insert(pgid);
    let mut guard = GroupGuard {
        pgid,
        groups: groups.clone(),
        reaped: false,
    };
    let stderr = child.stderr.take();
    let ran = tokio::time::timeout(config.timeout, async {
        let (status, tail) = tokio::join!(child.wait(), tail_of(stderr));
        (status, tail)
    })
    .await;
    match ran {
        Err(_) => {
            // The guard kills the whole group; reap the leader so that it leaves no zombie.
            drop(guard);
            let _ = child.wait().await;
            Err(RestartError::TimedOut {
                host: hostname(),
                after: config.timeout,
            })
        }
        Ok((status, tail)) => {
            guard.reaped = true;
            // Children the command left behind in its group go with it.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let status = status.map_err(|e| RestartError::Unavailable(e.to_string()))?;
            if status.success() {
                return Ok(());
            }
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended abnormally".to_string(),
            };
            let reason = if tail.trim().is_empty() {
                how
            } else {
                format!("{how}: {}", tail.trim())
            };
            Err(RestartError::Failed {
                host: hostname(),
                reason: reason.into(),
            })
        }
    }
}

/// The last `STDERR_KEPT` bytes a stream gives before it ends, as text.
async fn tail_of(stream: Option<tokio::process::ChildStderr>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = VecDeque::with_capacity(STDERR_KEPT);
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if kept.len() == STDERR_KEPT {
                kept.pop_front();
            }
            kept.push_back(b);
        }
    }
    String::from_utf8_lossy(kept.make_contiguous()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placeholders_fill_one_element_each() {
        let t = Template::parse(&argv(&["sh", "-c", "x {hostname} '{instance}' {{ok}}"])).unwrap();
        let job = RestartJob {
            id: crate::message::AckId(1),
            message_id: uuid::Uuid::nil(),
            host: crate::message::InstanceName::parse("cattle-zpsk").unwrap(),
            started_ms: 0,
            attempt: 1,
        };
        let args = t.render(&job, &"example.net".into());
        assert_eq!(args, ["-c", "x cattle-zpsk.example.net 'cattle-zpsk' {ok}"]);
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(Template::parse(&[]), Err(TemplateError::Empty));
        assert!(matches!(
            Template::parse(&argv(&["sh", "{host}"])),
            Err(TemplateError::Unknown { name, .. }) if name == "host"
        ));
        assert!(matches!(
            Template::parse(&argv(&["sh", "{instance"])),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse(&argv(&["no-such-program-anywhere"])),
            Err(TemplateError::NotFound { .. })
        ));
    }
}
