//! The TCP ingest, on the dispatcher's executor: one task per publisher connection reads its
//! newline-delimited JSON, validates each line ([`crate::publisher::LineParser`]) and hands the
//! event to the [`Dispatcher`] without copying it; a bad line gets an error line back and the
//! stream goes on.
//! Data path: publisher -> **ingest** -> dispatcher.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use simd_json::prelude::*;

use crate::dispatcher::Dispatcher;
use crate::publisher::{Line, LineParser, Lines, PublishError};

/// Most bytes the ingest tasks read, together, before one of them lets the executor run its
/// other tasks (~6,000 lines of 160 bytes; at ~0.5 µs per line, ~3 ms of the dispatcher's
/// time, whatever the number of publishers).
const PASS_BYTES: usize = 1 << 20;

/// Bytes read by all of an executor's ingest tasks since one of them last let the executor
/// run: one budget per dispatcher, shared by its ingest tasks.
pub(crate) type PassBudget = Rc<std::cell::Cell<usize>>;

/// Serves one TCP publisher on the dispatcher's executor until it disconnects. Every line is one
/// event; a bad line gets an error line back (`{"op":"error","line":N,"code":..,"message":..}`)
/// and the stream goes on. When the publisher closes its side, a last line without a newline
/// is published like any other, and its error (if any) is still written back. A connection
/// that ends in an error (reset) loses only its unterminated last line.
///
/// The dispatcher's `{"op":"snapshot_request","topic":T}` lines for this publisher are put in
/// its outbox and the task woken: written at once while it waits to read, or with the error
/// lines after a read.
///
/// While it waits to read, the socket is in `nap_fds`, the descriptors whose readability ends
/// the dispatcher's idle nap; at any other time (parsing, writing error lines back to a
/// publisher that does not read them) it is not, so unread input never keeps the nap from
/// sleeping.
pub(crate) async fn serve_ingest(
    dispatcher: Rc<RefCell<Dispatcher>>,
    mut stream: TcpStream,
    nap_fds: Rc<RefCell<Vec<std::os::fd::RawFd>>>,
    budget: PassBudget,
) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    tracing::info!(peer = %peer, "publisher connected");
    let max_line = dispatcher.borrow().config().max_line_bytes;
    let key = dispatcher.borrow().config().publisher_key.clone();
    let mut carry = Vec::new();
    if let Some(key) = key {
        let waking = corecast_shards::executor::WakesNap::new(&nap_fds, fd);
        let checked = read_key(&mut stream, key.0.as_bytes())
            .or(async {
                glommio::timer::sleep(KEY_TIMEOUT).await;
                Err("no publisher key within 10 s")
            })
            .await;
        drop(waking);
        match checked {
            Ok(rest) => carry = rest,
            Err(why) => {
                tracing::warn!(peer = %peer, reason = why, "publisher refused: publisher key");
                {
                    let mut d = dispatcher.borrow_mut();
                    d.stats.rejected_lines += 1;
                    d.stats.count_error("unauthorized");
                }
                let line = format!(
                    "{{\"op\":\"error\",\"line\":0,\"code\":\"unauthorized\",\"message\":\"{why}\"}}\n"
                );
                let _ = stream.write_all(line.as_bytes()).await;
                // Half-close and read what the publisher still sends until its EOF (at most a
                // second): closing with unread input would reset the connection and could
                // lose the error line.
                corecast_shards::socket::shutdown_write(fd);
                let mut sink = [0u8; 4096];
                let drain =
                    async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
                drain
                    .or(glommio::timer::sleep(std::time::Duration::from_secs(1)))
                    .await;
                return;
            }
        }
    }
    // Lines the dispatcher has for this publisher (`snapshot_request`), written with its
    // error lines after each read.
    let (source, outbox, kicked) = dispatcher.borrow_mut().register_ingest();
    let mut lines = Lines::new(max_line);
    let mut parser = LineParser::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut replies: Vec<u8> = Vec::new();
    if !carry.is_empty() {
        // What came after the key line in the same read.
        let mut each = |no: u64, line: Line<'_>| {
            take_line(
                &dispatcher,
                &mut parser,
                &mut replies,
                (no, line),
                Instant::now(),
                source,
                max_line,
            )
        };
        lines.feed(&carry, &mut each);
        drop(carry);
        if !replies.is_empty() {
            if stream.write_all(&replies).await.is_err() {
                dispatcher.borrow_mut().unregister_ingest(source);
                return;
            }
            replies.clear();
        }
    }
    loop {
        let waking = corecast_shards::executor::WakesNap::new(&nap_fds, fd);
        // A read, or lines for the publisher while it is quiet. Dropping a pending read loses
        // nothing: glommio waits for readiness, then reads without blocking.
        let woke = async { Woke::Read(stream.read(&mut chunk).await) }
            .or(async {
                let _ = kicked.recv().await;
                Woke::Outbox
            })
            .await;
        drop(waking);
        let read = match woke {
            Woke::Read(r) => r,
            Woke::Outbox => {
                let lines = std::mem::take(&mut *outbox.borrow_mut());
                if !lines.is_empty() && stream.write_all(&lines).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Ok(n) = read else {
            break;
        };
        let ingest_at = Instant::now();
        let mut each = |no: u64, line: Line<'_>| {
            take_line(
                &dispatcher,
                &mut parser,
                &mut replies,
                (no, line),
                ingest_at,
                source,
                max_line,
            )
        };
        if n == 0 {
            lines.finish(&mut each);
        } else {
            lines.feed(&chunk[..n], &mut each);
        }
        replies.append(&mut outbox.borrow_mut());
        if !replies.is_empty() {
            if stream.write_all(&replies).await.is_err() {
                break;
            }
            replies.clear();
        }
        if n == 0 {
            break;
        }
        // A read that filled the buffer left more waiting: read on at once (the next read is a
        // plain `recv`, no trip through the reactor), up to PASS_BYTES, so what a publisher
        // sent while the shards wrote is sequenced together and the next fan-out round carries
        // all of it in one write per connection.
        budget.set(budget.get() + n);
        if n == chunk.len() && budget.get() < PASS_BYTES {
            continue;
        }
        // A publisher that never pauses would otherwise keep the dispatcher to itself (reads
        // complete at once while data waits): the pumps, the shards' requests and the other
        // publishers get their pass.
        corecast_shards::executor::let_the_executor_run().await;
        // The executor ran its other tasks (a fan-out round among them): a new pass. Other
        // ingest tasks that ran meanwhile found the budget spent and read one buffer each.
        budget.set(0);
    }
    dispatcher.borrow_mut().unregister_ingest(source);
    tracing::info!(peer = %peer, lines = lines.count(), "publisher disconnected");
}

/// One line of a publisher (`(number, line)`): published, or refused with its error line added
/// to `replies` and counted by code.
fn take_line(
    dispatcher: &RefCell<Dispatcher>,
    parser: &mut LineParser,
    replies: &mut Vec<u8>,
    (no, line): (u64, Line<'_>),
    ingest_at: Instant,
    source: crate::dispatcher::Source,
    max_line: usize,
) {
    let result = match line {
        Line::Text(text) => parser.parse(text).and_then(|p| {
            dispatcher
                .borrow_mut()
                .publish_parts(p.topic, p.data, p.ts, ingest_at, p.snapshot, source)
                .map(|_| ())
        }),
        Line::TooLong => Err(PublishError::LineTooLong(max_line)),
    };
    if let Err(e) = result {
        let mut d = dispatcher.borrow_mut();
        d.stats.rejected_lines += 1;
        d.stats.count_error(e.code());
        drop(d);
        error_line(replies, no, &e);
    }
}

/// How long a publisher has to send its key line.
const KEY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest key line read, bytes.
const MAX_KEY_LINE: usize = 4096;

/// Reads the publisher's first line and compares it with `key` in constant time (the time
/// taken does not depend on where the two differ). `Ok` carries the bytes after the line.
async fn read_key(stream: &mut TcpStream, key: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() > MAX_KEY_LINE {
            return Err("the first line must be the publisher key");
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err("closed before the publisher key"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    if !corecast_shards::auth::same_secret(line, key) {
        return Err("wrong publisher key");
    }
    Ok(buf.split_off(end + 1))
}

/// What ended an ingest task's wait.
enum Woke {
    Read(std::io::Result<usize>),
    Outbox,
}

fn error_line(out: &mut Vec<u8>, line: u64, e: &PublishError) {
    let json = simd_json::json!({
        "op": "error",
        "line": line,
        "code": e.code(),
        "message": e.to_string(),
    });
    out.extend_from_slice(json.encode().as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(corecast_shards::auth::same_secret(b"secret", b"secret"));
        assert!(!corecast_shards::auth::same_secret(b"secret", b"secreT"));
        assert!(!corecast_shards::auth::same_secret(b"secret", b"secret2"));
        assert!(!corecast_shards::auth::same_secret(b"", b"x"));
        assert!(corecast_shards::auth::same_secret(b"", b""));
    }

    #[test]
    fn error_line_names_line_and_reason() {
        let mut out = Vec::new();
        error_line(&mut out, 12, &PublishError::MissingData);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let mut bytes = text.trim_end().as_bytes().to_vec();
        let v = simd_json::to_owned_value(&mut bytes).unwrap();
        assert_eq!(v["line"], 12);
        assert_eq!(v["code"], "missing_data");
    }
}
