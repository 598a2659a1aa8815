//! The first step of the data path: publishers hand events to the dispatcher.
//!
//! Two ways in: the TCP ingest (newline-delimited JSON, served on the dispatcher core by
//! [`crate::ingest`], each line split out by [`Lines`] and validated with simd-json by a
//! [`LineParser`]) and the in-process [`Publisher`] handle (any thread).

mod members;

use std::time::Instant;

use simd_json::prelude::*;

use corecast_shards::topic::{is_system, validate_topic, TopicError, SYSTEM_PREFIX};

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
    #[error("topics under \"{SYSTEM_PREFIX}.\" are reserved for the server's own figures")]
    ReservedTopic,
    #[error("\"data\" is missing")]
    MissingData,
    #[error("\"ts\" must be an unsigned integer (microseconds since the Unix epoch)")]
    BadTimestamp,
    #[error("\"{0}\" appears more than once")]
    DuplicateField(&'static str),
    #[error("line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("the dispatcher already tracks its maximum of {0} topics")]
    TopicLimit(usize),
    #[error("\"snapshot\" must be true or false")]
    BadSnapshot,
    #[error("\"snapshot\": true on a topic outside every namespace with snapshots = true")]
    NotSnapshotTopic,
    #[error("a delta of a snapshot topic whose newest snapshot another publisher sent; send a snapshot first")]
    NotOwner,
    #[error("the server is shut down")]
    Closed,
}

/// Every `code` an ingest error line may carry (docs/protocol.md, "Publisher ingest"), in
/// the order the metrics list them; `unauthorized` is a wrong publisher key.
pub const ERROR_CODES: [&str; 15] = [
    "line_too_long",
    "invalid_json",
    "not_an_object",
    "duplicate_field",
    "missing_topic",
    "bad_topic",
    "reserved_topic",
    "missing_data",
    "bad_ts",
    "bad_snapshot",
    "not_snapshot_topic",
    "not_owner",
    "topic_limit",
    "closed",
    "unauthorized",
];

impl PublishError {
    /// The `code` field of the error line.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::InvalidJson(_) => "invalid_json",
            PublishError::NotAnObject => "not_an_object",
            PublishError::MissingTopic => "missing_topic",
            PublishError::BadTopic(_) => "bad_topic",
            PublishError::ReservedTopic => "reserved_topic",
            PublishError::MissingData => "missing_data",
            PublishError::BadTimestamp => "bad_ts",
            PublishError::DuplicateField(_) => "duplicate_field",
            PublishError::LineTooLong(_) => "line_too_long",
            PublishError::TopicLimit(_) => "topic_limit",
            PublishError::BadSnapshot => "bad_snapshot",
            PublishError::NotSnapshotTopic => "not_snapshot_topic",
            PublishError::NotOwner => "not_owner",
            PublishError::Closed => "closed",
        }
    }
}

/// An event that passed validation, on its way to the dispatcher. Any thread.
#[derive(Debug)]
pub struct Event {
    pub topic: String,
    /// The `data` value's JSON text, byte for byte as the publisher sent it.
    pub data: Vec<u8>,
    /// Publisher timestamp, µs since the Unix epoch; the dispatcher stamps events without one.
    pub ts: Option<u64>,
    /// When the event entered the server.
    pub ingest_at: Instant,
    /// Full state of a snapshot topic (`"snapshot": true`), delivered as a `snapshot` frame.
    pub snapshot: bool,
    /// The server's own figures, on a reserved `_sys.` topic ([`Publisher::publish_system`]).
    pub(crate) system: bool,
}

/// One valid ingest line, borrowed from the line (`data`) and from the parser (`topic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The topic, unescaped and validated ([`validate_topic`]).
    pub topic: &'a str,
    /// The `data` value's JSON text exactly as the line holds it (whitespace and escapes
    /// included), so a publisher's bytes reach clients unchanged.
    pub data: &'a [u8],
    /// Publisher timestamp, µs since the Unix epoch.
    pub ts: Option<u64>,
    /// `"snapshot": true`: full state of a snapshot topic.
    pub snapshot: bool,
}

impl Parsed<'_> {
    /// The owned event, as the dispatcher's input ring carries it.
    pub fn to_event(&self, ingest_at: Instant) -> Event {
        Event {
            topic: self.topic.to_owned(),
            data: self.data.to_vec(),
            ts: self.ts,
            ingest_at,
            snapshot: self.snapshot,
            system: false,
        }
    }
}

/// Validates ingest lines (`{"topic":..., "data":..., "ts":...}`), one at a time, reusing its
/// buffers: once warm it allocates nothing per line. One per ingest connection; not `Send`
/// (it holds simd-json's parse buffers).
///
/// A line is checked in this order, each failure a [`PublishError`] with its `code`:
/// valid JSON (RFC 8259, by simd-json: `invalid_json`), an object (`not_an_object`), no key of
/// `topic`, `data` or `ts` twice (`duplicate_field`), `topic` a string (`missing_topic`), a
/// valid name (`bad_topic`) and not a reserved one (`_sys.`: `reserved_topic`), `data` present (`missing_data`), `ts` absent or an unsigned
/// integer (`bad_ts`), `snapshot` absent or a boolean (`bad_snapshot`; whether the topic may
/// take snapshots is the dispatcher's check, `not_snapshot_topic`). Other members are ignored. Cost: one copy of the line, simd-json's tape
/// (no value tree), and one structural scan to find `data`'s bytes; `data` is never parsed
/// into values or written out again.
#[derive(Default)]
pub struct LineParser {
    /// The copy simd-json validates in place (it may rewrite escaped strings).
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    /// simd-json's tape, kept empty between lines for its allocation.
    tape: Option<simd_json::Tape<'static>>,
    /// Byte spans of the line's top-level member values, in order.
    members: Vec<(usize, usize)>,
    /// The last line's topic, unescaped.
    topic: String,
}

impl LineParser {
    /// Validates `line` (without its line terminator) and returns its event's parts.
    pub fn parse<'a>(&'a mut self, line: &'a [u8]) -> Result<Parsed<'a>, PublishError> {
        let LineParser {
            scratch,
            buffers,
            tape: kept,
            members,
            topic,
        } = self;
        // Spans from the untouched line first: validation may rewrite the copy's strings.
        let scanned = members::member_values(line, members);
        scratch.clear();
        scratch.extend_from_slice(line);
        let mut tape = match kept.take() {
            Some(t) => t.reset(),
            None => simd_json::Tape::null().reset(),
        };
        let found = match simd_json::fill_tape(scratch, buffers, &mut tape) {
            Ok(()) => fields(&tape, topic),
            Err(e) => Err(PublishError::InvalidJson(e.to_string())),
        };
        *kept = Some(tape.reset());
        let (data_member, ts, snapshot) = found?;
        // On valid JSON the scan finds every member simd-json does.
        let Some(&(start, end)) = members.get(data_member).filter(|_| scanned) else {
            return Err(PublishError::InvalidJson(
                "could not locate \"data\" in the line".into(),
            ));
        };
        Ok(Parsed {
            topic,
            data: &line[start..end],
            ts,
            snapshot,
        })
    }
}

/// Reads the validated line's fields from its tape: copies the topic into `topic` and returns
/// the index of the `data` member among the object's members, `ts` and `snapshot`.
fn fields(
    tape: &simd_json::Tape<'_>,
    topic: &mut String,
) -> Result<(usize, Option<u64>, bool), PublishError> {
    let value = tape.as_value();
    let obj = value.as_object().ok_or(PublishError::NotAnObject)?;
    let (mut topic_value, mut data, mut ts_value, mut snapshot_value) = (None, None, None, None);
    for (k, (key, v)) in obj.iter().enumerate() {
        let (slot, name) = match key {
            "topic" => (&mut topic_value, "topic"),
            "data" => {
                if data.replace(k).is_some() {
                    return Err(PublishError::DuplicateField("data"));
                }
                continue;
            }
            "ts" => (&mut ts_value, "ts"),
            "snapshot" => (&mut snapshot_value, "snapshot"),
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(PublishError::DuplicateField(name));
        }
    }
    let topic_value = topic_value.ok_or(PublishError::MissingTopic)?;
    let name = topic_value.as_str().ok_or(PublishError::MissingTopic)?;
    validate_topic(name).map_err(PublishError::BadTopic)?;
    if is_system(name) {
        return Err(PublishError::ReservedTopic);
    }
    topic.clear();
    topic.push_str(name);
    let data = data.ok_or(PublishError::MissingData)?;
    let ts = match ts_value {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(PublishError::BadTimestamp)?),
    };
    let snapshot = match snapshot_value {
        None => false,
        Some(v) => v.as_bool().ok_or(PublishError::BadSnapshot)?,
    };
    Ok((data, ts, snapshot))
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
        self.publish_with(topic, data, None, false)
    }

    /// As [`Publisher::publish`], with the publisher's own timestamp (µs since the epoch).
    pub fn publish_at(
        &self,
        topic: &str,
        data: impl AsRef<[u8]>,
        ts: Option<u64>,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, data, ts, false)
    }

    /// Publishes the full state of a snapshot topic (`"snapshot": true` on the ingest):
    /// delivered as a `snapshot` frame, and where new subscribers start. On a topic outside
    /// every snapshot namespace the dispatcher refuses it (`not_snapshot_topic`, counted in
    /// its `rejected_events`; this call cannot see that, as it does not wait for the
    /// dispatcher).
    pub fn publish_snapshot(
        &self,
        topic: &str,
        data: impl AsRef<[u8]>,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, data, None, true)
    }

    /// The one way in: `ts` the publisher's µs since the epoch (or now), `snapshot` the flag.
    pub fn publish_with(
        &self,
        topic: &str,
        data: impl AsRef<[u8]>,
        ts: Option<u64>,
        snapshot: bool,
    ) -> Result<(), PublishError> {
        let ingest_at = Instant::now();
        validate_topic(topic).map_err(PublishError::BadTopic)?;
        if is_system(topic) {
            return Err(PublishError::ReservedTopic);
        }
        let mut scratch = data.as_ref().to_vec();
        simd_json::to_borrowed_value(&mut scratch)
            .map_err(|e| PublishError::InvalidJson(e.to_string()))?;
        let event = Event {
            topic: topic.to_owned(),
            data: data.as_ref().to_vec(),
            ts,
            ingest_at,
            snapshot,
            system: false,
        };
        self.tx
            .push_blocking(event)
            .map_err(|_| PublishError::Closed)
    }

    /// Publishes the server's own figures on a reserved `_sys.` topic (the admin thread's
    /// `_sys.stats`). Never blocks: `false` when the dispatcher's input queue is full or
    /// closed (the sample is skipped; the next one follows a second later).
    pub(crate) fn publish_system(&self, topic: &str, data: Vec<u8>) -> bool {
        debug_assert!(is_system(topic));
        let event = Event {
            topic: topic.to_owned(),
            data,
            ts: None,
            ingest_at: Instant::now(),
            snapshot: false,
            system: true,
        };
        self.tx.try_push(event).is_ok()
    }
}

/// One line of a publisher's stream, as [`Lines`] hands it out.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line to parse: its bytes without the `\n` or `\r\n` that ended it. Scratch: the
    /// parser may modify it in place.
    Text(&'a mut [u8]),
    /// A line longer than `max_line_bytes` (its bytes were not kept).
    TooLong,
}

/// Splits a publisher's byte stream into lines: shared by the TCP ingest, its fuzz target and
/// tests. Pure, any thread. The outcome of every line is the same however TCP splits the
/// stream, and whether the last line ends with a newline or with the publisher closing.
///
/// Rules (docs/protocol.md, "Publishing"): a line ends at `\n`; one `\r` right before it is
/// dropped. A line's length is its bytes without that terminator; a line longer than
/// `max_line_bytes` is [`Line::TooLong`], reported as soon as that is certain, and its bytes
/// are discarded up to its end. Lines of nothing but whitespace are skipped (they still count
/// in the line numbers, which start at 1). At the end of the stream an unterminated last line
/// is complete like any other.
pub struct Lines {
    /// Bytes of the current, unterminated line (at most `max + 1`: a CR may wait for its LF).
    buf: Vec<u8>,
    /// Number of the current line, from 1.
    line_no: u64,
    /// The current line was already reported too long; its bytes are skipped up to its end.
    skipping: bool,
    max: usize,
}

impl Lines {
    /// Lines begun so far (the current, unterminated one included once it has a byte).
    pub fn count(&self) -> u64 {
        self.line_no - u64::from(self.buf.is_empty() && !self.skipping)
    }

    /// A splitter for lines of at most `max_line_bytes`.
    pub fn new(max_line_bytes: usize) -> Self {
        Lines {
            buf: Vec::new(),
            line_no: 1,
            skipping: false,
            max: max_line_bytes,
        }
    }

    /// Takes the next bytes of the stream and calls `each(line_number, line)` for every line
    /// they complete (or show to be too long), in order. Linear in `bytes`.
    pub fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(u64, Line<'_>)) {
        while !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            bytes = &bytes[part.len() + usize::from(ended)..];
            if !self.skipping {
                self.buf.extend_from_slice(part);
                // Over the limit even if a CR we hold turns out to end the line.
                let held = self.buf.len() - usize::from(!ended && self.buf.last() == Some(&b'\r'));
                if !ended && held > self.max {
                    self.buf = Vec::new();
                    self.skipping = true;
                    each(self.line_no, Line::TooLong);
                }
            }
            if ended {
                self.end_line(&mut each);
            }
        }
    }

    /// The publisher closed its side: an unterminated last line is complete.
    pub fn finish(&mut self, mut each: impl FnMut(u64, Line<'_>)) {
        if !self.skipping && !self.buf.is_empty() {
            self.end_line(&mut each);
        }
    }

    fn end_line(&mut self, each: &mut impl FnMut(u64, Line<'_>)) {
        let no = self.line_no;
        self.line_no += 1;
        if std::mem::take(&mut self.skipping) {
            return;
        }
        let mut line = &mut self.buf[..];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if line.len() > self.max {
            each(no, Line::TooLong);
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            each(no, Line::Text(line));
        }
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
    }
}

/// Feeds `chunks` through [`Lines`] and a [`LineParser`], then ends the stream: every line's
/// number and outcome, in order. What the TCP ingest does, minus the dispatcher; the fuzz
/// target and the tests use it.
pub fn parse_stream(
    chunks: &[&[u8]],
    max_line_bytes: usize,
) -> Vec<(u64, Result<Event, PublishError>)> {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut parser = LineParser::default();
    let mut each = |no: u64, line: Line<'_>| {
        out.push((
            no,
            match line {
                Line::Text(text) => parser.parse(text).map(|p| p.to_event(now)),
                Line::TooLong => Err(PublishError::LineTooLong(max_line_bytes)),
            },
        ))
    };
    let mut lines = Lines::new(max_line_bytes);
    for chunk in chunks {
        lines.feed(chunk, &mut each);
    }
    lines.finish(&mut each);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Event, PublishError> {
        LineParser::default()
            .parse(s.as_bytes())
            .map(|p| p.to_event(Instant::now()))
    }

    #[test]
    fn accepts_an_event_and_keeps_data_byte_for_byte() {
        let e =
            parse(r#" {"topic":"book.BTCUSD","data":{ "b" : [1, 2], "s":"\u00e9\"" } ,"ts":17}"#)
                .unwrap();
        assert_eq!(e.topic, "book.BTCUSD");
        assert_eq!(e.data, br#"{ "b" : [1, 2], "s":"\u00e9\"" }"#);
        assert_eq!(e.ts, Some(17));
        let e = parse(r#"{"ts":1,"data":"x","topic":"b\u002ec"}"#).unwrap();
        assert_eq!((e.topic.as_str(), &e.data[..]), ("b.c", &br#""x""#[..]));
    }

    #[test]
    fn one_parser_keeps_no_state_between_lines() {
        let mut p = LineParser::default();
        let lines = [
            r#"{"topic":"a","data":[1,{"k":"v"}]}"#,
            "{bad",
            r#"{"topic":"long.topic.name","data":"\"quoted\"","ts":5}"#,
            r#"{"data":1}"#,
            r#"{"topic":"a","data":null}"#,
        ];
        let got: Vec<_> = lines
            .iter()
            .map(|l| {
                p.parse(l.as_bytes())
                    .map(|e| (e.topic.to_string(), e.data.to_vec(), e.ts))
                    .map_err(|e| e.code())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                Ok(("a".into(), br#"[1,{"k":"v"}]"#.to_vec(), None)),
                Err("invalid_json"),
                Ok((
                    "long.topic.name".into(),
                    br#""\"quoted\"""#.to_vec(),
                    Some(5)
                )),
                Err("missing_topic"),
                Ok(("a".into(), b"null".to_vec(), None)),
            ]
        );
    }

    #[test]
    fn a_field_named_twice_is_refused() {
        for (line, field) in [
            (r#"{"topic":"a","data":1,"data":2}"#, "data"),
            (r#"{"topic":"a","topic":"b","data":1}"#, "topic"),
            (r#"{"topic":"a","data":1,"ts":1,"ts":2}"#, "ts"),
            (r#"{"topic":"a","d\u0061ta":1,"data":2}"#, "data"),
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e, PublishError::DuplicateField(field), "{line}");
            assert_eq!(e.code(), "duplicate_field");
        }
        assert!(parse(r#"{"topic":"a","data":1,"other":1,"other":2}"#).is_ok());
    }

    #[test]
    fn refuses_bad_events_with_codes() {
        assert_eq!(parse("not json").unwrap_err().code(), "invalid_json");
        assert_eq!(
            parse(r#"{"topic":"a","data":1} x"#).unwrap_err().code(),
            "invalid_json"
        );
        assert_eq!(
            parse(r#"{"topic":"a","data":1,"ts":1.5}"#)
                .unwrap_err()
                .code(),
            "bad_ts"
        );
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

    fn outcomes(chunks: &[&[u8]], max: usize) -> Vec<(u64, Result<String, &'static str>)> {
        parse_stream(chunks, max)
            .into_iter()
            .map(|(no, r)| (no, r.map(|e| e.topic).map_err(|e| e.code())))
            .collect()
    }

    #[test]
    fn the_last_line_at_eof_is_published() {
        let got = outcomes(
            &[b"{\"topic\":\"a\",\"data\":1}\n{\"topic\":\"b\",\"data\":2}"],
            100,
        );
        assert_eq!(got, vec![(1, Ok("a".into())), (2, Ok("b".into()))]);
        let bad_last = outcomes(&[b"\n\n{\"topic\":\"b\"}"], 100);
        assert_eq!(bad_last, vec![(3, Err("missing_data"))]);
    }

    #[test]
    fn splits_never_change_the_outcome() {
        let line = b"{\"topic\":\"abc\",\"data\":[1,2]}";
        let max = line.len();
        let mut stream = Vec::new();
        for ending in [&b"\r\n"[..], b"\n", b"\r\n", b""] {
            stream.extend_from_slice(line);
            stream.extend_from_slice(ending);
        }
        let whole = outcomes(&[&stream], max);
        assert_eq!(whole.len(), 4);
        assert!(whole.iter().all(|(_, r)| r.is_ok()), "{whole:?}");
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(outcomes(&[a, b], max), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(outcomes(&bytes, max), whole);
    }

    #[test]
    fn lines_over_the_limit_are_refused_once_and_skipped() {
        let long = format!("{{\"topic\":\"a\",\"data\":\"{}\"}}", "x".repeat(50));
        let ok = "{\"topic\":\"b\",\"data\":1}";
        let stream = format!("{long}\r\n{ok}\n{long}");
        let whole = outcomes(&[stream.as_bytes()], 30);
        assert_eq!(
            whole,
            vec![
                (1, Err("line_too_long")),
                (2, Ok("b".into())),
                (3, Err("line_too_long"))
            ]
        );
        let bytes: Vec<&[u8]> = stream.as_bytes().chunks(7).collect();
        assert_eq!(outcomes(&bytes, 30), whole);
    }
}
