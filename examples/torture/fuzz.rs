//! Scenario 7, fuzzing: the parsers of text from outside (a broker's message line, the
//! config file, a duration) fed inputs made to break them. The targets' bodies, with the
//! invariants they check, are `mandrill::fuzzing`; `fuzz/` wraps them for cargo-fuzz.
//!
//! The full run builds the targets with `cargo +nightly fuzz build` and runs libFuzzer on
//! each for a fixed time. The slice runs the same bodies in-process on stable: a seeded
//! stream of mutations (bit flips, bytes and tokens put in or taken out, truncations,
//! splices) of the committed seed corpus, a fixed number of inputs per target.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::util::{exit_within, Options, Section};

/// A target's body: it panics when the parser breaks a promise.
type Body = fn(&[u8]);

/// A target: its name under `fuzz/fuzz_targets`, its body, and the inputs the slice
/// gives it. The config body runs clap several times an input, so it gets fewer.
const TARGETS: &[(&str, Body, u64)] = &[
    ("message_line", mandrill::fuzzing::message_line, 20_000),
    ("config_file", mandrill::fuzzing::config_file, 2_000),
    ("duration", mandrill::fuzzing::duration, 20_000),
];

/// How long libFuzzer runs each target in the full run.
const FULL_SECONDS: u64 = 60;

/// Pieces of the three grammars, which random bytes alone would seldom spell.
const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "=",
    "\n",
    "\r\n",
    "-",
    "_",
    ".",
    "\\u0000",
    "\\\"",
    "null",
    "true",
    "false",
    "1e308",
    "-0",
    "NaN",
    "inf",
    "\"message_id\"",
    "\"instance_name\"",
    "urn:uuid:",
    " at line 1 column 2",
    "[decider]",
    "[inject]",
    "[[x]]",
    "\"\"\"",
    "'''",
    "max-in-flight",
    "failure_rate",
    "ack-deadline",
    "command",
    "ns",
    "us",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "w",
    "month",
    "year",
    "366d",
    "18446744073709551615",
    "9999999999",
    "é",
    "\u{1F600}",
];

/// One target's run, full or sliced.
#[derive(Debug, Serialize)]
struct FuzzRun {
    target: &'static str,
    engine: &'static str,
    seconds: f64,
    executions: u64,
    crashes: u64,
    /// libFuzzer's coverage (edges) and corpus size at the end; none in the slice.
    coverage: Option<u64>,
    corpus: Option<u64>,
    /// What the first crash was, and where its input is.
    crash: Option<String>,
}

/// Runs the scenario: libFuzzer for `FULL_SECONDS` a target, or the in-process slice.
pub fn run(o: &Options) -> Section {
    let mut out = Section::default();
    let runs = if o.quick {
        eprintln!("7. fuzzing: each target's body in-process on seeded mutations");
        TARGETS
            .iter()
            .enumerate()
            .map(|(i, &(name, body, inputs))| in_process(o, i as u64, name, body, inputs))
            .collect()
    } else {
        eprintln!("7. fuzzing: cargo fuzz, {FULL_SECONDS} s a target");
        match libfuzzer(o, &mut out) {
            Some(runs) => runs,
            None => return out,
        }
    };
    for r in &runs {
        if r.crashes != 0 {
            out.failures.push(format!(
                "fuzz target {} crashed: {}",
                r.target,
                r.crash.as_deref().unwrap_or("")
            ));
        }
        let name = format!("7. fuzzing {}", r.target);
        out.row(
            &name,
            &format!("executions; crashes ({})", r.engine),
            format!("{}; {}", r.executions, r.crashes),
        );
        if let (Some(cov), Some(corpus)) = (r.coverage, r.corpus) {
            out.row(
                &name,
                "coverage (edges); corpus",
                format!("{cov}; {corpus}"),
            );
        }
    }
    out.runs("fuzz", &runs);
    out
}

/// The committed seed inputs of a target.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = project().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    // Sorted, so that a seed gives the same stream whatever the directory's order.
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("a seed file"))
        .collect()
}

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The slice: the seeds, then `inputs` mutations of them and of the mutants kept, each
/// given to `body` under `catch_unwind`. A panic is a crash; its input is written to
/// the output directory.
fn in_process(o: &Options, i: u64, target: &'static str, body: fn(&[u8]), inputs: u64) -> FuzzRun {
    let mut rng = SmallRng::seed_from_u64(o.seed ^ ((0x5eed << 8) | i));
    let mut pool = seeds(target);
    let seeds = pool.len();
    // Panics are counted here, not printed: the hook is quiet for the run's length.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let (mut crashes, mut crash) = (0, None);
    for n in 0..seeds as u64 + inputs {
        let input = if (n as usize) < seeds {
            pool[n as usize].clone()
        } else {
            mutate(&mut rng, &pool)
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| body(&input))) {
            crashes += 1;
            if crash.is_none() {
                let file = o.out.join(format!("fuzz-crash-{target}"));
                let _ = std::fs::write(&file, &input);
                crash = Some(format!(
                    "{} on {:?} (input in {})",
                    panic_text(&*payload),
                    String::from_utf8_lossy(&input),
                    file.display()
                ));
            }
        }
        // Some mutants are kept to be mutated further, so that changes add up; the
        // pool is bounded so that the slice stays small.
        if n as usize >= seeds && pool.len() < 512 && rng.random_ratio(1, 8) {
            pool.push(input);
        }
    }
    std::panic::set_hook(hook);
    FuzzRun {
        target,
        engine: "in-process, seeded mutations",
        seconds: start.elapsed().as_secs_f64(),
        executions: seeds as u64 + inputs,
        crashes,
        coverage: None,
        corpus: None,
        crash,
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// One input made from the pool by one to four mutations.
fn mutate(rng: &mut SmallRng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut v = pool[rng.random_range(0..pool.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=v.len());
        match rng.random_range(0..8) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            2 => v.insert(at, rng.random()),
            3 => {
                let end = rng.random_range(at..=v.len().min(at + 16));
                v.drain(at..end);
            }
            4 => v.truncate(at),
            5 => {
                // A splice: this input's start, another's end.
                let other = &pool[rng.random_range(0..pool.len())];
                let from = rng.random_range(0..=other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            6 if !v.is_empty() => {
                let from = rng.random_range(0..v.len());
                let end = rng.random_range(from..=v.len().min(from + 32));
                let piece = v[from..end].to_vec();
                v.splice(at..at, piece);
            }
            _ => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                v.splice(at..at, token.iter().copied());
            }
        }
    }
    v
}

/// The full run: builds the targets, then runs each for `FULL_SECONDS`. Without
/// cargo-fuzz on nightly the run cannot be made, and says so as a failure.
fn libfuzzer(o: &Options, out: &mut Section) -> Option<Vec<FuzzRun>> {
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(project()).args(["+nightly", "fuzz"]);
        c
    };
    let found = cargo()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        out.failures.push(
            "cargo-fuzz on nightly is missing: rustup toolchain install nightly; \
             cargo install cargo-fuzz --locked"
                .into(),
        );
        out.row("7. fuzzing", "cargo +nightly fuzz", "missing");
        return None;
    }
    let start = Instant::now();
    let built = cargo()
        .arg("build")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success());
    out.row(
        "7. fuzzing",
        "build of the targets, seconds",
        format!("{:.0}", start.elapsed().as_secs_f64()),
    );
    if !built {
        out.failures.push("cargo +nightly fuzz build failed".into());
        return None;
    }
    let runs = TARGETS
        .iter()
        .enumerate()
        .map(|(i, &(target, _, _))| {
            // New inputs go to scratch; the committed seeds are only read.
            let corpus = o.scratch.join("fuzz-corpus").join(target);
            std::fs::create_dir_all(&corpus).expect("a corpus directory");
            let log = o.scratch.join(format!("fuzz-{target}.log"));
            let start = Instant::now();
            let mut child = cargo()
                .args(["run", target])
                .arg(&corpus)
                .arg(project().join("fuzz/corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={FULL_SECONDS}"))
                .arg(format!("-seed={}", (o.seed + i as u64) % (1 << 31) + 1))
                .arg("-print_final_stats=1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("a log file"))
                .spawn()
                .expect("cargo fuzz run");
            let (status, killed) =
                exit_within(&mut child, Duration::from_secs(FULL_SECONDS * 3 + 60));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut run = parse_libfuzzer(target, &text, start.elapsed().as_secs_f64());
            if run.crashes == 0 && (killed || !status.is_some_and(|s| s.success())) {
                // A run that ended badly with no crash written is still a broken run.
                run.crashes = 1;
                run.crash = Some(format!(
                    "exited with {status:?}{}, log {}",
                    if killed { " when killed" } else { "" },
                    log.display()
                ));
            }
            run
        })
        .collect();
    Some(runs)
}

/// A libFuzzer run's figures from its log: the final stats, the last status line, and
/// the crash inputs it wrote.
fn parse_libfuzzer(target: &'static str, log: &str, seconds: f64) -> FuzzRun {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
    };
    // `#123  pulse  cov: 456 ft: 789 corp: 12/34b ...`: the last one is the end.
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov: "));
    let field = |name: &str| {
        last.and_then(|l| l.split_whitespace().skip_while(|w| *w != name).nth(1))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
    };
    let written: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("Test unit written to ").nth(1))
        .collect();
    let reason = log
        .lines()
        .find(|l| l.contains("panicked at") || l.contains("==ERROR:"))
        .unwrap_or("");
    FuzzRun {
        target,
        engine: "libFuzzer",
        seconds,
        // The final stats are missing when the run stopped on a crash: then the last
        // status line's count is the nearest figure.
        executions: stat("number_of_executed_units")
            .or_else(|| last.and_then(|l| l[1..].split_whitespace().next()?.parse().ok()))
            .unwrap_or(0),
        crashes: written.len() as u64,
        coverage: field("cov:"),
        corpus: field("corp:"),
        crash: written
            .first()
            .map(|file| format!("{reason} (input in {file})")),
    }
}
