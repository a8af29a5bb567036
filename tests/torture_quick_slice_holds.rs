//! CI's slice of the torture suite: a few runs of each scenario of `examples/torture/`
//! on the debug binary. The runner exits 1, naming the run, when any run broke the
//! promise: a hang, a broken invariant, a failed integrity check, saved rows that do not
//! match the report, or a lost message.

use std::path::Path;
use std::process::Command;

#[test]
fn every_quick_torture_run_keeps_every_message() {
    let bin = Path::new(env!("CARGO_BIN_EXE_mandrill"));
    let runner = bin
        .parent()
        .expect("the target directory")
        .join("examples")
        .join("torture");
    assert!(
        runner.exists(),
        "{} is missing: cargo test builds the examples",
        runner.display()
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&runner)
        .arg("--quick")
        .arg(out.path())
        .output()
        .expect("run the torture runner");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(table.contains("| 1. signals |"), "{table}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("torture.json")).unwrap())
            .expect("torture.json");
    assert_eq!(json["signals"].as_array().unwrap().len(), 8);
    assert_eq!(json["panics"].as_array().unwrap().len(), 2);
    assert_eq!(json["kills"].as_array().unwrap().len(), 2);
}
