//! `WebhookAction`: restarts a host by asking an HTTP endpoint to, with a JSON POST.
//!
//! Each restart is one request, sent as its own task on the event loop's runtime with a
//! timeout. 2xx is a restart; 4xx is a refusal the broker must not retry, so the message
//! is dead-lettered at once with the reason; 5xx, a timeout or a connection that fails
//! is a failure the broker retries. Header values may name environment variables, and
//! are never logged.

use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use serde::Serialize;
use thiserror::Error;

use super::{ActionsDone, JobDone, RestartAction, RestartError, RestartJob};

/// How much of an error response's body a failure keeps.
const BODY_KEPT: usize = 512;

/// Why the webhook settings cannot work; found at start-up.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("{0:?} is not an http or https URL")]
    Url(String),
    #[error("header {0:?} is not NAME=VALUE with a valid name and value")]
    Header(String),
    #[error("header {name} names ${{{var}}}, which is not set")]
    MissingVar { name: String, var: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// One header sent with every request. Its value is kept out of `Debug`, since it is
/// often a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    value: String,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

impl Header {
    /// Parses `NAME=VALUE`, replacing each `${VAR}` in the value with that environment
    /// variable's value.
    pub fn parse(spec: &str) -> Result<Self, WebhookError> {
        let bad = || WebhookError::Header(spec.to_string());
        let (name, value) = spec.split_once('=').ok_or_else(bad)?;
        let name = name.trim().to_string();
        let mut out = String::new();
        let mut rest = value.trim();
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}').ok_or_else(bad)? + at;
            let var = &rest[at + 2..end];
            let found = std::env::var(var).map_err(|_| WebhookError::MissingVar {
                name: name.clone(),
                var: var.to_string(),
            })?;
            out.push_str(&found);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        reqwest::header::HeaderValue::from_str(&out).map_err(|_| bad())?;
        Ok(Header { name, value: out })
    }
}

/// A webhook URL, checked at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(String);

impl std::str::FromStr for Url {
    type Err = WebhookError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = reqwest::Url::parse(s).map_err(|_| WebhookError::Url(s.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(WebhookError::Url(s.to_string()));
        }
        Ok(Url(s.to_string()))
    }
}

/// Shows the endpoint without a password or a query, which may hold a secret.
impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match reqwest::Url::parse(&self.0) {
            Ok(mut u) => {
                let _ = u.set_password(None);
                u.set_query(None);
                f.write_str(u.as_str())
            }
            Err(_) => f.write_str("(unparsable url)"),
        }
    }
}

/// How the webhook action runs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Url,
    pub headers: Vec<Header>,
    pub timeout: Duration,
    pub domain: Arc<str>,
}

/// What each request carries.
#[derive(Debug, Serialize)]
struct Body<'a> {
    message_id: String,
    instance_name: &'a str,
    hostname: String,
    attempt: u32,
    dry_run: bool,
}

/// Restarts hosts through an HTTP endpoint.
pub struct WebhookAction {
    config: Arc<WebhookConfig>,
    /// The client, or why it could not be built: then every restart is unavailable.
    client: Result<reqwest::Client, String>,
}

impl WebhookAction {
    pub fn new(config: WebhookConfig) -> Self {
        // The TLS library takes its cryptography from the process-wide provider; a
        // second install by another part of the process is no error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()).to_string());
        Self {
            config: Arc::new(config),
            client,
        }
    }
}

impl RestartAction for WebhookAction {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn start(&mut self, jobs: Vec<RestartJob>, done: &Recipient<ActionsDone>) {
        for job in jobs {
            let (config, client, done) = (self.config.clone(), self.client.clone(), done.clone());
            actix_rt::spawn(async move {
                let result = match client {
                    Ok(client) => post(&config, &client, &job).await,
                    Err(e) => Err(RestartError::Unavailable(e)),
                };
                done.do_send(ActionsDone(vec![JobDone { job, result }]));
            });
        }
    }

    fn describe(&self, _: &RestartJob) -> String {
        format!("POST {}", self.config.url.0)
    }
}

/// Sends one job's request and reads what its answer means.
async fn post(
    config: &WebhookConfig,
    client: &reqwest::Client,
    job: &RestartJob,
) -> Result<(), RestartError> {
    let host = job.host.hostname(&config.domain);
    let body = Body {
        message_id: job.message_id.to_string(),
        instance_name: &job.host.as_str(),
        hostname: host.to_string(),
        attempt: job.attempt,
        dry_run: false,
    };
    let mut request = client.post(&config.url.0).json(&body);
    for h in &config.headers {
        request = request.header(&h.name, &h.value);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Err(RestartError::TimedOut {
                host,
                after: config.timeout,
            })
        }
        Err(e) => {
            return Err(RestartError::Unavailable(format!(
                "cannot reach {}: {}",
                config.url.0,
                without_url(&e)
            )))
        }
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let text: String = text.trim().chars().take(BODY_KEPT).collect();
    let reason = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    };
    if status.is_client_error() {
        Err(RestartError::Refused {
            host,
            reason: reason.into(),
        })
    } else {
        Err(RestartError::Failed {
            host,
            reason: reason.into(),
        })
    }
}

/// A request error's text without the URL, which the caller names once.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_and_headers_read_the_environment() {
        assert!("https://hooks.example.net/restart".parse::<Url>().is_ok());
        assert!("ftp://example.net".parse::<Url>().is_err());
        assert!("not a url".parse::<Url>().is_err());
        std::env::set_var("MANDRILL_WEBHOOK_TEST_TOKEN", "s3cret");
        let h = Header::parse("Authorization=Bearer ${MANDRILL_WEBHOOK_TEST_TOKEN}").unwrap();
        assert_eq!(h.value, "Bearer s3cret");
        assert!(!format!("{h:?}").contains("s3cret"));
        assert!(matches!(
            Header::parse("X=${MANDRILL_WEBHOOK_TEST_UNSET}"),
            Err(WebhookError::MissingVar { .. })
        ));
        assert!(Header::parse("no value").is_err());
    }
}
