//! Clients never take from publishers or from other clients what they need: a subscription
//! to a topic nobody has published costs only its own connection's budget, the dispatcher's
//! topic table grows only by publishing, and patterns have a per-connection limit.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use simd_json::prelude::*;

/// Subscribes `ws` to `n` made-up topic names, 50 per request; every request is acked.
fn subscribe_made_up(ws: &mut Client, tag: &str, n: usize) {
    for chunk in 0..n / 50 {
        let names: Vec<String> = (0..50)
            .map(|i| format!("\"junk.{tag}.{chunk}.{i}\""))
            .collect();
        let ack = subscribe_entries(ws, chunk as u64, &names);
        assert_eq!(ack["topics"].as_array().unwrap().len(), 50);
    }
}

#[test]
fn made_up_subscriptions_never_fill_the_topic_table() {
    let server = start(|c| {
        c.dispatcher.max_topics = 20;
        c.shard.max_subscriptions = 400;
        c.shard.rate_limit_burst = 1000;
    });
    let mut peer = Bystander::new(&server, "by.stander");
    peer.check(&server, 10); // the bystander's topic is one of the 20
                             // Ten clients, 400 made-up names each: 4000 names, two hundred times the topic table.
    let mut hogs: Vec<Client> = (0..10).map(|_| connect(&server.url)).collect();
    for (i, hog) in hogs.iter_mut().enumerate() {
        subscribe_made_up(hog, &i.to_string(), 400);
    }
    // Past its own budget a client is refused, and only that client.
    send(
        &mut hogs[0],
        r#"{"op":"subscribe","id":77,"topics":["one.more"]}"#,
    );
    let e = next_op(&mut hogs[0], "error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("too_many_subscriptions"), Some(77))
    );
    // A made-up name that is later published is delivered to its subscribers.
    server.publish("junk.3.2.7", 1);
    let m = next_op(&mut hogs[3], "msg");
    assert_eq!(m["topic"].as_str(), Some("junk.3.2.7"));
    // A publisher's new topics are taken up to the table's size...
    let mut other = connect(&server.url);
    let ack = subscribe(&mut other, 1, &["fresh.a"]);
    assert_eq!(ack_seq(&ack, "fresh.a"), 0);
    let mut publisher = TcpStream::connect(server.ingest).unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = String::new();
    for i in 0..17 {
        lines.push_str(&format!("{{\"topic\":\"fresh.t{i}\",\"data\":{i}}}\n"));
    }
    lines.push_str("{\"topic\":\"fresh.a\",\"data\":1}\n");
    publisher.write_all(lines.as_bytes()).unwrap();
    let m = next_op(&mut other, "msg");
    assert_eq!(
        (m["topic"].as_str(), m["seq"].as_u64()),
        (Some("fresh.a"), Some(1))
    );
    // The 21st published topic (on the 20th line) is the publisher's own limit, announced.
    publisher
        .write_all(b"{\"topic\":\"fresh.over\",\"data\":1}\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(publisher).read_line(&mut reply).unwrap();
    let mut b = reply.trim_end().as_bytes().to_vec();
    let v = simd_json::to_owned_value(&mut b).unwrap();
    assert_eq!(
        (v["line"].as_u64(), v["code"].as_str()),
        (Some(19), Some("topic_limit"))
    );
    peer.check(&server, 100);
}

#[test]
fn patterns_have_a_per_connection_limit() {
    let server = start(|c| c.shard.max_patterns = 3);
    let mut peer = Bystander::new(&server, "by.stander");
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["p1.*", "p2.*", "exact.topic"]);
    send(
        &mut ws,
        r#"{"op":"subscribe","id":2,"topics":["p3.*","p4.*"]}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("too_many_patterns"), Some(2))
    );
    assert!(
        e["message"].as_str().unwrap().contains("limit of 3"),
        "{e:?}"
    );
    // Nothing of the refused request was taken: one more pattern still fits.
    subscribe(&mut ws, 3, &["p3.*"]);
    // Another connection has its own budget.
    let mut other = connect(&server.url);
    subscribe(&mut other, 1, &["q1.*", "q2.*", "q3.*"]);
    server.publish("p3.x", 1);
    assert_eq!(next_op(&mut ws, "msg")["topic"].as_str(), Some("p3.x"));
    peer.check(&server, 100);
}
