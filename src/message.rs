//! The pub/sub message, its validated parts, and its JSON wire form.
//!
//! A message names one host instance. Everything here is plain data: it is `Copy`, so
//! passing it between actors costs a memcpy and never a heap allocation.

use std::fmt;
use std::sync::LazyLock;

use lasso::{Key, Spur, ThreadedRodeo};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// The longest DNS label, and so the longest instance name.
pub(crate) const MAX_INSTANCE_NAME: usize = 63;

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

/// Names of up to this many characters are packed into the `u64` itself.
const PACKED_MAX: usize = 12;
/// Each character is a digit in base 38: 0 pads a short name, 1 to 37 are `-`, `0-9`
/// and `a-z` in ASCII order. Twelve digits need 63 bits (38^12 < 2^63), which leaves
/// the top bit to mark an interned name.
const RADIX: u64 = 38;
const SYMBOLS: &[u8; 38] = b"\0-0123456789abcdefghijklmnopqrstuvwxyz";
const INTERNED: u64 = 1 << 63;

/// Names longer than `PACKED_MAX`, each stored once. They are rare (the simulated hosts
/// have eleven characters), so the interner's cost, a shared hash table whose lookups
/// missed the cache on every message, is only paid for them. It grows with the number
/// of distinct long names and never shrinks.
static LONG_NAMES: LazyLock<ThreadedRodeo<Spur, foldhash::fast::RandomState>> =
    LazyLock::new(|| ThreadedRodeo::with_hasher(foldhash::fast::RandomState::default()));

fn symbol(b: u8) -> u64 {
    match b {
        b'-' => 1,
        b'0'..=b'9' => 2 + u64::from(b - b'0'),
        _ => 12 + u64::from(b - b'a'),
    }
}

/// A host instance such as `cattle-zpsk`: one DNS label of `[a-z0-9-]`, 1 to 63 characters,
/// with no leading or trailing hyphen.
///
/// Validation happens once, at the edge; everything downstream can trust it, which is what
/// makes it safe to splice into a hostname or a shell command later.
///
/// It is 8 bytes, because every actor keeps deliveries in its tables: an inline 64-byte
/// name made a delivery 112 bytes and an in-flight message cost over 2 KiB of memory.
/// Names of up to 12 characters are packed into those 8 bytes, longer ones interned.
/// Each name has exactly one form, so equality and hashing compare the bits.
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
pub struct InstanceName(u64);

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
        if s.len() <= PACKED_MAX {
            // Left-aligned and padded with the smallest digit, so that the packed
            // numbers sort as the names do.
            let b = s.as_bytes();
            let packed =
                (0..PACKED_MAX).fold(0, |v, i| v * RADIX + b.get(i).copied().map_or(0, symbol));
            return Ok(Self(packed));
        }
        LONG_NAMES
            .try_get_or_intern(s)
            .map(|k| Self(INTERNED | k.into_usize() as u64))
            .map_err(|_| InstanceNameError::TooMany)
    }

    /// The name as text, decoded on the stack: no allocation, and no lock for a short
    /// name.
    pub fn as_str(&self) -> NameStr {
        if self.0 & INTERNED != 0 {
            let key = Spur::try_from_usize((self.0 & !INTERNED) as usize).expect("an interned key");
            return NameStr::Interned(LONG_NAMES.resolve(&key));
        }
        let mut buf = [0; PACKED_MAX];
        let mut v = self.0;
        for c in buf.iter_mut().rev() {
            *c = SYMBOLS[(v % RADIX) as usize];
            v /= RADIX;
        }
        let len = buf.iter().position(|&c| c == 0).unwrap_or(PACKED_MAX) as u8;
        NameStr::Packed { buf, len }
    }

    /// The host's fully qualified name, `{instance}.{domain}`.
    pub fn hostname(&self, domain: &std::sync::Arc<str>) -> Hostname {
        Hostname {
            instance: *self,
            domain: domain.clone(),
        }
    }
}

/// An instance name's text, from [`InstanceName::as_str`]; it derefs to `str`.
pub enum NameStr {
    Packed { buf: [u8; PACKED_MAX], len: u8 },
    Interned(&'static str),
}

impl std::ops::Deref for NameStr {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            NameStr::Packed { buf, len } => {
                std::str::from_utf8(&buf[..*len as usize]).expect("names are ascii")
            }
            NameStr::Interned(s) => s,
        }
    }
}

impl fmt::Display for NameStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for NameStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
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

/// Ordered by name.
impl Ord for InstanceName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if (self.0 | other.0) & INTERNED == 0 {
            self.0.cmp(&other.0)
        } else {
            (*self.as_str()).cmp(&*other.as_str())
        }
    }
}

impl PartialOrd for InstanceName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.as_str(), f)
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
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
        s.serialize_str(&self.as_str())
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

/// The letters of a simulated host's name: the talk's `cattle-` and four of these.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A simulated message, as the talk's publisher makes them: a `cattle-xxxx` host and a
/// UUIDv7 id stamped `now_ms`, everything else drawn from `rng`.
#[inline]
pub(crate) fn cattle(rng: &mut impl rand::Rng, now_ms: u64) -> Message {
    // One draw gives the four letters and the id's random part: a draw per letter
    // and per byte was most of what publishing cost. Taking letters by remainder is
    // biased by about 26^4 / 2^64, which nothing can observe.
    let bits: u128 = rng.random();
    let mut name = *b"cattle-xxxx";
    let mut letters = (bits >> 80) as u64;
    for c in &mut name[7..] {
        *c = ALPHABET[(letters % ALPHABET.len() as u64) as usize];
        letters /= ALPHABET.len() as u64;
    }
    let name = std::str::from_utf8(&name).expect("ascii");
    // Ids are UUIDv7: time first, so that a store's key index grows at its end instead
    // of dirtying pages all over it. With random v4 ids a batched SQLite insert ran at
    // about 180k rows/s; with these, above 1M (see BENCHMARKS.md). The random part
    // comes from the seeded stream, so `--seed` reproduces every id but its time.
    let random: [u8; 10] = bits.to_le_bytes()[..10].try_into().expect("10 bytes");
    Message {
        message_id: uuid::Builder::from_unix_timestamp_millis(now_ms, &random).into_uuid(),
        instance_name: InstanceName::parse(name).expect("generated names are valid"),
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
pub(crate) enum WireError {
    #[error("line is {0} bytes long, over the 64 KiB limit")]
    TooLong(usize),
    #[error("line is not valid utf-8")]
    NotUtf8,
    #[error("{0}")]
    Json(String),
}

/// The longest line the stdin source accepts.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Parses one line of newline-delimited JSON into a message.
///
/// serde_json's own errors already name a missing field, a bad uuid or a bad instance name;
/// they are kept, minus the position suffix, which means nothing to someone fixing one line.
/// Only that suffix is cut: the error may quote the line, and the line may hold the words
/// " at line " itself. Some of them quote a character of the input as it is (the uuid
/// parser's "found `x`"), so every character outside printable ASCII is escaped: the
/// reason goes into a log line, and a producer's newline or bidi override must not break
/// or bend it.
pub(crate) fn parse_line(line: &[u8]) -> Result<Message, WireError> {
    if line.len() > MAX_LINE {
        return Err(WireError::TooLong(line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|_| WireError::NotUtf8)?;
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        WireError::Json(printable(msg.strip_suffix(&position).unwrap_or(&msg)))
    })
}

/// `s` with every character but printable ASCII and the space escaped, as Rust escapes
/// them: `\n`, `\u{202e}`.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c.to_string()
            } else {
                c.escape_default().to_string()
            }
        })
        .collect()
}

/// A broker's handle on one delivery of a message, used to ack or nack exactly that
/// delivery: two deliveries of one message have two. The adapter hands it out and maps it
/// to its own wire handle (a Pub/Sub ack id, a JetStream reply subject), which keeps a
/// delivery `Copy` and small whatever the broker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct AckId(pub u64);

/// A message as delivered by the subscription: the message plus delivery metadata.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub tag: AckId,
    pub message: Message,
    /// 1 on first delivery, then one more on each redelivery.
    pub attempt: u32,
    /// When the broker accepted the message, by the wall clock, as real brokers give it.
    pub published_at: std::time::SystemTime,
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
            assert_eq!(&*InstanceName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn short_and_long_names_sort_as_text() {
        // Twelve characters are packed, thirteen interned; the order must not tell.
        let mut texts = [
            "cattle-zpsk",
            "cattle-zpska",
            "cattle-zpskaa",
            "cattle-zpsk-0",
            "cattle-zps0",
            "cattle",
            "zzzzzzzzzzzzz",
            "a",
            "0-9",
            "9",
            "cattle-zpsk9a",
        ]
        .map(String::from);
        let mut names = texts.clone().map(|t| InstanceName::parse(&t).unwrap());
        texts.sort();
        names.sort();
        let sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(sorted, texts);
    }

    #[test]
    fn a_name_has_one_form() {
        let long = "a-name-longer-than-twelve";
        assert_eq!(
            InstanceName::parse(long).unwrap(),
            InstanceName::parse(long).unwrap()
        );
        assert_ne!(
            InstanceName::parse("cattle-zpsk").unwrap(),
            InstanceName::parse("cattle-zpsk0").unwrap()
        );
        // The size every actor's tables are built on.
        assert_eq!(std::mem::size_of::<InstanceName>(), 8);
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
    fn a_reason_quotes_no_control_or_bidi_character_of_the_input() {
        // The uuid parser quotes the character it stopped at; a newline there would
        // split the log line, a right-to-left override would reorder it on a terminal.
        for (bad, shown) in [
            ("\\n", "\\n"),
            ("\\u202e", "\\u{202e}"),
            ("\\u0000", "\\u{0}"),
        ] {
            let line = format!(r#"{{"message_id":"{bad}x","instance_name":"a"}}"#);
            let err = parse_line(line.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(shown), "{err:?} lacks {shown:?}");
            assert!(
                err.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                "{err:?}"
            );
        }
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

    #[test]
    fn a_bad_line_quoting_a_position_is_kept_whole() {
        // Found by fuzzing: the reason was cut at the first " at line ", which here is
        // inside the quoted line, not serde_json's position.
        let err = parse_line(br#""sent at line 9 column 9""#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"invalid type: string "sent at line 9 column 9", expected struct Message"#
        );
    }
}
