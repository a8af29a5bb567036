//! Under systemd's `Type=notify`, the service says `READY=1` once the broker and store
//! are connected, `RELOADING=1` then `READY=1` around a SIGHUP reload, and `STOPPING=1`
//! when the shutdown begins. The test listens on the socket `NOTIFY_SOCKET` names, as
//! systemd does.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::Mandrill;
use nix::sys::signal::Signal;

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

#[test]
fn the_service_manager_hears_each_change_of_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = dir.path().join("mandrill.toml");
    std::fs::write(&config, "failure-rate = 0.1\n").unwrap();
    let mut m = Mandrill::spawn_env(
        &[
            "--config",
            config.to_str().unwrap(),
            "--on-sighup",
            "reload",
            "--publish-delay",
            "0.01",
            "--io-delay",
            "0.01",
        ],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    assert_eq!(next(&socket), "READY=1");

    m.signal(Signal::SIGHUP);
    let reloading = next(&socket);
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    assert_eq!(next(&socket), "READY=1");
    m.wait_for("Reloaded the configuration", Duration::from_secs(10));

    m.signal(Signal::SIGTERM);
    assert_eq!(next(&socket), "STOPPING=1");
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "exit {:?}", f.status);
    f.assert_conserved();
}
