//! The bodies of the fuzz targets under `fuzz/`, kept here so that the torture suite's
//! quick slice runs the very same checks on stable, in-process, without libFuzzer.
//!
//! Each body takes any bytes, feeds them to one of the parsers that read text from
//! outside (a broker's message, a config file, a duration), and panics when the parser
//! panics or breaks one of its own promises. A panic is what both libFuzzer and the
//! slice count as a crash.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cli::{self, ConfigFileError};
use crate::message::{self, InstanceName, WireError};
use crate::units;

/// A line of a broker's input: a message parsed is a message serialized back, a name
/// parsed is a valid DNS label, and an error says what serde_json said, minus its
/// position only.
pub fn message_line(data: &[u8]) {
    match message::parse_line(data) {
        Ok(m) => {
            let json = serde_json::to_string(&m).expect("a message serializes");
            let again = message::parse_line(json.as_bytes())
                .unwrap_or_else(|e| panic!("{json} was written from {m:?} but reads as: {e}"));
            assert_eq!(again, m, "{json} reads as another message");
            let name = m.instance_name.to_string();
            assert!(
                (1..=message::MAX_INSTANCE_NAME).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !name.starts_with('-')
                    && !name.ends_with('-'),
                "{name:?} was taken as an instance name"
            );
            assert_eq!(InstanceName::parse(&name), Ok(m.instance_name));
        }
        Err(WireError::TooLong(n)) => {
            assert!(n == data.len() && n > message::MAX_LINE, "too long: {n}")
        }
        Err(WireError::NotUtf8) => assert!(std::str::from_utf8(data).is_err(), "not utf-8"),
        Err(WireError::Json(reason)) => {
            let text = std::str::from_utf8(data).expect("json errors come from text");
            let e = serde_json::from_str::<message::Message>(text).expect_err("an error");
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let want = full.strip_suffix(&suffix).unwrap_or(&full);
            assert!(
                reason.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                "the reason carries a character that can break or bend a log line: {reason:?}"
            );
            assert_eq!(
                reason,
                message::printable(want),
                "the reason is not serde_json's, minus its position, escaped"
            );
        }
    }
}

/// A config file's text: the same text gives the same answer, an error points inside
/// the text, and the flags a file stands for, written back as a file of one key per
/// flag, stand for the same flags.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // The file is read into a `String`: bytes that are not UTF-8 never reach the
        // parser.
        return;
    };
    let result = cli::text_args("fuzz.toml".into(), text);
    let again = cli::text_args("fuzz.toml".into(), text);
    assert_eq!(
        format!("{result:?}"),
        format!("{again:?}"),
        "one text, two answers"
    );
    let lines = text.lines().count();
    match result {
        Err(ConfigFileError::Syntax { line, column, .. }) => {
            let at = text.split('\n').nth(line.wrapping_sub(1));
            let width = at.map_or(0, |l| l.chars().count());
            assert!(
                at.is_some() && (1..=width + 1).contains(&column),
                "syntax error at line {line}, column {column}, outside the text"
            );
        }
        Err(
            ConfigFileError::UnknownKey { at, .. }
            | ConfigFileError::BadValue { at, .. }
            | ConfigFileError::SetTwice { at, .. },
        ) => {
            if !at.is_empty() {
                let n: usize = at
                    .strip_prefix(", line ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{at:?} is not a line"));
                assert!((1..=lines).contains(&n), "line {n} of {lines}");
            }
        }
        Err(e @ ConfigFileError::Read { .. }) => panic!("text cannot fail to be read: {e}"),
        Ok(args) => {
            let rebuilt = written_back(&args);
            let reread = cli::text_args("rebuilt.toml".into(), &rebuilt)
                .unwrap_or_else(|e| panic!("{args:?}, written back as {rebuilt:?}: {e}"));
            let (mut want, mut got) = (args.clone(), reread);
            want.sort();
            got.sort();
            assert_eq!(got, want, "{rebuilt:?}, written back from {args:?}");
        }
    }
}

/// A config file of one key per flag, from `--flag` and `--flag=value` arguments: a flag
/// given alone is `true`, once a string, more than once a list.
fn written_back(args: &[String]) -> String {
    let mut keys: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for arg in args {
        let flag = arg
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("{arg:?} is not a flag"));
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        keys.entry(name.to_string()).or_default().push(value);
    }
    let table: toml::Table = keys
        .into_iter()
        .map(|(name, values)| {
            let value = match values.as_slice() {
                [None] => toml::Value::Boolean(true),
                [Some(v)] => toml::Value::String(v.clone()),
                _ => toml::Value::Array(
                    values
                        .iter()
                        .map(|v| toml::Value::String(v.clone().unwrap_or_default()))
                        .collect(),
                ),
            };
            (name, value)
        })
        .collect();
    toml::to_string(&table).expect("a table serializes")
}

/// A duration as flags and the config file take it: one parsed is within the bound,
/// and reads back the same from its human form; zero is the only one refused as not
/// positive; an error quotes the text it refuses.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // Flags and config values are strings: no other bytes reach the parser.
        return;
    };
    let quoted = format!("{text:?}");
    let positive = units::parse_positive_duration(text);
    match units::parse_duration(text) {
        Ok(d) => {
            assert!(d <= units::MAX_DURATION, "{quoted} gave {d:?}");
            let human = humantime::format_duration(d).to_string();
            assert_eq!(
                units::parse_duration(&human),
                Ok(d),
                "{quoted} gave {d:?}, written as {human:?}"
            );
            match positive {
                Ok(p) => assert!(p == d && !d.is_zero(), "{quoted}: {p:?}, {d:?}"),
                Err(e) => assert!(d == Duration::ZERO && e.starts_with(&quoted), "{e}"),
            }
        }
        Err(e) => {
            assert!(e.starts_with(&quoted), "{e:?} does not quote {quoted}");
            assert_eq!(positive, Err(e));
        }
    }
}
