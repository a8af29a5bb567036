//! `mandrill history`: what was restarted, when and why, read from the store's history
//! as a table that fits a terminal, as JSON, or as CSV.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use thiserror::Error;

use crate::store::postgres::Database;
use crate::store::StoreError;
use crate::store::{HistoryQuery, HistoryRow};

/// How the history is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns, newest first, cut to fit the terminal.
    Table,
    /// One JSON array of objects.
    Json,
    /// Comma-separated, with a header row.
    Csv,
}

/// What `mandrill history` shows.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only hosts whose instance name matches this glob (`cattle-*`).
    #[arg(long, value_name = "GLOB")]
    pub host: Option<String>,
    /// Only attempts since this long ago (`1h`, `7d`) or since this date (`2026-11-30`,
    /// midnight UTC).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only this outcome: restarted, dry_run, failed, timed_out, refused (any rail) or
    /// refused:RAIL.
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Option<String>,
    /// At most this many attempts, newest first.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u64,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The SQLite file the service writes.
    #[arg(long, value_name = "PATH", default_value = "mandrill.db")]
    pub db: PathBuf,
    /// The PostgreSQL database a fleet writes, instead of a file (`DATABASE_URL` too).
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub db_url: Option<Database>,
}

/// A `--since`: a span back from now, or a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(std::time::Duration),
    Date(jiff::civil::Date),
}

fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return Ok(Since::Date(d));
    }
    crate::units::parse_duration(s)
        .map(Since::Ago)
        .map_err(|_| format!("{s:?} is neither a span such as 1h nor a date such as 2026-11-30"))
}

impl Since {
    /// The moment it names, in ms since the epoch.
    fn to_ms(self, now_ms: i64) -> Result<i64, HistoryError> {
        match self {
            Since::Ago(d) => Ok(now_ms - d.as_millis() as i64),
            Since::Date(d) => d
                .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                .map(|z| z.timestamp().as_millisecond())
                .map_err(|e| HistoryError::Since(e.to_string())),
        }
    }
}

/// Why the history could not be shown.
#[derive(Debug, Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--since: {0}")]
    Since(String),
    #[error("cannot write the history: {0}")]
    Write(String),
}

/// Prints the history `args` asks for to `out`.
pub fn run(args: &HistoryArgs, out: &mut dyn Write) -> Result<(), HistoryError> {
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let query = HistoryQuery {
        host: args.host.clone(),
        since_ms: args.since.map(|s| s.to_ms(now_ms)).transpose()?,
        outcome: args.outcome.clone(),
        limit: args.limit,
        now_ms,
    };
    let rows = match &args.db_url {
        Some(database) => crate::store::postgres::read_history(database, &query)?,
        None => crate::store::sqlite::read_history(&args.db, &query)?,
    };
    let write = |e: std::io::Error| HistoryError::Write(e.to_string());
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &rows)
                .map_err(|e| HistoryError::Write(e.to_string()))?;
            writeln!(out).map_err(write)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            for r in &rows {
                w.serialize(r)
                    .map_err(|e| HistoryError::Write(e.to_string()))?;
            }
            w.flush().map_err(write)
        }
        Format::Table => {
            let width = std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(100usize);
            for line in table(&rows, width) {
                writeln!(out, "{line}").map_err(write)?;
            }
            Ok(())
        }
    }
}

/// The rows as aligned lines no wider than `width`, the reason cut to fit.
fn table(rows: &[HistoryRow], width: usize) -> Vec<String> {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let took = (r.finished_ms - r.started_ms).max(0) as f64 / 1000.0;
            let action = if r.leashed {
                format!("{} (leashed)", r.action)
            } else {
                r.action.clone()
            };
            [
                utc(r.started_ms),
                r.hostname.clone(),
                action,
                r.outcome.clone(),
                format!("{took:.1}s"),
            ]
        })
        .collect();
    let head = ["STARTED (UTC)", "HOST", "ACTION", "OUTCOME", "TOOK"];
    let mut widths = head.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: [&str; 5], reason: &str| {
        let mut l = String::new();
        for (cell, w) in c.iter().zip(widths) {
            l.push_str(&format!("{cell:<w$}  "));
        }
        let room = width.saturating_sub(l.chars().count());
        let reason: String = if reason.chars().count() > room {
            let cut: String = reason.chars().take(room.saturating_sub(1)).collect();
            format!("{cut}…")
        } else {
            reason.to_string()
        };
        (l + &reason).trim_end().to_string()
    };
    let mut out = vec![line(head, "REASON")];
    for (c, r) in cells.iter().zip(rows) {
        let c = [&*c[0], &*c[1], &*c[2], &*c[3], &*c[4]];
        out.push(line(c, r.reason.as_deref().unwrap_or("")));
    }
    out
}

fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(outcome: &str, reason: Option<&str>) -> HistoryRow {
        HistoryRow {
            started_ms: 1_764_600_000_000,
            finished_ms: 1_764_600_000_300,
            instance: "cattle-zpsk".into(),
            hostname: "cattle-zpsk.example.net".into(),
            action: "command".into(),
            leashed: false,
            outcome: outcome.into(),
            reason: reason.map(String::from),
            service: "host:1".into(),
            message_id: "6f1c2a9e-5b7d-4c1e-9a3f-2d8e4b6c0a17".into(),
        }
    }

    #[test]
    fn the_table_fits_its_width_and_cuts_the_reason() {
        let long = "exit status 1: ".to_string() + &"x".repeat(300);
        let lines = table(&[row("restarted", None), row("failed", Some(&long))], 100);
        assert!(lines[0].starts_with("STARTED (UTC)"), "{lines:?}");
        assert!(lines[1].contains("cattle-zpsk.example.net"), "{lines:?}");
        assert!(lines[1].contains("0.3s"), "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 100), "{lines:?}");
        assert!(lines[2].ends_with('…'), "{lines:?}");
    }

    #[test]
    fn since_takes_a_span_or_a_date() {
        assert_eq!(parse_since("1h").unwrap().to_ms(3_600_000).unwrap(), 0);
        assert_eq!(
            parse_since("1970-01-02").unwrap().to_ms(0).unwrap(),
            86_400_000
        );
        assert!(parse_since("soonish").is_err());
    }
}
