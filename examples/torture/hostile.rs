//! Scenario 3, hostile input: seeded lines of every kind a producer can get wrong
//! (malformed, truncated and deeply nested JSON, invalid UTF-8, NUL bytes, over-long
//! lines and one huge line streamed, duplicate ids, names with shell syntax, unicode and
//! dots), fed on stdin, and the same payloads published onto JetStream and the Pub/Sub
//! emulator. The generator knows what each line must come to, so every rejection and
//! every acceptance is checked against it, line by line on stdin. Every accepted message
//! restarts its host through a recording command, so that the names reaching an action's
//! argv, the store and the `Restarted` lines can be checked for any name that is not a
//! valid one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::support::emulator::{Drained, Emulator, PROJECT};
use crate::util::{binary, conserved, last_report, Options, Section};

/// The service's own limit on a line or a payload.
const MAX_LINE: usize = 64 * 1024;
/// The peak RSS past which a run counts as holding a huge line in memory: an eighth of
/// the full run's line, far above what the service needs for anything else.
const RSS_LIMIT_MB: f64 = 256.0;
/// The project the scenario's Pub/Sub names live in; the emulator takes any.
/// The domain the service appends to instance names, by default.
const DOMAIN: &str = ".example.net";

/// What a line must come to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Accept,
    Reject,
    /// A blank line, which the stdin source skips without a word.
    Skip,
}

/// One generated line, without its newline.
struct Line {
    kind: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    /// The message id of an accepted line, as text.
    id: Option<String>,
    /// The instance name of an accepted line.
    name: Option<String>,
}

/// Names an attacker would try: shell syntax, paths, dots, flags, unicode lookalikes,
/// control characters, template syntax and log forgery. Each is sent JSON-escaped, so
/// the JSON is well-formed and only the name is hostile.
fn hostile_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "a;rm -rf /",
        "cattle-1; rm -rf /",
        "$(reboot)",
        "`id`",
        "${IFS}id",
        "../..",
        "../../etc/passwd",
        "/etc/passwd",
        "a.b.c",
        "cattle-zpsk.example.net",
        ".",
        "..",
        "-rf",
        "--help",
        "-",
        "--",
        "cattle-",
        "",
        " ",
        "cattle zpsk",
        "cattle\nzpsk",
        "cattle\r",
        "cattle\t",
        "x\n2026-01-01T00:00:00Z  INFO Restarted forged-host.example.net",
        "CATTLE",
        "Cattle-zpsk",
        "c\u{0430}ttle",
        "\u{ff43}\u{ff41}\u{ff54}\u{ff54}\u{ff4c}\u{ff45}",
        "cattle\u{200b}",
        "cattle\u{202e}kspz",
        "\u{010b}attle",
        "caf\u{e9}",
        "\u{1f600}",
        "a|b",
        "a&&b",
        "a>b",
        "a<b",
        "'a'",
        "\"a\"",
        "a\\b",
        "*",
        "?",
        "~root",
        "{instance}",
        "{hostname}",
        "{{",
        "%s%n",
        "a,b",
        "a=b",
        "a\u{0}b",
        "a\u{7f}b",
        "a_b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("x".repeat(64));
    v.push("a".repeat(1000));
    v.push("\u{0430}".repeat(40));
    v
}

/// Valid names at the edges of the rule: one character, digits, inner hyphens, the
/// longest label, a punycode label, and names long enough to be interned.
fn edge_names(rng: &mut SmallRng) -> String {
    match rng.random_range(0..6) {
        0 => ["a", "0", "9", "z"][rng.random_range(0..4)].to_string(),
        1 => "9-9".to_string(),
        2 => "x".repeat(63),
        3 => "xn--80ak6aa92e".to_string(),
        4 => format!("a-{}-b", label(rng, 40)),
        _ => {
            let len = rng.random_range(13..=63);
            label(rng, len)
        }
    }
}

/// A random run of `[a-z0-9]`.
fn label(rng: &mut SmallRng, len: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// Whether `s` is a valid instance name by the wire contract, checked here on its own
/// rather than by the service's parser: one DNS label of `[a-z0-9-]`, 1 to 63
/// characters, with no hyphen at either end.
fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn uuid(rng: &mut SmallRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn message(id: &str, name: &str) -> Vec<u8> {
    serde_json::json!({ "message_id": id, "instance_name": name })
        .to_string()
        .into_bytes()
}

/// A line naming `name`, accepted or rejected as the name is valid or not.
fn named(rng: &mut SmallRng, kind: &'static str, name: &str) -> Line {
    let id = uuid(rng);
    let ok = valid_name(name);
    Line {
        kind,
        bytes: message(&id, name),
        expect: if ok { Expect::Accept } else { Expect::Reject },
        id: ok.then_some(id),
        name: ok.then(|| name.to_string()),
    }
}

fn reject(kind: &'static str, bytes: Vec<u8>) -> Line {
    Line {
        kind,
        bytes,
        expect: Expect::Reject,
        id: None,
        name: None,
    }
}

/// Generates `n` lines, none with a newline inside, drawn from `rng`.
fn generate(rng: &mut SmallRng, n: usize) -> Vec<Line> {
    let hostile = hostile_names();
    let mut accepted: Vec<usize> = Vec::new();
    let mut lines: Vec<Line> = Vec::with_capacity(n);
    while lines.len() < n {
        let roll = rng.random_range(0..100);
        let line = match roll {
            0..30 => {
                let len = rng.random_range(1..8);
                let name = format!("host-{}", label(rng, len));
                let mut l = named(rng, "valid", &name);
                // Some producers end lines with CRLF; the carriage return is not part of
                // the message.
                if rng.random_bool(0.1) {
                    l.bytes.push(b'\r');
                }
                l
            }
            30..38 if !accepted.is_empty() => duplicate(rng, &lines, &accepted),
            38..50 => malformed(rng),
            50..60 => {
                let full = message(&uuid(rng), "host-cut");
                let cut = rng.random_range(1..full.len());
                reject("truncated json", full[..cut].to_vec())
            }
            60..65 => nested(rng),
            65..73 => invalid_utf8(rng),
            73..80 => nul(rng),
            80..92 => {
                let name = hostile[rng.random_range(0..hostile.len())].clone();
                named(rng, "hostile name", &name)
            }
            92..96 => {
                let name = edge_names(rng);
                named(rng, "edge name", &name)
            }
            96..98 => overlong(rng),
            98..100 => Line {
                kind: "blank",
                bytes: [&b""[..], b"   ", b"\t", b"\r"][rng.random_range(0..4)].to_vec(),
                expect: Expect::Skip,
                id: None,
                name: None,
            },
            _ => continue,
        };
        debug_assert!(!line.bytes.contains(&b'\n'));
        if line.expect == Expect::Accept {
            accepted.push(lines.len());
        }
        lines.push(line);
    }
    lines
}

/// An accepted line again, byte for byte, or its id with another valid name.
fn duplicate(rng: &mut SmallRng, lines: &[Line], accepted: &[usize]) -> Line {
    let first = &lines[accepted[rng.random_range(0..accepted.len())]];
    let id = first.id.clone().expect("an accepted line has an id");
    let (bytes, name) = if rng.random_bool(0.5) {
        (first.bytes.clone(), first.name.clone())
    } else {
        let name = format!("dup-{}", label(rng, 4));
        (message(&id, &name), Some(name))
    };
    Line {
        kind: "duplicate id",
        bytes,
        expect: Expect::Accept,
        id: Some(id),
        name,
    }
}

fn malformed(rng: &mut SmallRng) -> Line {
    let id = uuid(rng);
    let good = String::from_utf8(message(&id, "host-ok")).expect("json is text");
    let bytes: Vec<u8> = match rng.random_range(0..18) {
        // Ids that try to break or bend the log line a rejection is reported in.
        15 => br#"{"message_id":"\n2026-01-01T00:00:00Z  INFO Restarted forged-id.example.net","instance_name":"a"}"#.to_vec(),
        16 => br#"{"message_id":"\u202eten.elpmaxe","instance_name":"a"}"#.to_vec(),
        0 => b"{not json".to_vec(),
        1 => b"{\"message_id\":}".to_vec(),
        2 => b"null".to_vec(),
        3 => b"42".to_vec(),
        4 => b"\"a string\"".to_vec(),
        5 => b"[]".to_vec(),
        6 => b"{}".to_vec(),
        7 => format!(r#"{{"message_id":"{id}"}}"#).into_bytes(),
        8 => br#"{"instance_name":"host-ok"}"#.to_vec(),
        9 => br#"{"message_id":"not-a-uuid","instance_name":"host-ok"}"#.to_vec(),
        10 => br#"{"message_id":12345,"instance_name":"host-ok"}"#.to_vec(),
        11 => format!(r#"{{"message_id":"{id}","message_id":"{id}","instance_name":"host-ok"}}"#)
            .into_bytes(),
        12 => format!("{good} trailing").into_bytes(),
        13 => format!("{good}{good}").into_bytes(),
        14 => format!("{{'message_id':'{id}','instance_name':'host-ok'}}").into_bytes(),
        // Printable garbage, never blank and never a newline.
        _ => (0..rng.random_range(1..200))
            .map(|_| rng.random_range(0x21u8..0x7f))
            .collect(),
    };
    reject("malformed json", bytes)
}

/// Nesting far past serde_json's recursion limit, yet under the line limit, so that the
/// parser, not the length check, has to refuse it.
fn nested(rng: &mut SmallRng) -> Line {
    let depth = rng.random_range(200..30_000);
    let bytes = match rng.random_range(0..4) {
        0 => "[".repeat(2 * depth),
        1 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        2 => format!("{}1{}", "{\"a\":".repeat(depth / 5), "}".repeat(depth / 5)),
        _ => format!(
            r#"{{"message_id":"{}","instance_name":{}{}}}"#,
            uuid(rng),
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    };
    reject("nested json", bytes.into_bytes())
}

fn invalid_utf8(rng: &mut SmallRng) -> Line {
    const BAD: &[&[u8]] = &[
        &[0xff],
        &[0xc3, 0x28],
        &[0xe2, 0x82],
        &[0xed, 0xa0, 0x80],
        &[0xc0, 0xaf],
        &[0xf8, 0x88, 0x80, 0x80, 0x80],
        &[0x80],
    ];
    let bad = BAD[rng.random_range(0..BAD.len())];
    let bytes = match rng.random_range(0..3) {
        // In the name, which is otherwise valid.
        0 => {
            let mut b = message(&uuid(rng), "host-utf8");
            let at = b.len() - 4;
            b.splice(at..at, bad.iter().copied());
            b
        }
        // In the id.
        1 => {
            let mut b = message(&uuid(rng), "host-utf8");
            b.splice(16..16, bad.iter().copied());
            b
        }
        // A whole line of high bytes.
        _ => (0..rng.random_range(1..100))
            .map(|_| rng.random_range(0x80u8..=0xff))
            .collect(),
    };
    reject("invalid utf-8", bytes)
}

fn nul(rng: &mut SmallRng) -> Line {
    let good = message(&uuid(rng), "host-nul");
    let bytes = match rng.random_range(0..5) {
        0 => {
            let mut b = good;
            let at = b.len() - 4;
            b.insert(at, 0);
            b
        }
        1 => {
            let mut b = good;
            b.push(0);
            b
        }
        2 => {
            let mut b = vec![0];
            b.extend(good);
            b
        }
        3 => vec![0; rng.random_range(1..64)],
        _ => br#"{"message_id":"00000000-0000-4000-8000-000000000000\u0000","instance_name":"a"}"#
            .to_vec(),
    };
    reject("nul bytes", bytes)
}

/// Lines just over the limit, and one exactly at it, padded with blanks, which must be
/// accepted.
fn overlong(rng: &mut SmallRng) -> Line {
    let id = uuid(rng);
    match rng.random_range(0..3) {
        0 => {
            let name = "host-long";
            let m = message(&id, name);
            let mut bytes = vec![b' '; MAX_LINE - m.len()];
            bytes.extend(m);
            Line {
                kind: "overlong line",
                bytes,
                expect: Expect::Accept,
                id: Some(id),
                name: Some(name.to_string()),
            }
        }
        1 => reject(
            "overlong line",
            message(&id, &"a".repeat(MAX_LINE + rng.random_range(1..4096))),
        ),
        _ => reject(
            "overlong line",
            vec![b' '; MAX_LINE + rng.random_range(1..64)],
        ),
    }
}

/// The recording command: it appends its argument count and arguments, NUL-separated,
/// to `file` in one write, so that records of processes running at once do not mix.
fn recorder(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let file = dir.join(format!("argv-{tag}"));
    let script = dir.join(format!("record-{tag}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\0' \"$#\" \"$@\" >> '{}'\n",
            file.display()
        ),
    )
    .expect("write the recording script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("make the script runnable");
    (script, file)
}

/// Flags that restart every accepted host through the recording script.
fn action_flags(script: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "--action",
        "command",
        "--unleash",
        "--min-restart-interval",
        "0",
        "--io-delay",
        "0",
        "--failure-rate",
        "0",
        "--command",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(script.display().to_string());
    for a in ["{instance}", "{hostname}", "{message_id}"] {
        v.extend(["--command-arg".to_string(), a.to_string()]);
    }
    v
}

/// Names found where only accepted names may be: in an action's argv, in the store, in
/// a `Restarted` line. Each count is of occurrences that are not a name the generator
/// sent as valid, so a hostile name, or any corruption of a valid one, counts.
#[derive(Debug, Default, Serialize, Clone, Copy)]
struct Found {
    argv_records: usize,
    argv: usize,
    store_rows: usize,
    store: usize,
    restarted_lines: usize,
    restarted: usize,
    /// Log lines that do not start with a timestamp, or hold a character outside
    /// printable ASCII: lines a producer's input broke or bent.
    bent_log_lines: usize,
}

fn found(
    argv_file: &Path,
    db: &Path,
    log: &[String],
    names: &HashSet<String>,
    ids: &HashSet<String>,
) -> Found {
    let mut f = Found::default();
    let raw = std::fs::read(argv_file).unwrap_or_default();
    let mut fields = raw.split(|&b| b == 0);
    while let Some(count) = fields.next() {
        let Some(count) = std::str::from_utf8(count)
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
        else {
            continue;
        };
        f.argv_records += 1;
        let args: Vec<String> = fields
            .by_ref()
            .take(count)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ok = args.len() == 3
            && names.contains(&args[0])
            && args[1] == format!("{}{DOMAIN}", args[0])
            && ids.contains(&args[2]);
        if !ok {
            f.argv += 1;
        }
    }
    if let Ok(conn) = rusqlite::Connection::open(db) {
        let mut q = conn
            .prepare("SELECT instance_name FROM messages UNION ALL SELECT instance FROM attempts")
            .expect("query the store");
        let rows: Vec<String> = q
            .query_map([], |r| r.get(0))
            .expect("rows")
            .filter_map(Result::ok)
            .collect();
        f.store_rows = rows.len();
        f.store = rows.iter().filter(|n| !names.contains(*n)).count();
    }
    f.bent_log_lines = log
        .iter()
        .filter(|l| {
            !l.starts_with(|c: char| c.is_ascii_digit())
                || !l.chars().all(|c| c == ' ' || c.is_ascii_graphic())
        })
        .count();
    for l in log {
        if let Some(at) = l.find("Restarted ") {
            f.restarted_lines += 1;
            let host = l[at + "Restarted ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            let ok = host.strip_suffix(DOMAIN).is_some_and(|n| names.contains(n));
            if !ok {
                f.restarted += 1;
            }
        }
    }
    f
}

impl Found {
    fn total(&self) -> usize {
        self.argv + self.store + self.restarted + self.bent_log_lines
    }
}

/// Polls the child's peak RSS until it exits, up to `limit`, killing it past that.
fn wait_measuring(child: &mut Child, limit: Duration) -> (Option<i32>, bool, f64, bool) {
    let start = Instant::now();
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            use std::os::unix::process::ExitStatusExt;
            let crashed = status.signal().is_some();
            return (status.code(), crashed, peak_kb as f64 / 1024.0, false);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let status = child.wait().ok();
            return (
                status.and_then(|s| s.code()),
                false,
                peak_kb as f64 / 1024.0,
                true,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps a run's log beside torture.json, to read when a figure is off.
fn keep_log(o: &Options, tag: &str, log: &[String]) {
    let _ = std::fs::write(o.out.join(format!("hostile-{tag}.log")), log.join("\n"));
}

/// Reads the child's stderr to its end on a thread of its own.
fn collect_log(child: &mut Child) -> std::thread::JoinHandle<Vec<String>> {
    let err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut r = BufReader::new(err);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            out.push(String::from_utf8_lossy(&buf).trim_end().to_string());
            buf.clear();
        }
        out
    })
}

/// Per kind of line: how many were sent, and what they were expected to and did come to.
#[derive(Debug, Default, Serialize, Clone)]
struct Kind {
    sent: usize,
    expected_rejected: usize,
    rejected: usize,
    expected_accepted: usize,
    accepted: usize,
}

/// The stdin run.
#[derive(Debug, Serialize)]
struct StdinRun {
    seed: u64,
    lines: usize,
    huge_line_bytes: u64,
    huge_line_at: usize,
    exit: Option<i32>,
    crashed: bool,
    timed_out: bool,
    stopped_by: Option<String>,
    panics: u64,
    conserved: bool,
    expected_accepted: usize,
    accepted: u64,
    expected_rejected: usize,
    rejected: u64,
    acked: u64,
    /// Lines rejected that should not have been, and lines not rejected that should.
    wrongly_rejected: usize,
    wrongly_passed: usize,
    /// Whether the huge line's rejection gave its exact length.
    huge_line_measured: bool,
    distinct_ids: usize,
    stored_messages: i64,
    peak_rss_mb: f64,
    found: Found,
    kinds: BTreeMap<&'static str, Kind>,
    seconds: f64,
}

fn stdin_run(o: &Options, seed: u64, lines: &[Line], huge: u64) -> StdinRun {
    let started = Instant::now();
    let (script, argv_file) = recorder(&o.scratch, "stdin");
    let db = o.scratch.join("hostile-stdin.db");
    let huge_at = lines.len() * 3 / 5;
    let mut child = Command::new(binary())
        .args(["--source", "stdin", "--seed", &seed.to_string()])
        .args(action_flags(&script))
        .arg("--db")
        .arg(&db)
        .env("XDG_CONFIG_HOME", &o.scratch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mandrill");
    let log = collect_log(&mut child);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    // The lines are written by a thread of their own, the huge one in chunks, so that
    // neither side holds it whole; a write the service refuses ends the writing.
    let stdin = child.stdin.take().expect("piped stdin");
    let bodies: Vec<Vec<u8>> = lines.iter().map(|l| l.bytes.clone()).collect();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, stdin);
        for (i, b) in bodies.iter().enumerate() {
            if i == huge_at {
                let head =
                    br#"{"message_id":"00000000-0000-4000-8000-000000000000","instance_name":""#;
                w.write_all(head)?;
                let chunk = vec![b'a'; 1 << 20];
                let mut left = huge - head.len() as u64 - 2;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    w.write_all(&chunk[..n])?;
                    left -= n as u64;
                }
                w.write_all(b"\"}\n")?;
            }
            w.write_all(b)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    });
    let limit = Duration::from_secs(if o.quick { 60 } else { 200 });
    let (exit, crashed, peak_rss_mb, timed_out) = wait_measuring(&mut child, limit);
    let _ = writer.join();
    let log = log.join().unwrap_or_default();
    keep_log(o, "stdin", &log);
    let report = last_report(&reader.join().unwrap_or_default());

    // Line numbers as the service counts them: from 1, blanks included, the huge line
    // before the line at `huge_at`.
    let number = |i: usize| i + 1 + usize::from(i >= huge_at);
    let huge_number = huge_at + 1;
    let mut rejected_lines: HashMap<usize, String> = HashMap::new();
    for l in &log {
        if let Some(at) = l.find("line ") {
            let rest = &l[at + 5..];
            if let Some((n, reason)) = rest.split_once(": rejected: ") {
                if let Ok(n) = n.parse::<usize>() {
                    rejected_lines.insert(n, reason.to_string());
                }
            }
        }
    }
    let mut kinds: BTreeMap<&'static str, Kind> = BTreeMap::new();
    let (mut wrongly_rejected, mut wrongly_passed) = (0, 0);
    for (i, l) in lines.iter().enumerate() {
        let k = kinds.entry(l.kind).or_default();
        k.sent += 1;
        let was_rejected = rejected_lines.contains_key(&number(i));
        match l.expect {
            Expect::Reject => k.expected_rejected += 1,
            Expect::Accept => k.expected_accepted += 1,
            Expect::Skip => {}
        }
        if was_rejected {
            k.rejected += 1;
        } else if l.expect != Expect::Skip {
            k.accepted += 1;
        }
        match (l.expect, was_rejected) {
            (Expect::Reject, false) => wrongly_passed += 1,
            (Expect::Accept | Expect::Skip, true) => wrongly_rejected += 1,
            _ => {}
        }
    }
    let k = kinds.entry("huge line").or_default();
    k.sent += 1;
    k.expected_rejected += 1;
    let huge_reason = rejected_lines.get(&huge_number);
    if huge_reason.is_some() {
        k.rejected += 1;
    } else {
        k.accepted += 1;
        wrongly_passed += 1;
    }
    let huge_line_measured =
        huge_reason.is_some_and(|r| r.contains(&format!("line is {huge} bytes long")));

    let names: HashSet<String> = lines.iter().filter_map(|l| l.name.clone()).collect();
    let ids: HashSet<String> = lines.iter().filter_map(|l| l.id.clone()).collect();
    let found = found(&argv_file, &db, &log, &names, &ids);
    let stored_messages = rusqlite::Connection::open(&db)
        .and_then(|c| c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)))
        .unwrap_or(-1);
    let n = |f: &str| {
        report
            .as_ref()
            .and_then(|r| r[f].as_u64())
            .unwrap_or(u64::MAX)
    };
    StdinRun {
        seed,
        lines: lines.len() + 1,
        huge_line_bytes: huge,
        huge_line_at: huge_number,
        exit,
        crashed,
        timed_out,
        stopped_by: report
            .as_ref()
            .and_then(|r| r["stopped_by"].as_str().map(str::to_string)),
        panics: n("panics"),
        conserved: report.as_ref().is_some_and(conserved),
        expected_accepted: lines.iter().filter(|l| l.expect == Expect::Accept).count(),
        accepted: n("published"),
        expected_rejected: lines.iter().filter(|l| l.expect == Expect::Reject).count() + 1,
        rejected: n("rejected"),
        acked: n("acked"),
        wrongly_rejected,
        wrongly_passed,
        huge_line_measured,
        distinct_ids: ids.len(),
        stored_messages,
        peak_rss_mb,
        found,
        kinds,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// A broker run: the payloads published, what the service and the broker made of them.
#[derive(Debug, Default, Serialize)]
struct BrokerRun {
    broker: &'static str,
    ran: bool,
    /// Why it did not run, when it did not.
    skipped: Option<String>,
    /// Payloads the broker took, the service's own control message included.
    published: u64,
    expected_acked: u64,
    expected_dead_lettered: u64,
    /// The oversize payload, over the broker's own limit, and whether the broker refused
    /// it at publish.
    oversize_bytes: u64,
    oversize_refused: bool,
    /// The payload just under the broker's limit, far over the service's.
    under_limit_bytes: u64,
    exit: Option<i32>,
    crashed: bool,
    timed_out: bool,
    stopped_by: Option<String>,
    panics: u64,
    acked: u64,
    rejected: u64,
    dead_lettered: u64,
    redelivered: u64,
    /// By the broker's count after the run: still in the subscription, and in the dead
    /// letters.
    left: Option<u64>,
    /// Of those, what came back only once a lease ran out, after the run: deliveries the
    /// service never saw.
    left_after_lease: Option<u64>,
    dead_letters_held: Option<u64>,
    lost: i64,
    peak_rss_mb: f64,
    found: Found,
    seconds: f64,
}

impl BrokerRun {
    fn skipped(broker: &'static str, why: String) -> Self {
        BrokerRun {
            broker,
            skipped: Some(why),
            ..Default::default()
        }
    }

    /// Whether the run broke the promise or mishandled a payload.
    fn broken(&self) -> bool {
        self.ran
            && (self.crashed
                || self.timed_out
                || self.exit != Some(0)
                || self.panics != 0
                || self.acked != self.expected_acked
                || self.dead_lettered + self.left.unwrap_or(0) != self.expected_dead_lettered
                || self.rejected != self.dead_lettered
                || self.redelivered != 0
                || self.lost != 0
                || self.found.total() != 0
                || self.peak_rss_mb > RSS_LIMIT_MB)
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The payloads a broker run publishes: the first lines that are not blank (a broker
/// message has no line to be blank), each as its own message.
fn broker_payloads(lines: &[Line], n: usize) -> Vec<&Line> {
    lines
        .iter()
        .filter(|l| l.expect != Expect::Skip)
        .take(n)
        .collect()
}

/// What a run of the service against a broker left: its report and log, how it ended,
/// and where its actions' argv and its store are.
struct Served {
    report: Option<Value>,
    log: Vec<String>,
    exit: Option<i32>,
    crashed: bool,
    peak_rss_mb: f64,
    timed_out: bool,
    argv_file: PathBuf,
    db: PathBuf,
}

/// Runs the service against a broker until it has settled `settle` messages or has
/// pulled nothing for a while.
fn serve(o: &Options, tag: &str, source: &[String], env: &[(&str, &str)], settle: u64) -> Served {
    let (script, argv_file) = recorder(&o.scratch, tag);
    let db = o.scratch.join(format!("hostile-{tag}.db"));
    let mut child = Command::new(binary())
        .args(source)
        .args(action_flags(&script))
        .args(["--messages", &settle.to_string(), "--idle-exit", "5s"])
        .arg("--db")
        .arg(&db)
        .envs(env.iter().copied())
        .env("XDG_CONFIG_HOME", &o.scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mandrill");
    let log = collect_log(&mut child);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let limit = Duration::from_secs(if o.quick { 60 } else { 120 });
    let (exit, crashed, peak_rss_mb, timed_out) = wait_measuring(&mut child, limit);
    let log = log.join().unwrap_or_default();
    keep_log(o, tag, &log);
    Served {
        log,
        report: last_report(&reader.join().unwrap_or_default()),
        exit,
        crashed,
        peak_rss_mb,
        timed_out,
        argv_file,
        db,
    }
}

/// Fills in what the service's run came to.
fn settle_figures(
    r: &mut BrokerRun,
    served: Served,
    names: &HashSet<String>,
    ids: &HashSet<String>,
) {
    let report = &served.report;
    let n = |f: &str| report.as_ref().and_then(|r| r[f].as_u64()).unwrap_or(0);
    r.exit = served.exit;
    r.crashed = served.crashed;
    r.timed_out = served.timed_out;
    r.stopped_by = report
        .as_ref()
        .and_then(|v| v["stopped_by"].as_str().map(str::to_string));
    r.panics = n("panics");
    r.acked = n("acked");
    r.rejected = n("rejected");
    r.dead_lettered = n("dead_lettered");
    r.redelivered = n("redelivered");
    r.peak_rss_mb = served.peak_rss_mb;
    r.found = found(&served.argv_file, &served.db, &served.log, names, ids);
}

fn expected(payloads: &[&Line]) -> (HashSet<String>, HashSet<String>, u64, u64) {
    let names = payloads.iter().filter_map(|l| l.name.clone()).collect();
    let ids = payloads.iter().filter_map(|l| l.id.clone()).collect();
    let acked = payloads
        .iter()
        .filter(|l| l.expect == Expect::Accept)
        .count() as u64;
    (names, ids, acked, payloads.len() as u64 - acked)
}

/// Publishes one simulated message with the service's own publisher, which creates what
/// the run needs as the service would; its name and id are read back from the store
/// after the run, so the control message is checked like the rest.
fn publish_control(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let out = Command::new(binary())
        .arg("publish")
        .args(args)
        .args(["--messages", "1"])
        .envs(env.iter().copied())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn jetstream_run(o: &Options, payloads: &[&Line]) -> BrokerRun {
    let started = Instant::now();
    let url = std::env::var("MANDRILL_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string());
    let stream = format!("HOSTILE_{}", uuid::Uuid::new_v4().simple());
    let mut r = BrokerRun {
        broker: "JetStream",
        ..Default::default()
    };
    if let Err(e) = publish_control(
        &[
            "--to",
            "jetstream",
            "--create",
            "--nats-url",
            &url,
            "--stream",
            &stream,
        ],
        &[],
    ) {
        return BrokerRun::skipped("JetStream", format!("no server at {url}: {e}"));
    }
    let (mut names, mut ids, acked, rejected) = expected(payloads);
    r.expected_acked = acked + 1;
    r.expected_dead_lettered = rejected + 1;
    let bodies: Vec<Vec<u8>> = payloads.iter().map(|l| l.bytes.clone()).collect();
    let runtime = rt();
    let published = runtime.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect to nats");
        let max = client.server_info().max_payload as u64;
        let js = async_nats::jetstream::new(client);
        let mut acks = Vec::with_capacity(bodies.len());
        for b in bodies {
            acks.push(js.publish(stream.clone(), b.into()).await.expect("publish"));
        }
        let mut stored = 0u64;
        for a in acks {
            if a.await.is_ok() {
                stored += 1;
            }
        }
        // One byte over the server's max_payload: the client or the server refuses it.
        let over = vec![b'o'; max as usize + 1];
        let refused = match js.publish(stream.clone(), over.into()).await {
            Err(_) => true,
            Ok(ack) => ack.await.is_err(),
        };
        // Just under it, with room for the dead-letter copy's headers.
        let under = max - 4096;
        let mut body = message(&uuid::Uuid::new_v4().to_string(), "host-under");
        body.resize(under as usize, b' ');
        let under_stored = js
            .publish(stream.clone(), body.into())
            .await
            .expect("publish")
            .await
            .is_ok();
        (stored, max + 1, refused, under, under_stored)
    });
    let (stored, over, refused, under, under_stored) = published;
    r.published = stored + 1 + u64::from(under_stored) + u64::from(!refused);
    r.expected_dead_lettered += u64::from(!refused);
    r.oversize_bytes = over;
    r.oversize_refused = refused;
    r.under_limit_bytes = under;
    r.ran = true;
    let source: Vec<String> = [
        "--source",
        "jetstream",
        "--nats-url",
        &url,
        "--stream",
        &stream,
        "--create",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let served = serve(o, "jetstream", &source, &[], r.published);
    control_name(&served.db, &mut names, &mut ids);
    settle_figures(&mut r, served, &names, &ids);
    let dlq = format!("{stream}_DLQ");
    let counts = runtime.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let mut out = Vec::new();
        for name in [&stream, &dlq] {
            let n = match js.get_stream(name).await {
                Ok(mut s) => s.info().await.ok().map(|i| i.state.messages),
                Err(_) => None,
            };
            out.push(n);
            let _ = js.delete_stream(name).await;
        }
        out
    });
    r.left = counts[0];
    r.dead_letters_held = counts[1];
    r.lost = r.published as i64
        - r.acked as i64
        - r.dead_letters_held.unwrap_or(0) as i64
        - r.left.unwrap_or(0) as i64;
    r.seconds = started.elapsed().as_secs_f64();
    r
}

/// Adds the control message's name and id, which the publisher drew, to the valid ones:
/// the first row of the store that is not a generated id.
fn control_name(db: &Path, names: &mut HashSet<String>, ids: &mut HashSet<String>) {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return;
    };
    let Ok(mut q) = conn.prepare("SELECT message_id, instance FROM attempts") else {
        return;
    };
    let rows: Vec<(String, String)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default();
    for (id, name) in rows {
        if name.starts_with("cattle-") && name.len() == 11 && valid_name(&name) {
            ids.insert(id);
            names.insert(name);
        }
    }
}

/// How many messages a drain read, or `None` when it could not read them all.
fn count(d: Drained) -> Option<u64> {
    (!d.failed).then_some(d.payloads.len() as u64)
}

fn pubsub_run(o: &Options, payloads: &[&Line], emulator: Result<Emulator, String>) -> BrokerRun {
    use gcloud_googleapis::pubsub::v1::PubsubMessage;
    let started = Instant::now();
    let emulator = match emulator {
        Ok(e) => e,
        Err(e) => return BrokerRun::skipped("Pub/Sub", e),
    };
    let id = format!("hostile-{}", uuid::Uuid::new_v4().simple());
    let topic = format!("projects/{PROJECT}/topics/{id}");
    let subscription = format!("projects/{PROJECT}/subscriptions/{id}");
    let env = [("PUBSUB_EMULATOR_HOST", emulator.host.as_str())];
    let mut r = BrokerRun {
        broker: "Pub/Sub",
        ..Default::default()
    };
    if let Err(e) = publish_control(
        &[
            "--to",
            "pubsub",
            "--create",
            "--topic",
            &topic,
            "--subscription",
            &subscription,
        ],
        &env,
    ) {
        return BrokerRun::skipped("Pub/Sub", format!("the emulator refused: {e}"));
    }
    let (mut names, mut ids, acked, rejected) = expected(payloads);
    r.expected_acked = acked + 1;
    r.expected_dead_lettered = rejected + 1;
    let runtime = rt();
    // Pub/Sub's documented limit on a message is 10 MB.
    let limit: u64 = 10_000_000;
    let (stored, refused, under, under_stored) = runtime.block_on(async {
        let client = emulator.client().await;
        let publisher = client.topic(&topic).new_publisher(None);
        let mut stored = 0u64;
        for chunk in payloads.chunks(100) {
            let messages: Vec<PubsubMessage> = chunk
                .iter()
                .map(|l| PubsubMessage {
                    data: l.bytes.clone(),
                    ..Default::default()
                })
                .collect();
            let n = messages.len() as u64;
            if publisher.publish_immediately(messages, None).await.is_ok() {
                stored += n;
            }
        }
        let over = PubsubMessage {
            data: vec![b'o'; limit as usize + 1],
            ..Default::default()
        };
        let refused = publisher
            .publish_immediately(vec![over], None)
            .await
            .is_err();
        let under = limit - 1_000_000;
        let mut body = message(&uuid::Uuid::new_v4().to_string(), "host-under");
        body.resize(under as usize, b' ');
        let under_stored = publisher
            .publish_immediately(
                vec![PubsubMessage {
                    data: body,
                    ..Default::default()
                }],
                None,
            )
            .await
            .is_ok();
        (stored, refused, under, under_stored)
    });
    r.published = stored + 1 + u64::from(under_stored) + u64::from(!refused);
    r.expected_dead_lettered += u64::from(!refused);
    r.oversize_bytes = limit + 1;
    r.oversize_refused = refused;
    r.under_limit_bytes = under;
    r.ran = true;
    let source: Vec<String> = ["--source", "pubsub", "--subscription", &subscription]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let served = serve(o, "pubsub", &source, &env, r.published);
    control_name(&served.db, &mut names, &mut ids);
    settle_figures(&mut r, served, &names, &ids);
    let (left, letters) = runtime.block_on(async {
        let left = emulator.drain(&subscription, 1).await;
        let letters = emulator
            .drain(&format!("{subscription}-dead-letters"), 1)
            .await;
        (count(left), count(letters))
    });
    r.left = left;
    r.dead_letters_held = letters;
    // A delivery the service's client could not take (a streaming answer over the 10 MiB
    // it decodes) stays leased out of sight until its 10 s ack deadline ends: once
    // the counts do not balance, the subscription is read again after that.
    let unseen = r.published as i64
        - r.acked as i64
        - r.dead_letters_held.unwrap_or(0) as i64
        - r.left.unwrap_or(0) as i64;
    if unseen > 0 {
        std::thread::sleep(Duration::from_secs(12));
        let later = count(runtime.block_on(emulator.drain(&subscription, 1)));
        r.left_after_lease = later;
        r.left = r.left.zip(later).map(|(a, b)| a + b);
    }
    runtime.block_on(emulator.delete(&topic, &subscription));
    r.lost = r.published as i64
        - r.acked as i64
        - r.dead_letters_held.unwrap_or(0) as i64
        - r.left.unwrap_or(0) as i64;
    r.seconds = started.elapsed().as_secs_f64();
    r
}

/// Runs the scenario: 10,000 lines on stdin with a 2 GiB line among them, then 2,000 of
/// the payloads on each broker; 1,500 lines with an 8 MiB line, and 300 payloads, in the
/// slice.
pub fn run(o: &Options) -> Section {
    let seed = o.seed + 30_000;
    let (n, huge, per_broker) = if o.quick {
        (1_500, 8u64 << 20, 300)
    } else {
        (10_000, 2u64 << 30, 2_000)
    };
    eprintln!(
        "3. hostile input: {n} lines and a {} MiB line on stdin, {per_broker} payloads on each broker",
        huge >> 20
    );
    // The emulator is a JVM that takes seconds to start: it starts while stdin runs.
    let emulator = std::thread::spawn(Emulator::get);
    let mut rng = SmallRng::seed_from_u64(seed);
    let lines = generate(&mut rng, n);
    let s = stdin_run(o, seed, &lines, huge);
    let payloads = broker_payloads(&lines, per_broker);
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let js = jetstream_run(o, &payloads);
    let emulator = emulator
        .join()
        .unwrap_or_else(|_| Err("starting the emulator panicked".into()));
    let ps = pubsub_run(o, &payloads, emulator);

    let mut out = Section::default();
    let stdin_broken = s.crashed
        || s.timed_out
        || s.exit != Some(0)
        || s.panics != 0
        || !s.conserved
        || s.wrongly_rejected != 0
        || s.wrongly_passed != 0
        || s.accepted != s.expected_accepted as u64
        || s.rejected != s.expected_rejected as u64
        || s.acked != s.accepted
        || !s.huge_line_measured
        || s.stored_messages != s.distinct_ids as i64
        || s.found.total() != 0
        || s.peak_rss_mb > RSS_LIMIT_MB;
    if stdin_broken {
        let mut brief = format!("{s:?}");
        brief.truncate(2000);
        out.failures
            .push(format!("hostile stdin, seed {seed}: {brief}"));
    }
    for b in [&js, &ps] {
        if b.broken() {
            out.failures
                .push(format!("hostile {}, seed {seed}: {b:?}", b.broker));
        }
        if !b.ran && ci {
            out.failures.push(format!(
                "hostile {}: did not run under CI=true: {}",
                b.broker,
                b.skipped.as_deref().unwrap_or("")
            ));
        }
    }

    let name = "3. hostile input, stdin";
    out.row(
        name,
        "lines sent by kind",
        s.kinds
            .iter()
            .map(|(k, v)| format!("{k} {}", v.sent))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.row(
        name,
        "crashes (signal, timeout, non-zero exit or panic)",
        usize::from(s.crashed || s.timed_out || s.exit != Some(0) || s.panics != 0),
    );
    out.row(
        name,
        "rejected vs expected; lines wrongly rejected; wrongly passed",
        format!(
            "{} / {}; {}; {}",
            s.rejected, s.expected_rejected, s.wrongly_rejected, s.wrongly_passed
        ),
    );
    out.row(
        name,
        "rejected vs expected, by kind",
        s.kinds
            .iter()
            .filter(|(_, v)| v.expected_rejected > 0 || v.rejected > 0)
            .map(|(k, v)| format!("{k} {}/{}", v.rejected, v.expected_rejected))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.row(
        name,
        "accepted vs expected; acked; distinct ids vs rows stored",
        format!(
            "{} / {}; {}; {} / {}",
            s.accepted, s.expected_accepted, s.acked, s.distinct_ids, s.stored_messages
        ),
    );
    out.row(
        name,
        &format!(
            "huge line of {} MiB at line {}: rejected with its length; peak RSS, MB",
            s.huge_line_bytes >> 20,
            s.huge_line_at
        ),
        format!(
            "{}; {:.1}",
            if s.huge_line_measured { "yes" } else { "no" },
            s.peak_rss_mb
        ),
    );
    out.row(
        name,
        "names not sent as valid in argv / store / `Restarted` lines (of records, rows, lines); log lines broken or bent by input",
        format!(
            "{} / {} / {} (of {}, {}, {}); {}",
            s.found.argv,
            s.found.store,
            s.found.restarted,
            s.found.argv_records,
            s.found.store_rows,
            s.found.restarted_lines,
            s.found.bent_log_lines
        ),
    );
    for b in [&js, &ps] {
        let name = format!("3. hostile input, {}", b.broker);
        if !b.ran {
            out.row(&name, "not run", b.skipped.as_deref().unwrap_or(""));
            continue;
        }
        out.row(
            &name,
            "published; acked / expected; dead-lettered / expected; left at the broker (of them, back only after a lease ran out); lost",
            format!(
                "{}; {} / {}; {} / {}; {} ({}); {}",
                b.published,
                b.acked,
                b.expected_acked,
                b.dead_lettered,
                b.expected_dead_lettered,
                b.left.map_or("?".into(), |n| n.to_string()),
                b.left_after_lease.unwrap_or(0),
                b.lost
            ),
        );
        out.row(
            &name,
            &format!(
                "crashes; oversize {} B refused at publish (if not, dead-lettered with the rest); {} B under the limit dead-lettered; peak RSS, MB",
                b.oversize_bytes, b.under_limit_bytes
            ),
            format!(
                "{}; {}; {}; {:.1}",
                usize::from(b.crashed || b.timed_out || b.exit != Some(0) || b.panics != 0),
                if b.oversize_refused { "yes" } else { "no" },
                if b.dead_lettered == b.expected_dead_lettered {
                    "yes"
                } else {
                    "no"
                },
                b.peak_rss_mb
            ),
        );
        out.row(
            &name,
            "names not sent as valid in argv / store / `Restarted` lines; log lines broken or bent by input",
            format!(
                "{} / {} / {}; {}",
                b.found.argv, b.found.store, b.found.restarted, b.found.bent_log_lines
            ),
        );
    }
    out.runs("hostile_stdin", &[&s]);
    out.runs("hostile_brokers", &[&js, &ps]);
    out
}
