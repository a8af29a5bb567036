//! The stdin source: newline-delimited JSON messages read on a dedicated blocking thread.
//!
//! Reading stdin blocks, so it never happens on the event loop. The thread hands accepted
//! messages to the broker through a `Recipient`, which is safe to use from any thread;
//! that hand-off is the talk's section on threads. A bad line is logged with its number
//! and reason, counted as rejected, and skipped.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use actix::prelude::*;
use tracing::{error, info};

use crate::broker::{Backlog, Publish};
use crate::message::{parse_line, Message, WireError, MAX_LINE};
use crate::metrics::Metrics;
use crate::protocol::InputClosed;

/// Accepted messages are handed over in batches of at most this many, and sooner whenever
/// the reader has nothing buffered, so that an interactive producer is not kept waiting.
const BATCH: usize = 256;

/// Starts the reader thread.
pub fn spawn(
    input: Box<dyn Read + Send>,
    publish: Recipient<Publish>,
    backlog: Option<Arc<Backlog>>,
    closed: Recipient<InputClosed>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("stdin-source".into())
        .spawn(move || {
            let out = Output {
                publish,
                backlog,
                metrics,
            };
            read_all(BufReader::new(input), &out, &closed)
        })
}

/// Where accepted messages go.
struct Output {
    publish: Recipient<Publish>,
    backlog: Option<Arc<Backlog>>,
    metrics: Arc<Metrics>,
}

impl Output {
    /// Publishes a batch, as it finds room in the backlog: while the broker holds all it
    /// may, the thread waits, and reads no more of the input.
    fn publish(&self, mut batch: Vec<Message>) {
        while !batch.is_empty() {
            let n = match &self.backlog {
                Some(backlog) => backlog.take_blocking(batch.len() as u64) as usize,
                None => batch.len(),
            };
            let rest = batch.split_off(n);
            Metrics::add(&self.metrics.published, n as u64);
            self.publish.do_send(Publish(batch));
            batch = rest;
        }
    }
}

fn read_all(mut input: BufReader<impl Read>, out: &Output, closed: &Recipient<InputClosed>) {
    let metrics = &out.metrics;
    let mut batch = Vec::with_capacity(BATCH);
    let mut line = Vec::new();
    let (mut number, mut accepted, mut rejected) = (0u64, 0u64, 0u64);
    loop {
        line.clear();
        // Read at most one byte past the limit, so a huge line costs bounded memory.
        let n = match input
            .by_ref()
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                error!("Reading standard input failed: {e}; treating it as the end of input");
                break;
            }
        };
        number += 1;
        let mut too_long = None;
        if line.last() != Some(&b'\n') && n > MAX_LINE {
            too_long = Some(skip_rest_of_line(&mut input, n));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        // The limit comes first: an over-long line is rejected even if it is all blanks.
        if too_long.is_none() && text.len() > MAX_LINE {
            too_long = Some(text.len());
        }
        if too_long.is_none() && text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match too_long {
            Some(len) => Err(WireError::TooLong(len)),
            None => parse_line(text),
        };
        match parsed {
            Ok(m) => {
                accepted += 1;
                batch.push(m);
            }
            Err(e) => {
                rejected += 1;
                Metrics::inc(&metrics.rejected);
                error!("line {number}: rejected: {e}");
            }
        }
        if batch.len() >= BATCH || (!batch.is_empty() && input.buffer().is_empty()) {
            out.publish(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
        }
    }
    out.publish(batch);
    info!("End of input after {number} lines: {accepted} accepted, {rejected} rejected");
    closed.do_send(InputClosed);
}

/// Skips the rest of an over-long line, of which `read` bytes were read, and returns its
/// length, without the newline or a carriage return before it, as a normal line is
/// measured.
fn skip_rest_of_line(input: &mut impl BufRead, read: usize) -> usize {
    let mut len = read;
    let mut last = None;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) if !b.is_empty() => b,
            _ => return len,
        };
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let cr = match i {
                    0 => last == Some(b'\r'),
                    _ => buf[i - 1] == b'\r',
                };
                input.consume(i + 1);
                return len + i - usize::from(cr);
            }
            None => {
                len += buf.len();
                last = buf.last().copied();
                let used = buf.len();
                input.consume(used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{settle, sink};
    use std::sync::atomic::Ordering::Relaxed;

    fn line(n: u32) -> String {
        format!(
            r#"{{"message_id":"00000000-0000-4000-8000-{n:012}","instance_name":"cattle-{n}"}}"#
        )
    }

    #[actix_rt::test]
    async fn the_reader_waits_for_room_in_the_backlog() {
        let (publish, published) = sink::<Publish>();
        let (closed, closes) = sink::<InputClosed>();
        let metrics = Arc::new(Metrics::default());
        let backlog = Arc::new(Backlog::new(2));
        let input: String = (1..=5).map(|n| line(n) + "\n").collect();
        let handle = spawn(
            Box::new(std::io::Cursor::new(input.into_bytes())),
            publish,
            Some(backlog.clone()),
            closed,
            metrics.clone(),
        )
        .unwrap();
        let count = |published: &crate::testkit::Got<Publish>| -> usize {
            published.take().iter().map(|p| p.0.len()).sum()
        };
        let mut got = 0;
        for _ in 0..100 {
            settle().await;
            got += count(&published);
            if got >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(got, 2);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        settle().await;
        assert_eq!(count(&published), 0, "read past the bound");
        assert!(!handle.is_finished());
        assert_eq!(metrics.published.load(Relaxed), 2);
        backlog.give(3);
        let joined = actix_rt::task::spawn_blocking(move || handle.join()).await;
        joined.unwrap().unwrap();
        settle().await;
        assert_eq!(count(&published), 3);
        assert_eq!(metrics.published.load(Relaxed), 5);
        assert_eq!(closes.len(), 1);
    }

    #[actix_rt::test]
    async fn edge_cases_of_line_reading() {
        let (publish, published) = sink::<Publish>();
        let (closed, closes) = sink::<InputClosed>();
        let metrics = Arc::new(Metrics::default());
        // Exactly at the limit is fine; one byte over is not, and neither is an over-long
        // last line with no newline. CRLF endings and blank lines are tolerated.
        let at_limit = {
            let base = line(2);
            let pad = MAX_LINE - base.len();
            format!("{}{}", " ".repeat(pad), base)
        };
        let input = format!(
            "{}\r\n\n{at_limit}\n {}\n{}",
            line(1),
            " ".repeat(MAX_LINE),
            "y".repeat(MAX_LINE + 10)
        );
        assert_eq!(at_limit.len(), MAX_LINE);
        let handle = spawn(
            Box::new(std::io::Cursor::new(input.into_bytes())),
            publish,
            None,
            closed,
            metrics.clone(),
        )
        .unwrap();
        let joined = actix_rt::task::spawn_blocking(move || handle.join()).await;
        joined.unwrap().unwrap();
        settle().await;
        let ids: Vec<_> = published
            .take()
            .into_iter()
            .flat_map(|p| p.0)
            .map(|m| m.instance_name.to_string())
            .collect();
        assert_eq!(ids, vec!["cattle-1", "cattle-2"]);
        assert_eq!(metrics.rejected.load(Relaxed), 2);
        assert_eq!(closes.len(), 1);
    }

    #[test]
    fn an_over_long_line_is_measured_without_its_line_ending() {
        let skip_in = |chunk: usize, rest: &str, read| {
            let mut input = std::io::BufReader::with_capacity(chunk, rest.as_bytes());
            let len = skip_rest_of_line(&mut input, read);
            let mut after = String::new();
            input.read_to_string(&mut after).unwrap();
            (len, after)
        };
        let skip = |rest, read| skip_in(64, rest, read);
        assert_eq!(skip("abcdefgh\nnext", 10), (18, "next".into()));
        assert_eq!(skip("abc\r\nnext", 10), (13, "next".into()));
        // The carriage return at the end of one read, the newline at the start of the
        // next.
        assert_eq!(skip_in(4, "abc\r\nnext", 10), (13, "next".into()));
        assert_eq!(skip("abcdefg", 10), (17, String::new()));
    }
}
