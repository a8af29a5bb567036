//! The pub/sub message, its validated parts, and its JSON wire form.
//!
//! A message names one host instance. Everything here is plain data: it is `Copy`, so
//! passing it between actors costs a memcpy and never a heap allocation.

use std::fmt;
use std::sync::LazyLock;

use lasso::{Spur, ThreadedRodeo};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// The longest DNS label, and so the longest instance name.
pub const MAX_INSTANCE_NAME: usize = 63;

/// Why a string is not a valid instance name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InstanceNameError {
    #[error("instance name is empty")]
    Empty,
    #[error("instance name is {0} characters long, more than the 63 a dns label allows")]
    TooLong(usize),
    #[error("instance name has {0:?}, but only a-z, 0-9 and '-' are allowed")]
    BadChar(char),
    #[error("instance name starts or ends with '-'")]
    EdgeHyphen,
    #[error("more distinct instance names than the interner can hold")]
    TooMany,
}

/// Every instance name seen, each stored once. Names are interned because every actor
/// keeps deliveries in its tables: a 68-byte inline name made a delivery 112 bytes and
/// an in-flight message cost over 2 KiB of memory; a 4-byte key makes it 48. The
/// interner grows with the number of distinct hosts, as the Restarter's index of last
/// restarts does, and never shrinks.
static NAMES: LazyLock<ThreadedRodeo> = LazyLock::new(ThreadedRodeo::default);

/// A host instance such as `cattle-zpsk`: one DNS label of `[a-z0-9-]`, 1 to 63 characters,
/// with no leading or trailing hyphen.
///
/// Validation happens once, at the edge; everything downstream can trust it, which is what
/// makes it safe to splice into a hostname or a shell command later.
///
/// ```
/// use mandrill::message::InstanceName;
///
/// let host = InstanceName::parse("cattle-zpsk").unwrap();
/// let domain = "example.net".into();
/// assert_eq!(host.hostname(&domain).to_string(), "cattle-zpsk.example.net");
/// assert!(InstanceName::parse("cattle-1; rm -rf /").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceName(Spur);

impl InstanceName {
    pub fn parse(s: &str) -> Result<Self, InstanceNameError> {
        if s.is_empty() {
            return Err(InstanceNameError::Empty);
        }
        // Valid names are ASCII, so bytes are checked first; chars are counted only to
        // word an error. The publisher parses every name it makes, so this is hot.
        let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        if s.len() > MAX_INSTANCE_NAME || !s.bytes().all(|b| ok(&b)) {
            let chars = s.chars().count();
            if chars > MAX_INSTANCE_NAME {
                return Err(InstanceNameError::TooLong(chars));
            }
            if let Some(c) = s
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(InstanceNameError::BadChar(c));
            }
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(InstanceNameError::EdgeHyphen);
        }
        NAMES
            .try_get_or_intern(s)
            .map(Self)
            .map_err(|_| InstanceNameError::TooMany)
    }

    pub fn as_str(&self) -> &'static str {
        NAMES.resolve(&self.0)
    }

    /// The host's fully qualified name, `{instance}.{domain}`.
    pub fn hostname(&self, domain: &std::sync::Arc<str>) -> Hostname {
        Hostname {
            instance: *self,
            domain: domain.clone(),
        }
    }
}

/// A host's full name, `instance.domain`. It is formatted only when shown, because most
/// restarts never show it: a `String` per restart cost more than the restart itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname {
    instance: InstanceName,
    domain: std::sync::Arc<str>,
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.instance, self.domain)
    }
}

/// Ordered by name, not by when the name was first seen.
impl Ord for InstanceName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for InstanceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InstanceName {
    type Err = InstanceNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for InstanceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InstanceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        InstanceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One pub/sub message, exactly as it travels on the wire:
/// `{"message_id": "...", "instance_name": "cattle-zpsk"}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub message_id: Uuid,
    pub instance_name: InstanceName,
}

impl Message {
    pub fn new(instance_name: InstanceName) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            instance_name,
        }
    }
}

/// The talk's rendering, so that log lines read like its slides.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Message(instance_name='{}')", self.instance_name)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Message(message_id='{}', instance_name='{}')",
            self.message_id, self.instance_name
        )
    }
}

/// Why a line of input is not a message.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("line is {0} bytes long, over the 64 KiB limit")]
    TooLong(usize),
    #[error("line is not valid utf-8")]
    NotUtf8,
    #[error("{0}")]
    Json(String),
}

/// The longest line the stdin source accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// Parses one line of newline-delimited JSON into a message.
///
/// serde_json's own errors already name a missing field, a bad uuid or a bad instance name;
/// they are kept, minus the position suffix, which means nothing to someone fixing one line.
pub fn parse_line(line: &[u8]) -> Result<Message, WireError> {
    if line.len() > MAX_LINE {
        return Err(WireError::TooLong(line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|_| WireError::NotUtf8)?;
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        WireError::Json(msg)
    })
}

/// A broker's handle on one delivery of a message, used to ack or nack exactly that delivery.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct DeliveryTag(pub u64);

/// A message as delivered by the subscription: the message plus delivery metadata.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub tag: DeliveryTag,
    pub message: Message,
    /// 1 on first delivery, then one more on each redelivery.
    pub attempt: u32,
    pub published_at: tokio::time::Instant,
}

impl Delivery {
    pub fn id(&self) -> Uuid {
        self.message.message_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["cattle-zpsk", "a", "0", "a-b-c", &"x".repeat(63)] {
            assert_eq!(InstanceName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(InstanceName::parse(""), Err(InstanceNameError::Empty));
        assert_eq!(
            InstanceName::parse(&"x".repeat(64)),
            Err(InstanceNameError::TooLong(64))
        );
        assert_eq!(
            InstanceName::parse("cattle-1; rm -rf /"),
            Err(InstanceNameError::BadChar(';'))
        );
        assert_eq!(
            InstanceName::parse("Cattle"),
            Err(InstanceNameError::BadChar('C'))
        );
        assert_eq!(
            InstanceName::parse("-cattle"),
            Err(InstanceNameError::EdgeHyphen)
        );
        assert_eq!(
            InstanceName::parse("cattle-"),
            Err(InstanceNameError::EdgeHyphen)
        );
        assert_eq!(
            InstanceName::parse("cättle"),
            Err(InstanceNameError::BadChar('ä'))
        );
    }

    #[test]
    fn hostname_appends_domain() {
        let n = InstanceName::parse("cattle-zpsk").unwrap();
        assert_eq!(
            n.hostname(&"example.net".into()).to_string(),
            "cattle-zpsk.example.net"
        );
    }

    #[test]
    fn wire_form_round_trips() {
        let m = Message::new(InstanceName::parse("cattle-zpsk").unwrap());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"message_id":"{}","instance_name":"cattle-zpsk"}}"#,
                m.message_id
            )
        );
        assert_eq!(parse_line(json.as_bytes()).unwrap(), m);
        assert_eq!(m.to_string(), "Message(instance_name='cattle-zpsk')");
    }

    #[test]
    fn bad_lines_say_why() {
        let id = Uuid::new_v4();
        let cases: [(String, &str); 5] = [
            ("{not json".into(), "key must be a string"),
            (
                format!(r#"{{"message_id":"{id}"}}"#),
                "missing field `instance_name`",
            ),
            (
                r#"{"message_id":"nope","instance_name":"a"}"#.into(),
                "UUID",
            ),
            (
                format!(r#"{{"message_id":"{id}","instance_name":"cattle-1; rm -rf /"}}"#),
                "';'",
            ),
            ("x".repeat(MAX_LINE + 1), "64 KiB"),
        ];
        for (line, want) in cases {
            let err = parse_line(line.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
            assert!(!err.contains(" at line "), "{err:?}");
        }
    }
}
