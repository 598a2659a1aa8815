//! The publisher line protocol: a line's outcome does not depend on whether it ends with a
//! newline or with the publisher closing, nor on how TCP splits it. A subscriber of another
//! topic loses nothing.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use simd_json::prelude::*;

/// Writes `parts` to the ingest as separate segments (a pause between them), closes the
/// write side, and returns every error line the server sent back.
fn publish_parts(server: &TestServer, parts: &[&[u8]]) -> Vec<(u64, String)> {
    let mut p = TcpStream::connect(server.ingest).unwrap();
    p.set_nodelay(true).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for part in parts {
        p.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    p.shutdown(Shutdown::Write).unwrap();
    let mut replies = String::new();
    p.read_to_string(&mut replies).unwrap();
    replies
        .lines()
        .map(|l| {
            let mut b = l.as_bytes().to_vec();
            let v = simd_json::to_owned_value(&mut b).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn line(topic: &str, n: u64) -> String {
    format!("{{\"topic\":\"{topic}\",\"data\":{n}}}")
}

#[test]
fn a_last_line_without_newline_is_published_when_the_publisher_closes() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["eof.a"]);
    let stream = format!("{}\n{}", line("eof.a", 1), line("eof.a", 2));
    assert_eq!(publish_parts(&server, &[stream.as_bytes()]), vec![]);
    expect_contiguous(&mut ws, "eof.a", 1, 2);
    // A bad last line without a newline still gets its error line.
    let bad = format!("{}\r\n{{\"topic\":\"eof.a\"}}", line("eof.a", 3));
    assert_eq!(
        publish_parts(&server, &[bad.as_bytes()]),
        vec![(2, "missing_data".into())]
    );
    expect_contiguous(&mut ws, "eof.a", 3, 1);
    peer.check(&server, 100);
}

#[test]
fn how_tcp_splits_a_line_never_changes_its_outcome() {
    let max = 64;
    let server = start(|c| c.dispatcher.max_line_bytes = max);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["split.a"]);
    // Exactly max_line_bytes, padded with spaces inside the JSON.
    let exact = format!(
        "{{\"topic\":\"split.a\",\"data\":1{}}}",
        " ".repeat(max - 28)
    );
    assert_eq!(exact.len(), max);
    let over = format!(
        "{{\"topic\":\"split.a\",\"data\":2{}}}",
        " ".repeat(max - 27)
    );
    assert_eq!(over.len(), max + 1);
    // CR and LF in different segments; the line at the limit with its CR pending alone.
    let errors = publish_parts(
        &server,
        &[
            exact.as_bytes(),
            b"\r",
            b"\n",
            exact.as_bytes(),
            b"\r",
            b"\n",
            over.as_bytes(),
            b"\r\n",
            exact.as_bytes(),
        ],
    );
    assert_eq!(errors, vec![(3, "line_too_long".into())]);
    let first = next_op(&mut ws, "msg");
    assert_eq!(first["seq"].as_u64(), Some(1));
    expect_contiguous(&mut ws, "split.a", 2, 2);
    // Over the limit without any newline, closed: one error, nothing published.
    assert_eq!(
        publish_parts(&server, &[over.as_bytes()]),
        vec![(1, "line_too_long".into())]
    );
    // The same line byte by byte: the same outcome.
    let bytes = format!("{exact}\r\n");
    let parts: Vec<&[u8]> = bytes.as_bytes().chunks(1).collect();
    assert_eq!(publish_parts(&server, &parts), vec![]);
    expect_contiguous(&mut ws, "split.a", 4, 1);
    peer.check(&server, 100);
}
