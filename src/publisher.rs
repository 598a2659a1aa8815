//! The first step of the data path: publishers hand events to the dispatcher.
//!
//! Two ways in: the TCP ingest (newline-delimited JSON, served on the dispatcher core, where
//! each line is validated with simd-json) and the in-process [`Publisher`] handle (any thread).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use simd_json::prelude::*;

use corecast_shards::topic::{validate_topic, TopicError};

use crate::dispatcher::Dispatcher;

/// Why an event was refused. Each variant names a stable `code` for the error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("an event must be a JSON object with \"topic\" and \"data\"")]
    NotAnObject,
    #[error("\"topic\" must be a string")]
    MissingTopic,
    #[error("bad topic: {0}")]
    BadTopic(TopicError),
    #[error("\"data\" is missing")]
    MissingData,
    #[error("\"ts\" must be an unsigned integer (microseconds since the Unix epoch)")]
    BadTimestamp,
    #[error("line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("the dispatcher already tracks its maximum of {0} topics")]
    TopicLimit(usize),
    #[error("the server is shut down")]
    Closed,
}

impl PublishError {
    /// The `code` field of the error line.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::InvalidJson(_) => "invalid_json",
            PublishError::NotAnObject => "not_an_object",
            PublishError::MissingTopic => "missing_topic",
            PublishError::BadTopic(_) => "bad_topic",
            PublishError::MissingData => "missing_data",
            PublishError::BadTimestamp => "bad_ts",
            PublishError::LineTooLong(_) => "line_too_long",
            PublishError::TopicLimit(_) => "topic_limit",
            PublishError::Closed => "closed",
        }
    }
}

/// An event that passed validation, on its way to the dispatcher. Any thread.
#[derive(Debug)]
pub struct Event {
    pub topic: String,
    /// The `data` value as compact JSON text.
    pub data: Vec<u8>,
    /// Publisher timestamp, µs since the Unix epoch; the dispatcher stamps events without one.
    pub ts: Option<u64>,
    /// When the event entered the server.
    pub ingest_at: Instant,
}

/// Validates one ingest line (`{"topic":..., "data":..., "ts":...}`) in place and returns the
/// event. `line` is scratch: simd-json parses in place. Cost: one parse plus one compact
/// re-serialisation of `data`.
pub fn parse_line(line: &mut [u8], ingest_at: Instant) -> Result<Event, PublishError> {
    let value =
        simd_json::to_borrowed_value(line).map_err(|e| PublishError::InvalidJson(e.to_string()))?;
    let obj = value.as_object().ok_or(PublishError::NotAnObject)?;
    let topic = obj
        .get("topic")
        .and_then(|t| t.as_str())
        .ok_or(PublishError::MissingTopic)?;
    validate_topic(topic).map_err(PublishError::BadTopic)?;
    let data = obj.get("data").ok_or(PublishError::MissingData)?;
    let ts = match obj.get("ts") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(PublishError::BadTimestamp)?),
    };
    let mut out = Vec::with_capacity(64);
    data.write(&mut out)
        .map_err(|e| PublishError::InvalidJson(e.to_string()))?;
    Ok(Event {
        topic: topic.to_owned(),
        data: out,
        ts,
        ingest_at,
    })
}

/// In-process publishing handle. Any thread; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    pub(crate) tx: corecast_shards::ring::RingSender<Event>,
}

impl Publisher {
    /// Publishes `data` (one JSON value) on `topic`, stamped now. Validates on the calling
    /// thread, so a bad event is refused here with a clear error. Blocks while the dispatcher's
    /// input queue is full; do not call it from the dispatcher's own thread.
    pub fn publish(&self, topic: &str, data: impl AsRef<[u8]>) -> Result<(), PublishError> {
        self.publish_at(topic, data, None)
    }

    /// As [`Publisher::publish`], with the publisher's own timestamp (µs since the epoch).
    pub fn publish_at(
        &self,
        topic: &str,
        data: impl AsRef<[u8]>,
        ts: Option<u64>,
    ) -> Result<(), PublishError> {
        let ingest_at = Instant::now();
        validate_topic(topic).map_err(PublishError::BadTopic)?;
        let mut scratch = data.as_ref().to_vec();
        simd_json::to_borrowed_value(&mut scratch)
            .map_err(|e| PublishError::InvalidJson(e.to_string()))?;
        let event = Event {
            topic: topic.to_owned(),
            data: data.as_ref().to_vec(),
            ts,
            ingest_at,
        };
        self.tx
            .push_blocking(event)
            .map_err(|_| PublishError::Closed)
    }
}

/// Serves one TCP publisher on the dispatcher core until it disconnects. Every line is one
/// event; a bad line gets an error line back (`{"op":"error","line":N,"code":..,"message":..}`)
/// and the stream goes on.
pub(crate) async fn serve_ingest(dispatcher: Rc<RefCell<Dispatcher>>, mut stream: TcpStream) {
    let max_line = dispatcher.borrow().config().max_line_bytes;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut line_no: u64 = 0;
    let mut skipping = false; // inside a line already reported as too long
    let mut replies: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let ingest_at = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            line_no += 1;
            if skipping {
                skipping = false;
            } else {
                let mut line = &mut buf[start..end];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if line.len() > max_line {
                    error_line(&mut replies, line_no, &PublishError::LineTooLong(max_line));
                } else if !line.iter().all(u8::is_ascii_whitespace) {
                    let result = parse_line(line, ingest_at)
                        .and_then(|event| dispatcher.borrow_mut().publish(event).map(|_| ()));
                    if let Err(e) = result {
                        dispatcher.borrow_mut().stats.rejected_lines += 1;
                        error_line(&mut replies, line_no, &e);
                    }
                }
            }
            start = end + 1;
        }
        buf.drain(..start);
        if buf.len() > max_line {
            if !skipping {
                error_line(
                    &mut replies,
                    line_no + 1,
                    &PublishError::LineTooLong(max_line),
                );
                dispatcher.borrow_mut().stats.rejected_lines += 1;
            }
            skipping = true;
            buf.clear();
        }
        if !replies.is_empty() {
            if stream.write_all(&replies).await.is_err() {
                break;
            }
            replies.clear();
        }
        // A publisher that never pauses would otherwise keep the dispatcher to itself (reads
        // complete at once while data waits): the pumps, the shards' requests and the other
        // publishers get their pass.
        corecast_shards::shard::let_the_executor_run().await;
    }
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

    fn parse(s: &str) -> Result<Event, PublishError> {
        parse_line(&mut s.as_bytes().to_vec(), Instant::now())
    }

    #[test]
    fn accepts_an_event_and_compacts_data() {
        let e = parse(r#"{"topic":"book.BTCUSD","data":{ "b" : [1, 2] },"ts":17}"#).unwrap();
        assert_eq!(e.topic, "book.BTCUSD");
        assert_eq!(e.data, br#"{"b":[1,2]}"#);
        assert_eq!(e.ts, Some(17));
    }

    #[test]
    fn refuses_bad_events_with_codes() {
        assert_eq!(parse("not json").unwrap_err().code(), "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code(), "not_an_object");
        assert_eq!(parse(r#"{"data":1}"#).unwrap_err().code(), "missing_topic");
        assert_eq!(
            parse(r#"{"topic":"a b","data":1}"#).unwrap_err().code(),
            "bad_topic"
        );
        assert_eq!(
            parse(r#"{"topic":"a"}"#).unwrap_err().code(),
            "missing_data"
        );
        assert_eq!(
            parse(r#"{"topic":"a","data":1,"ts":-5}"#)
                .unwrap_err()
                .code(),
            "bad_ts"
        );
        assert_eq!(
            parse(r#"{"topic":"a","data":1,"ts":"x"}"#)
                .unwrap_err()
                .code(),
            "bad_ts"
        );
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
