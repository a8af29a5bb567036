//! Google's Pub/Sub emulator for tests: the one `PUBSUB_EMULATOR_HOST` names, or one of
//! the test's own on a free port, stopped with its whole process group when dropped.
//!
//! The emulator never drops a cancelled streaming pull, and deleting a subscription does
//! not clear that, so every test uses topic and subscription names of its own.
//!
//! Without `gcloud` the test skips with a loud message, except under `CI=true`, where a
//! skip would hide a broker test that never ran, so it fails.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gcloud_gax::conn::Environment;
use gcloud_googleapis::pubsub::v1::{AcknowledgeRequest, PubsubMessage, PullRequest};
use gcloud_pubsub::client::{Client, ClientConfig};

/// The project every test's names live in; the emulator takes any.
pub const PROJECT: &str = "mandrill-test";

/// An emulator to test against; an own one is killed when this is dropped.
pub struct Emulator {
    /// `host:port`, as `PUBSUB_EMULATOR_HOST` takes it.
    pub host: String,
    child: Option<Child>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

impl Emulator {
    /// The emulator for this test, or `None` when the test should skip.
    pub fn get() -> Option<Self> {
        if let Ok(host) = std::env::var("PUBSUB_EMULATOR_HOST") {
            return Some(Self { host, child: None });
        }
        Self::own()
    }

    /// Stops the test's own emulator, as a crash would.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("an emulator of the test's own");
        // gcloud starts the emulator's JVM as a child of its own: stop the group.
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }

    /// An emulator of the test's own, which it may stop, or `None` when the test should
    /// skip.
    pub fn own() -> Option<Self> {
        let Ok(gcloud) = which::which("gcloud") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "gcloud is not installed and PUBSUB_EMULATOR_HOST is not set; under \
                 CI=true a broker test must run, not skip"
            );
            eprintln!(
                "\n*** SKIPPED: gcloud is not installed and PUBSUB_EMULATOR_HOST is not \
                 set; this Pub/Sub test did not run ***\n"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(gcloud)
            .args(["beta", "emulators", "pubsub", "start"])
            .arg(format!("--host-port=127.0.0.1:{port}"))
            .arg(format!("--project={PROJECT}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the pub/sub emulator");
        let emulator = Self {
            host: format!("127.0.0.1:{port}"),
            child: Some(child),
        };
        // It is a JVM: allow it a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the pub/sub emulator did not listen within 60s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(emulator)
    }

    /// The variable the service reads to find this emulator.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("PUBSUB_EMULATOR_HOST", self.host.as_str())]
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    async fn client(&self) -> Client {
        Client::new(ClientConfig {
            project_id: Some(PROJECT.into()),
            environment: Environment::Emulator(self.host.clone()),
            ..ClientConfig::default()
        })
        .await
        .expect("connect to the emulator")
    }

    /// Publishes payloads as they are, bad ones included, to `topic`.
    pub fn publish_raw(&self, topic: &str, payloads: Vec<Vec<u8>>) {
        Self::runtime().block_on(async {
            let client = self.client().await;
            let messages = payloads
                .into_iter()
                .map(|data| PubsubMessage {
                    data,
                    ..Default::default()
                })
                .collect();
            client
                .topic(topic)
                .new_publisher(None)
                .publish_immediately(messages, None)
                .await
                .expect("publish");
        })
    }

    /// Pulls and acks everything `subscription` still holds, and returns the payloads.
    pub fn drain(&self, subscription: &str) -> Vec<Vec<u8>> {
        Self::runtime().block_on(async {
            let client = self.client().await;
            let sub = client.subscription(subscription).get_client();
            let mut out = Vec::new();
            loop {
                #[allow(deprecated)]
                let request = PullRequest {
                    subscription: subscription.to_string(),
                    return_immediately: true,
                    max_messages: 1000,
                };
                let got = sub
                    .pull(request, None)
                    .await
                    .expect("pull")
                    .into_inner()
                    .received_messages;
                if got.is_empty() {
                    return out;
                }
                let ack_ids = got.iter().map(|r| r.ack_id.clone()).collect();
                let ack = AcknowledgeRequest {
                    subscription: subscription.to_string(),
                    ack_ids,
                };
                sub.acknowledge(ack, None).await.expect("ack");
                out.extend(got.into_iter().filter_map(|r| r.message.map(|m| m.data)));
            }
        })
    }

    /// Deletes the test's subscriptions and topics.
    pub fn delete(&self, names: &Names) {
        Self::runtime().block_on(async {
            let client = self.client().await;
            for s in [&names.subscription, &names.dead_letter_subscription] {
                let _ = client.subscription(s).delete(None).await;
            }
            for t in [&names.topic, &names.dead_letter_topic] {
                let _ = client.topic(t).delete(None).await;
            }
        })
    }
}

/// A test's own topic and subscription, and the dead-letter pair `--create` makes.
pub struct Names {
    pub topic: String,
    pub subscription: String,
    pub dead_letter_topic: String,
    pub dead_letter_subscription: String,
}

/// Names no other test run uses.
pub fn names(prefix: &str) -> Names {
    let id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    Names {
        topic: format!("projects/{PROJECT}/topics/{id}"),
        subscription: format!("projects/{PROJECT}/subscriptions/{id}"),
        dead_letter_topic: format!("projects/{PROJECT}/topics/{id}-dead-letters"),
        dead_letter_subscription: format!("projects/{PROJECT}/subscriptions/{id}-dead-letters"),
    }
}

/// Creates the topic, the subscription and its dead letters, then publishes `n`
/// simulated messages with `mandrill publish`; `extra` sets the subscription.
pub fn publish(emulator: &Emulator, names: &Names, n: usize, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_mandrill"))
        .args(["publish", "--to", "pubsub", "--create", "--topic"])
        .args([&names.topic, "--subscription", &names.subscription])
        .args(["--messages", &n.to_string()])
        .args(extra)
        .envs(emulator.env())
        .output()
        .expect("run mandrill publish");
    assert!(out.status.success(), "{out:?}");
}

/// Flags for the service consuming the test's subscription, then `extra`.
pub fn source<'a>(names: &'a Names, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec!["--source", "pubsub", "--subscription", &names.subscription];
    flags.extend_from_slice(extra);
    flags
}
