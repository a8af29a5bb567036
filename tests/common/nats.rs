//! A NATS server with JetStream for tests: the one `MANDRILL_TEST_NATS_URL` names, or a
//! `nats-server -js` of the test's own on a free port with its own store directory,
//! stopped when dropped.
//!
//! Without a server program the test skips with a loud message, except under `CI=true`,
//! where a skip would hide a broker test that never ran, so it fails.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server to test against; an own one is killed when this is dropped.
pub struct Nats {
    pub url: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

/// How to start an own server again, on the same port and store.
struct Own {
    program: std::path::PathBuf,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where `nats-server` is installed, if anywhere.
fn program() -> Option<std::path::PathBuf> {
    which::which("nats-server").ok().or_else(|| {
        Some("/usr/sbin/nats-server".into()).filter(|p: &std::path::PathBuf| p.exists())
    })
}

impl Nats {
    /// The server for this test, or `None` when the test should skip.
    pub fn get() -> Option<Self> {
        if let Ok(url) = std::env::var("MANDRILL_TEST_NATS_URL") {
            return Some(Self {
                url,
                child: None,
                _dir: None,
            });
        }
        Self::own()
    }

    /// A server of the test's own, which it may stop and start, or `None` when the test
    /// should skip.
    pub fn own() -> Option<Self> {
        let Some(program) = program() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "nats-server is not installed and MANDRILL_TEST_NATS_URL is not set; \
                 under CI=true a broker test must run, not skip"
            );
            eprintln!(
                "\n*** SKIPPED: nats-server is not installed and MANDRILL_TEST_NATS_URL is \
                 not set; this JetStream test did not run ***\n"
            );
            return None;
        };
        Some(Self::start(&program))
    }

    fn start(program: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // A port found free may be taken again before the server binds it, by a test
        // running beside this one: the server then exits, and another port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let own = Own {
                program: program.to_path_buf(),
                port,
                dir: dir.path().to_path_buf(),
            };
            if let Some(child) = own.try_spawn() {
                return Self {
                    url: format!("nats://127.0.0.1:{port}"),
                    child: Some(child),
                    _dir: Some(dir),
                };
            }
        }
        panic!("nats-server could not start on any of 5 free ports");
    }

    fn own_settings(&self) -> Own {
        let dir = self._dir.as_ref().expect("a server of the test's own");
        Own {
            program: program().expect("nats-server"),
            port: self.url.rsplit(':').next().unwrap().parse().unwrap(),
            dir: dir.path().to_path_buf(),
        }
    }

    /// Stops the test's own server as an operator would, with SIGTERM: it writes its
    /// consumers' state first. (2.9's, killed outright, can forget the leases a consumer
    /// had out, and with them messages that then stay in a work queue for good.)
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("a server of the test's own");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = child.wait();
    }

    /// Starts the test's own server again, on the same port and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.child = Some(self.own_settings().spawn());
    }
}

impl Own {
    /// Starts the server and waits until it listens.
    fn spawn(&self) -> Child {
        self.try_spawn()
            .unwrap_or_else(|| panic!("nats-server could not start on port {}", self.port))
    }

    /// Starts the server and waits until it listens; `None` if it exits first, as it
    /// does when its port is taken. Whatever answers on the port must be this server.
    fn try_spawn(&self) -> Option<Child> {
        let mut child = Command::new(&self.program)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().expect("wait for nats-server").is_some() {
                return None;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Still running a moment after something listens: it is this server
                // that does. One that lost its port exits within milliseconds.
                std::thread::sleep(Duration::from_millis(50));
                if child.try_wait().expect("wait for nats-server").is_none() {
                    return Some(child);
                }
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A name no other test run uses, for a stream or a consumer.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Publishes `n` simulated messages into `stream` with `mandrill publish --create`.
pub fn publish(url: &str, stream: &str, n: usize) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "jetstream", "--create", "--nats-url"])
        .args([url, "--stream", stream, "--messages", &n.to_string()])
        .output()
        .expect("run mandrill publish");
    assert!(out.status.success(), "{out:?}");
}

/// Publishes the newline-delimited JSON messages of `file` into `stream` with
/// `mandrill publish --create --input`.
pub fn publish_file(url: &str, stream: &str, file: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "jetstream", "--create", "--nats-url"])
        .args([url, "--stream", stream, "--input"])
        .arg(file)
        .output()
        .expect("run mandrill publish");
    assert!(out.status.success(), "{out:?}");
}

/// What a durable consumer still holds (pending, unacknowledged) and what the
/// dead letters hold, by the server's count; deletes the stream and its dead letters.
pub fn consumer_left_and_delete(url: &str, stream: &str, consumer: &str) -> (u64, usize, u64) {
    let left = runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let s = js.get_stream(stream).await.expect("stream");
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            s.get_consumer(consumer).await.expect("consumer");
        let info = c.info().await.expect("consumer info");
        (info.num_pending, info.num_ack_pending)
    });
    let dlq = format!("{stream}_DLQ");
    let counts = counts_and_delete(url, &[stream, &dlq]);
    (left.0, left.1, counts[1])
}

/// Publishes payloads as they are, bad ones included, to the stream's subject, and
/// waits until the stream has stored each one.
pub fn publish_raw(url: &str, stream: &str, payloads: Vec<Vec<u8>>) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        for p in payloads {
            js.publish(stream.to_string(), p.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    })
}

/// The payloads a stream holds, by its own reading.
pub fn payloads(url: &str, stream: &str) -> Vec<Vec<u8>> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let s = js.get_stream(stream).await.expect("stream");
        let last = s.cached_info().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push(m.payload.to_vec());
            }
        }
        out
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// How many messages each stream holds, by the server's own count; deletes them after.
pub fn counts_and_delete(url: &str, streams: &[&str]) -> Vec<u64> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let mut out = Vec::new();
        for name in streams {
            let mut s = js.get_stream(*name).await.expect("stream");
            out.push(s.info().await.expect("stream info").state.messages);
            js.delete_stream(*name).await.expect("delete stream");
        }
        out
    })
}

/// Flags for the service consuming `stream` on `url`, creating what is missing, then
/// `extra`.
pub fn source<'a>(url: &'a str, stream: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--source",
        "jetstream",
        "--nats-url",
        url,
        "--stream",
        stream,
        "--create",
    ];
    flags.extend_from_slice(extra);
    flags
}
