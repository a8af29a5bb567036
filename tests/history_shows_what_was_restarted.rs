//! `mandrill history` shows every restart attempt the service recorded, with filters and
//! three formats; it reads a database the service is writing, and a file from before the
//! history kept every attempt is migrated in place.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{stdin_lines as lines, Mandrill};
use serde_json::Value;

fn history(db: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .arg("history")
        .arg("--db")
        .arg(db)
        .args(args)
        .env("COLUMNS", "100")
        .output()
        .expect("run mandrill history");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_attempt_is_recorded_and_can_be_filtered_and_formatted() {
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--io-delay",
            "0",
            "--failure-rate",
            "0",
            "--deny",
            "pet-*",
            "--instance-id",
            "test-instance",
        ],
        true,
    );
    m.write_stdin(lines(&["cattle-a", "cattle-b", "pet-fluffy"]).as_bytes());
    m.close_stdin();
    let db = m.db_path();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));

    let (code, json, err) = history(&db, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 3, "{json}");
    let outcome = |host: &str| {
        rows.iter()
            .find(|r| r["instance"] == host)
            .map(|r| r["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(outcome("cattle-a").as_deref(), Some("restarted"));
    assert_eq!(outcome("pet-fluffy").as_deref(), Some("refused:deny"));
    assert!(
        rows.iter().all(|r| r["service"] == "test-instance"),
        "{json}"
    );
    assert!(rows.iter().all(|r| r["action"] == "sim"), "{json}");

    let (_, refused, _) = history(&db, &["--format", "json", "--outcome", "refused"]);
    let refused: Vec<Value> = serde_json::from_str(&refused).unwrap();
    assert_eq!(refused.len(), 1);
    let (_, one, _) = history(&db, &["--format", "json", "--host", "cattle-b"]);
    let one: Vec<Value> = serde_json::from_str(&one).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["hostname"], "cattle-b.example.net");
    let (_, none, _) = history(&db, &["--format", "json", "--since", "2999-01-01"]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&none).unwrap().len(), 0);

    let (_, csv, _) = history(&db, &["--format", "csv", "--limit", "2"]);
    let csv: Vec<&str> = csv.lines().collect();
    assert_eq!(csv.len(), 3, "{csv:?}");
    assert!(
        csv[0].starts_with("started_ms,finished_ms,instance,hostname"),
        "{csv:?}"
    );

    let (_, table, _) = history(&db, &[]);
    let table: Vec<&str> = table.lines().collect();
    assert!(table[0].starts_with("STARTED (UTC)"), "{table:?}");
    assert_eq!(table.len(), 4, "{table:?}");
    assert!(table.iter().all(|l| l.chars().count() <= 100), "{table:?}");
}

#[test]
fn it_reads_a_database_the_service_is_writing() {
    let mut m = Mandrill::spawn(&[
        "--publish-delay",
        "0.001",
        "--io-delay",
        "0",
        "--log",
        "none",
    ]);
    m.wait_for("Loaded", Duration::from_secs(20));
    let db = m.db_path();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, json, err) = history(&db, &["--format", "json", "--limit", "5"]);
        assert_eq!(code, 0, "{err}");
        if serde_json::from_str::<Vec<Value>>(&json).unwrap().len() == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no history appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        m.running(),
        "the service stopped while its history was read"
    );
    m.signal(nix::sys::signal::Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}", f.status);
}

#[test]
fn an_old_database_is_migrated_and_its_restarts_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mandrill.db");
    {
        let old = rusqlite::Connection::open(&db).unwrap();
        old.execute_batch(
            "CREATE TABLE messages (message_id BLOB PRIMARY KEY, instance_name TEXT NOT NULL,
                                    deliveries INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE restarts (id INTEGER PRIMARY KEY, host TEXT NOT NULL,
                                    restarted_at INTEGER NOT NULL, message_id BLOB NOT NULL);
             INSERT INTO restarts (host, restarted_at, message_id)
                 VALUES ('cattle-old', 1700000000000, x'6f1c2a9e5b7d4c1e9a3f2d8e4b6c0a17');",
        )
        .unwrap();
    }
    // Before the service has migrated it, the history says what to do.
    let (code, _, err) = history(&db, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("run the service on it once"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["--source", "stdin", "--db"])
        .arg(&db)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, json, err) = history(&db, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["instance"], "cattle-old");
    assert_eq!(rows[0]["outcome"], "restarted");
    assert_eq!(
        rows[0]["message_id"],
        "6f1c2a9e-5b7d-4c1e-9a3f-2d8e4b6c0a17"
    );
}
