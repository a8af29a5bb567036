//! `--action webhook` against a real local HTTP server: 2xx is a restart, 4xx is
//! dead-lettered at once, 5xx and a timeout are retried and then acked when the server
//! recovers; the body is the documented JSON and the headers are sent.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Mandrill;
use serde_json::Value;

/// A server that answers by instance name, records every request, and answers
/// `cattle-flaky` with 503 and `cattle-slow` slowly on their first request only.
/// Each request's body and Authorization header, in order.
type Seen = Arc<Mutex<Vec<(Value, Option<String>)>>>;

fn serve() -> (String, Seen) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("a local HTTP server");
    let url = format!("http://{}/restart", server.server_addr());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let asked: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        for mut request in server.incoming_requests() {
            let (record, asked) = (record.clone(), asked.clone());
            // One thread a request, so that a slow answer holds up no other.
            std::thread::spawn(move || {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let auth = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string());
                record.lock().unwrap().push((json.clone(), auth));
                let host = json["instance_name"].as_str().unwrap_or("").to_string();
                let n = {
                    let mut asked = asked.lock().unwrap();
                    let n = asked.entry(host.clone()).or_default();
                    *n += 1;
                    *n
                };
                let status = match (host.as_str(), n) {
                    ("cattle-bad", _) => 404,
                    ("cattle-flaky", 1) => 503,
                    ("cattle-slow", 1) => {
                        std::thread::sleep(Duration::from_millis(1500));
                        200
                    }
                    _ => 200,
                };
                let response =
                    tiny_http::Response::from_string("no such host").with_status_code(status);
                let _ = request.respond(response);
            });
        }
    });
    (url, seen)
}

#[test]
fn statuses_decide_restarts_retries_and_dead_letters() {
    let (url, seen) = serve();
    let mut m = Mandrill::spawn_env(
        &[
            "--source",
            "stdin",
            "--store",
            "memory",
            "--action",
            "webhook",
            "--unleash",
            "--webhook-url",
            &url,
            "--webhook-header",
            "Authorization=Bearer ${MANDRILL_TEST_TOKEN}",
            "--action-timeout",
            "0.5",
            "--max-deliveries",
            "3",
            "--min-restart-interval",
            "0",
        ],
        &[("MANDRILL_TEST_TOKEN", "s3cret")],
    );
    let lines: String = ["cattle-ok", "cattle-bad", "cattle-flaky", "cattle-slow"]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!("{{\"message_id\":\"00000000-0000-4000-8000-{i:012}\",\"instance_name\":\"{h}\"}}\n")
        })
        .collect();
    m.write_stdin(lines.as_bytes());
    m.close_stdin();
    let f = m.finish(Duration::from_secs(60));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    f.assert_conserved();
    assert_eq!(
        (f.n("acked"), f.n("dead_lettered"), f.n("restarted")),
        (3, 1, 3),
        "{}",
        f.report
    );
    let seen = seen.lock().unwrap();
    let count = |h: &str| seen.iter().filter(|(b, _)| b["instance_name"] == h).count();
    assert_eq!(count("cattle-bad"), 1, "a 4xx was retried");
    assert_eq!(count("cattle-flaky"), 2);
    assert!(count("cattle-slow") >= 2);
    let (ok, auth) = seen
        .iter()
        .find(|(b, _)| b["instance_name"] == "cattle-ok")
        .unwrap();
    assert_eq!(ok["hostname"], "cattle-ok.example.net");
    assert_eq!(ok["message_id"], "00000000-0000-4000-8000-000000000000");
    assert_eq!(ok["attempt"], 1);
    assert_eq!(ok["dry_run"], false);
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    assert!(
        f.log.iter().all(|l| !l.contains("s3cret")),
        "the token was logged"
    );
    assert!(
        f.log
            .iter()
            .any(|l| l.contains("HTTP 404 Not Found: no such host")),
        "{}",
        f.log.join("\n")
    );
}

#[test]
fn a_bad_url_is_a_start_up_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args([
            "--action",
            "webhook",
            "--webhook-url",
            "ftp://example.net/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not an http or https URL"), "{err}");
}

#[test]
fn a_leashed_webhook_sends_no_request() {
    let (url, seen) = serve();
    let mut m = Mandrill::spawn_with_stdin(
        &[
            "--source",
            "stdin",
            "--store",
            "memory",
            "--action",
            "webhook",
            "--webhook-url",
            &url,
        ],
        true,
    );
    m.write_stdin(
        b"{\"message_id\":\"00000000-0000-4000-8000-000000000001\",\"instance_name\":\"cattle-a\"}\n",
    );
    m.close_stdin();
    let f = m.finish(Duration::from_secs(30));
    assert!(f.status.success(), "{:?}\n{}", f.status, f.log.join("\n"));
    assert_eq!((f.n("leashed"), f.n("acked")), (1, 1), "{}", f.report);
    assert!(
        seen.lock().unwrap().is_empty(),
        "a leashed webhook sent a request"
    );
}
