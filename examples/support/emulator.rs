//! Google's Pub/Sub emulator, for the harnesses that publish onto Pub/Sub: one of the
//! run's own, or the one `PUBSUB_EMULATOR_HOST` names; a client on it; reading back what
//! a subscription still holds; and removing a run's topic and subscription.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The project every harness's topics and subscriptions live in.
pub const PROJECT: &str = "mandrill-examples";

/// An emulator, stopped with its process group when dropped if the run started it.
pub struct Emulator {
    /// Its address, for `PUBSUB_EMULATOR_HOST`.
    pub host: String,
    child: Option<Child>,
}

/// What a drain read before it ended.
pub struct Drained {
    pub payloads: Vec<Vec<u8>>,
    /// A pull or an ack failed, so the subscription may hold more.
    pub failed: bool,
}

impl Emulator {
    /// The emulator `PUBSUB_EMULATOR_HOST` names, or else one of the run's own.
    pub fn get() -> Result<Self, String> {
        match std::env::var("PUBSUB_EMULATOR_HOST") {
            Ok(host) => Ok(Self { host, child: None }),
            Err(_) => Self::start(),
        }
    }

    /// One of the run's own, on a free port: a harness that cuts the connections to it
    /// must not cut another's.
    pub fn start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new("gcloud")
            .args(["beta", "emulators", "pubsub", "start"])
            .arg(format!("--host-port=127.0.0.1:{port}"))
            .arg(format!("--project={PROJECT}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the pub/sub emulator with gcloud: {e}"))?;
        let emulator = Self {
            host: format!("127.0.0.1:{port}"),
            child: Some(child),
        };
        // It is a JVM: allow it a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("the pub/sub emulator did not listen within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(emulator)
    }

    pub async fn client(&self) -> gcloud_pubsub::client::Client {
        gcloud_pubsub::client::Client::new(gcloud_pubsub::client::ClientConfig {
            project_id: Some(PROJECT.into()),
            environment: gcloud_gax::conn::Environment::Emulator(self.host.clone()),
            ..Default::default()
        })
        .await
        .expect("connect to the emulator")
    }

    /// Pulls and acks what `subscription` holds now, `per_pull` messages at a time, until
    /// a pull finds nothing or fails. Near-limit payloads want one at a time: two in one
    /// answer are more than the client decodes, and the emulator keeps what a failed pull
    /// leased out of sight until the lease ends.
    pub async fn drain(&self, subscription: &str, per_pull: i32) -> Drained {
        use gcloud_googleapis::pubsub::v1::{AcknowledgeRequest, PullRequest};
        let client = self.client().await;
        let sub = client.subscription(subscription).get_client();
        let mut out = Drained {
            payloads: Vec::new(),
            failed: false,
        };
        loop {
            #[allow(deprecated)]
            let request = PullRequest {
                subscription: subscription.to_string(),
                return_immediately: true,
                max_messages: per_pull,
            };
            let Ok(got) = sub.pull(request, None).await else {
                out.failed = true;
                return out;
            };
            let got = got.into_inner().received_messages;
            if got.is_empty() {
                return out;
            }
            let ack = AcknowledgeRequest {
                subscription: subscription.to_string(),
                ack_ids: got.iter().map(|r| r.ack_id.clone()).collect(),
            };
            out.failed |= sub.acknowledge(ack, None).await.is_err();
            out.payloads
                .extend(got.into_iter().filter_map(|r| r.message.map(|m| m.data)));
            if out.failed {
                return out;
            }
        }
    }

    /// Removes a run's subscription and topic, and their dead letters'.
    pub async fn delete(&self, topic: &str, subscription: &str) {
        let client = self.client().await;
        for s in [subscription.to_string(), format!("{topic}-dead-letters")] {
            let s = s.replace("/topics/", "/subscriptions/");
            let _ = client.subscription(&s).delete(None).await;
        }
        for t in [topic.to_string(), format!("{topic}-dead-letters")] {
            let _ = client.topic(&t).delete(None).await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // gcloud starts the emulator's JVM as a child of its own: stop the group.
        if let Some(child) = &mut self.child {
            let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}
