//! What each fuzz target asserts about one input. Shared by the targets (`cargo fuzz run`)
//! and by the stable replay test (`tests/fuzz_corpus_replay.rs`), so the committed corpus and
//! regression inputs are held to the same checks in CI. Each check calls one public function.

#![allow(dead_code)]

use corecast::publisher::{parse_stream, LineParser, PublishError};
use corecast_shards::handshake::{self, Parsed};
use corecast_shards::inbound::events_of;
use corecast_shards::protocol::{parse_request, Request};
use simd_json::prelude::*;

/// Cuts `body` into chunks whose sizes (1 to 17 bytes) follow from `seed`: the way TCP might
/// split the same bytes.
pub fn split(seed: u8, body: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut k = usize::from(seed);
    let mut rest = body;
    while !rest.is_empty() {
        let n = (1 + k % 17).min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
        k = k.wrapping_mul(31).wrapping_add(7);
    }
    chunks
}

/// The upgrade parser never panics, consumes no more than it was given, and answers with a
/// status the documentation lists.
pub fn upgrade(data: &[u8]) {
    match handshake::parse(data, "/ws") {
        Parsed::Partial => assert!(data.len() < handshake::MAX_REQUEST_HEAD),
        Parsed::Upgrade {
            response, consumed, ..
        } => {
            assert!(consumed <= data.len());
            assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        }
        Parsed::Reject(r) => {
            assert!(matches!(r.status, 400 | 404 | 405 | 426 | 431), "{r:?}");
            assert!(r.response().ends_with(b"\n"));
        }
    }
}

/// The reassembler gives the same events and the same fault however the bytes are split
/// (first byte: the split seed).
pub fn reassembler(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let max = 1024;
    let whole = events_of(&[body], max);
    let pieces = events_of(&split(seed, body), max);
    assert_eq!(whole, pieces);
    if let Some(f) = &whole.1 {
        assert!(matches!(f.code, 1002 | 1007 | 1009), "{f:?}");
    }
}

/// The request parser never panics and never hands out a request its limits forbid.
pub fn request(data: &[u8]) {
    let mut text = data.to_vec();
    match parse_request(&mut text, 100) {
        Ok(Request::Subscribe { topics, .. }) => {
            assert!((1..=100).contains(&topics.len()));
        }
        Ok(Request::Unsubscribe { topics, .. }) => {
            assert!((1..=100).contains(&topics.len()));
        }
        Ok(
            Request::Ping { .. }
            | Request::Resync { .. }
            | Request::Auth { .. }
            | Request::AdminAuth { .. },
        ) => {}
        Err(r) => assert!(!r.code.is_empty() && !r.message.is_empty()),
    }
}

type Outcome = (u64, Result<(String, Vec<u8>, Option<u64>), &'static str>);

fn outcomes(chunks: &[&[u8]]) -> Vec<Outcome> {
    parse_stream(chunks, 64)
        .into_iter()
        .map(|(no, r)| {
            (
                no,
                r.map(|e| (e.topic, e.data, e.ts))
                    .map_err(|e: PublishError| e.code()),
            )
        })
        .collect()
}

/// The publisher's line splitter and parser give every line the same outcome however the
/// stream is split (first byte: the split seed), and number lines in order.
pub fn publisher_lines(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = outcomes(&[body]);
    assert_eq!(whole, outcomes(&split(seed, body)));
    assert!(whole.windows(2).all(|w| w[0].0 < w[1].0));
    let mut parser = LineParser::default();
    for line in body.split(|&b| b == b'\n') {
        agrees_with_a_value_tree(&mut parser, line.strip_suffix(b"\r").unwrap_or(line));
    }
}

/// The line parser (a tape and a structural scan, `data` kept as sent) against simd-json's
/// value tree of the same line: the same verdict on JSON, and an accepted line's topic, `ts`
/// and `data` (as a value) are the tree's.
fn agrees_with_a_value_tree(parser: &mut LineParser, line: &[u8]) {
    let tree = simd_json::to_owned_value(&mut line.to_vec());
    match parser.parse(line) {
        Err(PublishError::InvalidJson(why)) => assert!(tree.is_err(), "valid JSON refused: {why}"),
        Err(PublishError::NotAnObject) => assert!(tree.is_ok_and(|t| !t.is_object())),
        Err(_) => assert!(tree.is_ok_and(|t| t.is_object())),
        Ok(p) => {
            let tree = tree.expect("an accepted line is valid JSON");
            assert_eq!(tree.get("topic").and_then(|t| t.as_str()), Some(p.topic));
            assert_eq!(tree.get("ts").map(|t| t.as_u64()), p.ts.map(Some));
            let data = simd_json::to_owned_value(&mut p.data.to_vec()).expect("data is JSON");
            assert_eq!(tree.get("data"), Some(&data));
        }
    }
}
