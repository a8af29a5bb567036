//! With an unpaced publisher, the in-memory broker holds at most `--max-backlog` messages
//! not yet acked or dead-lettered: the publisher waits for room, and the process's memory
//! stays flat.

mod common;

use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

/// The resident set of a process, in kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

#[test]
fn an_unpaced_publisher_waits_for_room_and_memory_stays_flat() {
    let mut m = Mandrill::spawn(&["--publish-delay", "0", "--max-backlog", "20000"]);
    m.wait_for("Published ", Duration::from_secs(10));
    let pid = m.pid().as_raw();
    // Two seconds fill the backlog; eight more must not add to the memory. Unbounded,
    // the publisher added about 150 MB a second.
    std::thread::sleep(Duration::from_secs(2));
    let filled = rss_kb(pid);
    std::thread::sleep(Duration::from_secs(8));
    let later = rss_kb(pid);
    m.signal(Signal::SIGTERM);
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "exit {:?}", f.status);
    f.assert_conserved();
    let pending = f.n("pending_at_exit");
    assert!(pending <= 20_000, "{pending} pending");
    assert!(f.n("published") >= 20_000, "the backlog never filled");
    assert!(
        later < filled + 30_000,
        "memory grew from {filled} kB to {later} kB"
    );
}
