//! Recovery over real sockets, with tungstenite clients: epochs in every ack, exact resume,
//! resume past history, a wrong epoch, a restart, snapshot topics (snapshot then deltas, a
//! late joiner, a joiner with no snapshot yet), resync, bad requests, two resumes on one
//! connection, and a resume while the publisher runs flat out (docs/protocol.md, "Recovery").

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use corecast::config::Config;
use corecast_shards::namespace::Namespace;
use simd_json::prelude::*;
use simd_json::OwnedValue;

/// A `book.` namespace of snapshot topics, history bounded to `history` messages.
fn books(c: &mut Config, history: Option<usize>) {
    namespace(c, "book.", true, history);
}

/// Adds a namespace of `prefix`.
fn namespace(c: &mut Config, prefix: &str, snapshots: bool, history: Option<usize>) {
    c.namespaces.push(Namespace {
        prefix: prefix.into(),
        snapshots,
        gap_policy: None,
        history_max_messages: history,
        history_max_age_ms: None,
    });
}

fn entry<'a>(ack: &'a OwnedValue, topic: &str) -> &'a OwnedValue {
    ack["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"].as_str() == Some(topic))
        .unwrap_or_else(|| panic!("{topic} in {ack:?}"))
}

fn epoch_of(ack: &OwnedValue, topic: &str) -> String {
    entry(ack, topic)["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("an epoch for {topic}: {ack:?}"))
        .to_string()
}

/// Sends a subscribe with one `since` per (topic, epoch, seq) and returns its ack.
fn resume(ws: &mut Client, id: u64, since: &[(&str, &str, u64)]) -> OwnedValue {
    let list: Vec<String> = since
        .iter()
        .map(|(t, e, s)| format!(r#"{{"topic":"{t}","since":{{"epoch":"{e}","seq":{s}}}}}"#))
        .collect();
    subscribe_entries(ws, id, &list)
}

/// The next data frame (`msg` or `snapshot`) as (op, topic, seq).
fn next_data(ws: &mut Client) -> (String, String, u64) {
    loop {
        let v = next_json(ws);
        match v["op"].as_str() {
            Some(op @ ("msg" | "snapshot")) => {
                return (
                    op.to_string(),
                    v["topic"].as_str().unwrap().to_string(),
                    v["seq"].as_u64().unwrap(),
                )
            }
            _ => continue,
        }
    }
}

#[test]
fn every_ack_entry_carries_the_epoch_and_where_data_starts() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["trades.A", "trades.*"]);
    let e = entry(&ack, "trades.A");
    assert_eq!(e["seq"].as_u64(), Some(0), "nothing published yet: {ack:?}");
    assert_eq!(e["start"].as_str(), Some("next"));
    let epoch = epoch_of(&ack, "trades.A");
    assert!(epoch.len() >= 16, "at least 64 bits: {epoch}");
    assert!(
        entry(&ack, "trades.*").get("epoch").is_none(),
        "a pattern has no epoch"
    );
    assert!(e.get("recovered").is_none(), "no since, no recovered");
    // A second server has another epoch.
    let other = start(|_| {});
    let mut ws2 = connect(&other.url);
    let ack2 = subscribe(&mut ws2, 1, &["trades.A"]);
    assert_ne!(epoch_of(&ack2, "trades.A"), epoch);
}

#[test]
fn a_resume_gets_exactly_what_it_missed_then_the_live_stream() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["t.resume"]);
    let epoch = epoch_of(&ack, "t.resume");
    server.publish("t.resume", 5);
    expect_contiguous(&mut ws, "t.resume", 1, 5);
    drop(ws);
    // Missed while away: 6..=15.
    server.publish_settled("t.resume", 10);
    let mut back = connect(&server.url);
    let ack = resume(&mut back, 2, &[("t.resume", &epoch, 5)]);
    let e = entry(&ack, "t.resume");
    assert_eq!(e["recovered"].as_bool(), Some(true), "{ack:?}");
    assert_eq!(e["seq"].as_u64(), Some(5));
    assert_eq!(e["start"].as_str(), Some("next"));
    expect_contiguous(&mut back, "t.resume", 6, 10);
    server.publish("t.resume", 3);
    expect_contiguous(&mut back, "t.resume", 16, 3);
    // Nothing missed: recovered, and the next frame is the next live message.
    let mut again = connect(&server.url);
    let ack = resume(&mut again, 3, &[("t.resume", &epoch, 18)]);
    assert_eq!(entry(&ack, "t.resume")["recovered"].as_bool(), Some(true));
    server.publish("t.resume", 1);
    expect_contiguous(&mut again, "t.resume", 19, 1);
}

#[test]
fn a_resume_past_history_a_wrong_epoch_or_a_future_seq_is_not_recovered() {
    let server = start(|c| namespace(c, "short.", false, Some(5)));
    let mut ws = connect(&server.url);
    let epoch = epoch_of(&subscribe(&mut ws, 1, &["short.t"]), "short.t");
    server.publish_settled("short.t", 20); // 16..=20 held
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 2, &[("short.t", &epoch, 3)]);
    let e = entry(&ack, "short.t");
    assert_eq!(
        e["recovered"].as_bool(),
        Some(false),
        "past the 5 held: {ack:?}"
    );
    assert_eq!(e["seq"].as_u64(), Some(20), "the current head");
    assert_eq!(e["epoch"].as_str(), Some(epoch.as_str()));
    assert_eq!(e["start"].as_str(), Some("next"));
    server.publish("short.t", 1); // 21; 17..=21 held
    assert_eq!(next_data(&mut c), ("msg".into(), "short.t".into(), 21));
    // Within what is held: recovered.
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 3, &[("short.t", &epoch, 16)]);
    assert_eq!(
        entry(&ack, "short.t")["recovered"].as_bool(),
        Some(true),
        "{ack:?}"
    );
    expect_contiguous(&mut c, "short.t", 17, 5);
    // Another epoch, a sequence ahead of the head, one just past what is held.
    for (e, s, why) in [
        ("0000000000000000", 18, "another epoch"),
        (epoch.as_str(), 99, "ahead of the head"),
        (epoch.as_str(), 15, "16 is no longer held"),
    ] {
        let mut c = connect(&server.url);
        let ack = resume(&mut c, 5, &[("short.t", e, s)]);
        let x = entry(&ack, "short.t");
        assert_eq!(x["recovered"].as_bool(), Some(false), "{why}: {ack:?}");
        assert_eq!(x["seq"].as_u64(), Some(21), "{why}");
    }
}

#[test]
fn after_a_restart_the_epoch_is_new_and_a_resume_is_not_recovered() {
    let mut server = start(|_| {});
    let mut ws = connect(&server.url);
    let epoch = epoch_of(&subscribe(&mut ws, 1, &["t.r"]), "t.r");
    server.publish_settled("t.r", 3);
    assert!(server.shutdown());
    drop(ws);
    let restarted = start(|_| {});
    let mut c = connect(&restarted.url);
    let ack = resume(&mut c, 1, &[("t.r", &epoch, 3)]);
    let e = entry(&ack, "t.r");
    assert_eq!(e["recovered"].as_bool(), Some(false), "{ack:?}");
    assert_ne!(e["epoch"].as_str(), Some(epoch.as_str()));
    assert_eq!(e["seq"].as_u64(), Some(0), "a new epoch restarts seq");
}

#[test]
fn two_resumes_on_one_connection_recover_independently() {
    let server = start(|c| namespace(c, "tiny.", false, Some(2)));
    let mut ws = connect(&server.url);
    let epoch = epoch_of(&subscribe(&mut ws, 1, &["a.x", "tiny.y"]), "a.x");
    server.publish_settled("a.x", 6);
    server.publish_settled("tiny.y", 6);
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 2, &[("a.x", &epoch, 2), ("tiny.y", &epoch, 2)]);
    assert_eq!(entry(&ack, "a.x")["recovered"].as_bool(), Some(true));
    assert_eq!(entry(&ack, "tiny.y")["recovered"].as_bool(), Some(false));
    assert_eq!(entry(&ack, "tiny.y")["seq"].as_u64(), Some(6));
    expect_contiguous(&mut c, "a.x", 3, 4);
    server.publish("tiny.y", 1);
    let (_, topic, seq) = next_data(&mut c);
    assert_eq!((topic.as_str(), seq), ("tiny.y", 7));
}

#[test]
fn since_on_a_pattern_and_resync_of_a_stream_topic_are_refused() {
    let server = start(|_| {});
    let mut ws = connect(&server.url);
    send(
        &mut ws,
        r#"{"op":"subscribe","id":1,"topics":[{"topic":"a.*","since":{"epoch":"x","seq":1}}]}"#,
    );
    let err = next_op(&mut ws, "error");
    assert_eq!(err["code"].as_str(), Some("bad_request"), "{err:?}");
    assert_eq!(err["id"].as_u64(), Some(1));
    subscribe(&mut ws, 2, &["a.b"]);
    send(&mut ws, r#"{"op":"resync","id":3,"topic":"a.b"}"#);
    let err = next_op(&mut ws, "error");
    assert_eq!(err["code"].as_str(), Some("no_snapshot"), "{err:?}");
    send(&mut ws, r#"{"op":"resync","id":4}"#);
    let err = next_op(&mut ws, "error");
    assert_eq!(err["code"].as_str(), Some("bad_request"), "{err:?}");
    // A resume of a topic a pattern of the connection delivers could repeat what it sent.
    subscribe(&mut ws, 5, &["p.*"]);
    send(
        &mut ws,
        r#"{"op":"subscribe","id":6,"topics":[{"topic":"p.x","since":{"epoch":"x","seq":1}}]}"#,
    );
    let err = next_op(&mut ws, "error");
    assert_eq!(err["code"].as_str(), Some("bad_request"), "{err:?}");
    assert_eq!(err["id"].as_u64(), Some(6));
    assert!(err["message"].as_str().unwrap().contains("p.*"), "{err:?}");
}

#[test]
fn a_snapshot_topic_starts_from_the_newest_snapshot_then_its_deltas() {
    let server = start(|c| books(c, None));
    let mut first = connect(&server.url);
    subscribe(&mut first, 1, &["book.A"]);
    let p = &server.publisher;
    p.publish("book.A", r#"{"d":1}"#).unwrap(); // a delta before any snapshot
    p.publish_snapshot("book.A", r#"{"s":2}"#).unwrap();
    p.publish("book.A", r#"{"d":3}"#).unwrap();
    p.publish_snapshot("book.A", r#"{"s":4}"#).unwrap();
    p.publish("book.A", r#"{"d":5}"#).unwrap();
    p.publish("book.A", r#"{"d":6}"#).unwrap();
    // The first subscriber waited (no snapshot when it came), so its stream starts at seq 2.
    assert_eq!(
        next_data(&mut first),
        ("snapshot".into(), "book.A".into(), 2)
    );
    assert_eq!(next_data(&mut first), ("msg".into(), "book.A".into(), 3));
    assert_eq!(
        next_data(&mut first),
        ("snapshot".into(), "book.A".into(), 4)
    );
    // A late joiner: the newest snapshot (4), then 5, 6, then live.
    let mut late = connect(&server.url);
    let ack = subscribe(&mut late, 1, &["book.A"]);
    let e = entry(&ack, "book.A");
    assert_eq!(e["start"].as_str(), Some("snapshot"), "{ack:?}");
    assert_eq!(e["seq"].as_u64(), Some(6));
    assert!(e.get("waiting").is_none(), "{ack:?}");
    let snap = next_json(&mut late);
    assert_eq!(snap["op"].as_str(), Some("snapshot"), "{snap:?}");
    assert_eq!(snap["seq"].as_u64(), Some(4));
    assert_eq!(snap["epoch"].as_str(), e["epoch"].as_str());
    assert_eq!(snap["data"]["s"].as_u64(), Some(4));
    assert_eq!(next_data(&mut late), ("msg".into(), "book.A".into(), 5));
    assert_eq!(next_data(&mut late), ("msg".into(), "book.A".into(), 6));
    p.publish("book.A", r#"{"d":7}"#).unwrap();
    assert_eq!(next_data(&mut late), ("msg".into(), "book.A".into(), 7));
}

#[test]
fn a_joiner_with_no_snapshot_held_waits_and_gets_no_delta_before_it() {
    let server = start(|c| books(c, None));
    // Deltas only: no snapshot in this epoch. (The in-process queue is in order: once a
    // later message on another topic is delivered, these are sequenced.)
    server.publish("book.W", 3);
    server.publish_settled("settle.W", 1);
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["book.W"]);
    let e = entry(&ack, "book.W");
    assert_eq!(e["start"].as_str(), Some("snapshot"));
    assert_eq!(e["waiting"].as_bool(), Some(true), "{ack:?}");
    assert_eq!(e["seq"].as_u64(), Some(3));
    server.publish("book.W", 2); // 4, 5: deltas the waiter cannot apply
    server
        .publisher
        .publish_snapshot("book.W", r#"{"full":true}"#)
        .unwrap(); // 6
    server.publish("book.W", 1); // 7
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.W".into(), 6));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.W".into(), 7));
}

#[test]
fn resync_purges_and_starts_over_from_the_snapshot() {
    let server = start(|c| books(c, None));
    let p = &server.publisher;
    p.publish_snapshot("book.R", r#"{"s":1}"#).unwrap();
    server.publish_settled("book.R", 2); // 2, 3
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["book.R"]);
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.R".into(), 1));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.R".into(), 2));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.R".into(), 3));
    send(&mut ws, r#"{"op":"resync","id":7,"topic":"book.R"}"#);
    let ack = next_op(&mut ws, "ack");
    assert_eq!(ack["id"].as_u64(), Some(7));
    let e = entry(&ack, "book.R");
    assert_eq!(e["start"].as_str(), Some("snapshot"), "{ack:?}");
    assert_eq!(e["seq"].as_u64(), Some(3));
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.R".into(), 1));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.R".into(), 2));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.R".into(), 3));
    p.publish("book.R", "4").unwrap();
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.R".into(), 4));
}

#[test]
fn a_snapshot_flag_on_a_stream_topic_is_refused_with_an_error_line() {
    let server = start(|c| books(c, None));
    let mut publisher = TcpStream::connect(server.ingest).unwrap();
    publisher
        .write_all(
            b"{\"topic\":\"trades.X\",\"data\":1,\"snapshot\":true}\n\
              {\"topic\":\"book.X\",\"data\":1,\"snapshot\":\"yes\"}\n\
              {\"topic\":\"book.X\",\"data\":1,\"snapshot\":true}\n",
        )
        .unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = BufReader::new(publisher.try_clone().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"line\":1"), "{first}");
    assert!(first.contains("not_snapshot_topic"), "{first}");
    let second = lines.next().unwrap().unwrap();
    assert!(second.contains("\"line\":2"), "{second}");
    assert!(second.contains("bad_snapshot"), "{second}");
    // The third was taken: a subscriber starts from it.
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["book.X"]);
    assert_eq!(entry(&ack, "book.X")["seq"].as_u64(), Some(1), "{ack:?}");
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.X".into(), 1));
}

#[test]
fn a_resume_while_the_publisher_runs_flat_out_is_contiguous_across_replay_and_live() {
    // Queues deep enough that the reader, not drop-oldest, sets the pace: this checks the
    // seam between replay and live, not backpressure.
    let server = start(|c| {
        c.shard.queue_max_messages = 1 << 20;
        c.shard.queue_max_bytes = 1 << 30;
    });
    let mut ws = connect(&server.url);
    let epoch = epoch_of(&subscribe(&mut ws, 1, &["t.flat"]), "t.flat");
    server.publish_settled("t.flat", 500);
    let publisher = server.publisher.clone();
    let flat_out = std::thread::spawn(move || {
        for i in 0..20_000u32 {
            publisher.publish("t.flat", format!("{i}")).unwrap();
        }
    });
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 2, &[("t.flat", &epoch, 100)]);
    assert_eq!(
        entry(&ack, "t.flat")["recovered"].as_bool(),
        Some(true),
        "{ack:?}"
    );
    // 101..=20,500 in order, replayed then live, none missing or twice.
    expect_contiguous(&mut c, "t.flat", 101, 20_400);
    flat_out.join().unwrap();
}

/// A server whose queues hold 8 messages and whose sockets take little, so a client that
/// does not read loses frames to drop-oldest quickly.
fn small_queues(c: &mut Config) {
    c.shard.queue_max_messages = 8;
    c.shard.send_buffer_bytes = 4096;
}

#[test]
fn the_disconnect_gap_policy_closes_a_slow_consumer_with_4002() {
    let server = start(|c| {
        small_queues(c);
        c.namespaces.push(Namespace {
            prefix: "strict.".into(),
            snapshots: false,
            gap_policy: Some(corecast_shards::namespace::GapPolicy::Disconnect),
            history_max_messages: None,
            history_max_age_ms: None,
        });
    });
    let mut slow = connect(&server.url);
    subscribe(&mut slow, 1, &["strict.t"]);
    let mut fine = connect(&server.url);
    subscribe(&mut fine, 1, &["other.t"]);
    let data = format!("\"{}\"", "x".repeat(2000));
    for _ in 0..200 {
        server.publisher.publish("strict.t", data.clone()).unwrap();
    }
    let (code, reason) = expect_close(&mut slow);
    assert_eq!((code, reason.as_str()), (4002, "slow consumer"));
    // A topic of the default policy is untouched.
    server.publish("other.t", 1);
    let (_, topic, seq) = next_data(&mut fine);
    assert_eq!((topic.as_str(), seq), ("other.t", 1));
}

#[test]
fn the_resnapshot_gap_policy_heals_a_slow_readers_book_from_the_snapshot() {
    slow_reader_never_gets_a_delta_it_cannot_apply(None);
}

#[test]
fn the_notice_gap_policy_on_a_snapshot_topic_waits_for_the_next_snapshot() {
    slow_reader_never_gets_a_delta_it_cannot_apply(Some(
        corecast_shards::namespace::GapPolicy::Notice,
    ));
}

/// A slow reader of a snapshot topic (gap policy `policy`, default resnapshot): every gap is
/// followed by a snapshot before any delta, deltas after a snapshot are contiguous, and the
/// stream reaches the head.
fn slow_reader_never_gets_a_delta_it_cannot_apply(
    policy: Option<corecast_shards::namespace::GapPolicy>,
) {
    let server = start(|c| {
        small_queues(c);
        books(c, None);
        c.namespaces[0].gap_policy = policy;
    });
    let p = &server.publisher;
    let mut slow = connect(&server.url);
    subscribe(&mut slow, 1, &["book.S"]);
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    p.publish_snapshot("book.S", &data).unwrap(); // 1
    for _ in 0..300 {
        p.publish("book.S", &data).unwrap(); // 2..=301
    }
    p.publish_snapshot("book.S", &data).unwrap(); // 302
    for _ in 0..20 {
        p.publish("book.S", &data).unwrap(); // 303..=322
    }
    // A last snapshot: under `notice` a reader whose queue dropped frames after 302 waits
    // for the next snapshot, and this is it.
    p.publish_snapshot("book.S", &data).unwrap(); // 323
                                                  // Read it all: every gap is followed by a snapshot, and after each snapshot the deltas
                                                  // are contiguous; the stream ends at the head.
    set_timeout(&slow, Duration::from_secs(10));
    let mut last: Option<u64> = None;
    let (mut gaps, mut snapshots) = (0, 0);
    let mut after_gap = false;
    while last != Some(323) {
        let v = next_json(&mut slow);
        match v["op"].as_str() {
            Some("gap") => {
                gaps += 1;
                after_gap = true;
            }
            Some("snapshot") => {
                snapshots += 1;
                after_gap = false;
                last = v["seq"].as_u64();
            }
            Some("msg") => {
                assert!(
                    !after_gap,
                    "a delta right after a gap, before a snapshot: {v:?}"
                );
                let seq = v["seq"].as_u64().unwrap();
                if let Some(prev) = last {
                    assert_eq!(seq, prev + 1, "contiguous after a snapshot: {v:?}");
                }
                last = Some(seq);
            }
            _ => {}
        }
    }
    assert!(gaps >= 1, "the slow reader lost frames (gaps {gaps})");
    // At least the one after the last gap (the first snapshot may itself have been dropped).
    assert!(snapshots >= 1, "a snapshot healed the book ({snapshots})");
}

#[test]
fn a_late_joiner_whose_snapshot_is_no_longer_held_waits_and_the_tcp_publisher_is_asked() {
    let server = start(|c| books(c, Some(5)));
    let mut publisher = TcpStream::connect(server.ingest).unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut from_server = BufReader::new(publisher.try_clone().unwrap()).lines();
    let mut lines = String::from("{\"topic\":\"book.L\",\"data\":{\"v\":1},\"snapshot\":true}\n");
    for i in 2..=20 {
        lines.push_str(&format!(
            "{{\"topic\":\"book.L\",\"data\":{{\"v\":{i}}}}}\n"
        ));
    }
    publisher.write_all(lines.as_bytes()).unwrap();
    // The snapshot (1) is trimmed: 16..=20 are held. Subscribe once all 20 are sequenced
    // (the TCP lines reach the dispatcher on their own schedule).
    let mut joiner = connect(&server.url);
    let mut attempts = 0;
    let ack = loop {
        let ack = subscribe(&mut joiner, 1, &["book.L"]);
        if entry(&ack, "book.L")["seq"].as_u64() == Some(20) {
            break ack;
        }
        attempts += 1;
        assert!(attempts < 200, "the 20 lines were sequenced within 2 s");
        std::thread::sleep(Duration::from_millis(10));
        joiner = connect(&server.url);
    };
    let e = entry(&ack, "book.L");
    assert_eq!(e["waiting"].as_bool(), Some(true), "{ack:?}");
    assert_eq!(e["start"].as_str(), Some("snapshot"));
    // The publisher, quiet meanwhile, is asked at once.
    let request = from_server.next().unwrap().unwrap();
    assert_eq!(request, r#"{"op":"snapshot_request","topic":"book.L"}"#);
    publisher
        .write_all(b"{\"topic\":\"book.L\",\"data\":{\"v\":21}}\n")
        .unwrap();
    publisher
        .write_all(
            b"{\"topic\":\"book.L\",\"data\":{\"v\":22},\"snapshot\":true}\n\
              {\"topic\":\"book.L\",\"data\":{\"v\":23}}\n",
        )
        .unwrap();
    let snap = next_json(&mut joiner);
    assert_eq!(snap["op"].as_str(), Some("snapshot"), "{snap:?}");
    assert_eq!(snap["seq"].as_u64(), Some(22));
    assert_eq!(snap["data"]["v"].as_u64(), Some(22));
    let delta = next_json(&mut joiner);
    assert_eq!(
        (delta["seq"].as_u64(), delta["data"]["v"].as_u64()),
        (Some(23), Some(23))
    );
}

#[test]
fn the_in_process_publisher_is_asked_through_its_callback() {
    let server = start(|c| books(c, None));
    let publisher = server.publisher.clone();
    let (asked_tx, asked_rx) = std::sync::mpsc::channel::<String>();
    let asked_tx = std::sync::Mutex::new(asked_tx);
    let p2 = publisher.clone();
    server.server().on_snapshot_request(move |topic| {
        let _ = asked_tx.lock().unwrap().send(topic.to_string());
        // From another thread: the callback runs on the dispatcher's.
        let (p, topic) = (p2.clone(), topic.to_string());
        std::thread::spawn(move || p.publish_snapshot(&topic, r#"{"fresh":true}"#).unwrap());
    });
    server.publish("book.C", 2); // deltas only
    server.publish_settled("settle.C", 1);
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["book.C"]);
    assert_eq!(entry(&ack, "book.C")["waiting"].as_bool(), Some(true));
    assert_eq!(
        asked_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "book.C"
    );
    let snap = next_json(&mut ws);
    assert_eq!(snap["op"].as_str(), Some("snapshot"), "{snap:?}");
    assert_eq!(snap["seq"].as_u64(), Some(3));
    assert_eq!(snap["data"]["fresh"].as_bool(), Some(true));
    // A fresh resync: the held snapshot at once, and the publisher is asked for a new one.
    send(
        &mut ws,
        r#"{"op":"resync","id":2,"topic":"book.C","fresh":true}"#,
    );
    let ack = next_op(&mut ws, "ack");
    assert_eq!(entry(&ack, "book.C")["start"].as_str(), Some("snapshot"));
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.C".into(), 3));
    assert_eq!(
        asked_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "book.C"
    );
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.C".into(), 4));
}

#[test]
fn deltas_of_a_snapshot_topic_come_only_from_the_snapshots_sender() {
    let server = start(|c| books(c, None));
    let connect_publisher = || {
        let p = TcpStream::connect(server.ingest).unwrap();
        p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let lines = BufReader::new(p.try_clone().unwrap()).lines();
        (p, lines)
    };
    let (mut a, _a_lines) = connect_publisher();
    let (mut b, mut b_lines) = connect_publisher();
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["book.O"]);
    a.write_all(b"{\"topic\":\"book.O\",\"data\":\"a1\",\"snapshot\":true}\n")
        .unwrap();
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.O".into(), 1));
    b.write_all(b"{\"topic\":\"book.O\",\"data\":\"b-delta\"}\n")
        .unwrap();
    let refused = b_lines.next().unwrap().unwrap();
    assert!(
        refused.contains("not_owner") && refused.contains("\"line\":1"),
        "{refused}"
    );
    a.write_all(b"{\"topic\":\"book.O\",\"data\":\"a-delta\"}\n")
        .unwrap();
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.O".into(), 2));
    // B takes over with a snapshot of its own; then A's deltas are the refused ones.
    b.write_all(
        b"{\"topic\":\"book.O\",\"data\":\"b2\",\"snapshot\":true}\n\
          {\"topic\":\"book.O\",\"data\":\"b-delta\"}\n",
    )
    .unwrap();
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.O".into(), 3));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.O".into(), 4));
}

#[test]
fn a_waiter_is_told_what_it_misses_after_snapshot_wait_ms_and_keeps_waiting() {
    let server = start(|c| {
        books(c, None);
        c.recovery.snapshot_wait_ms = 300;
        c.recovery.snapshot_request_interval_ms = 100;
    });
    server.publish("book.N", 2); // 1, 2: no snapshot
    server.publish_settled("settle.N", 1);
    let mut ws = connect(&server.url);
    let ack = subscribe(&mut ws, 1, &["book.N"]);
    assert_eq!(entry(&ack, "book.N")["waiting"].as_bool(), Some(true));
    server.publish("book.N", 3); // 3, 4, 5: it cannot apply them
    let gap = next_op(&mut ws, "gap");
    assert_eq!(gap["reason"].as_str(), Some("no_snapshot"), "{gap:?}");
    assert_eq!(gap["topic"].as_str(), Some("book.N"));
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(3), Some(5))
    );
    server
        .publisher
        .publish_snapshot("book.N", r#"{"s":6}"#)
        .unwrap();
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.N".into(), 6));
}

#[test]
fn history_trimmed_under_a_running_replay_does_not_break_it() {
    // The replay holds its frames (shared): trimming history behind it takes nothing from it.
    let server = start(|c| {
        namespace(c, "trim.", false, Some(1_000));
        c.shard.queue_max_messages = 1 << 20;
        c.shard.queue_max_bytes = 1 << 30;
    });
    let mut ws = connect(&server.url);
    let epoch = epoch_of(&subscribe(&mut ws, 1, &["trim.t"]), "trim.t");
    let data = format!("\"{}\"", "x".repeat(500));
    for _ in 0..1_000 {
        server.publisher.publish("trim.t", data.clone()).unwrap();
    }
    server.publish_settled("trim.t", 1); // 1..=1001 sequenced
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 2, &[("trim.t", &epoch, 100)]);
    assert_eq!(
        entry(&ack, "trim.t")["recovered"].as_bool(),
        Some(true),
        "{ack:?}"
    );
    // 5,000 more: history (1,000) is trimmed far past where the replay started.
    for _ in 0..5_000 {
        server.publisher.publish("trim.t", data.clone()).unwrap();
    }
    expect_contiguous(&mut c, "trim.t", 101, 5_901);
}

#[test]
fn a_pattern_delivers_nothing_of_a_topic_its_connection_waits_on_exactly() {
    let server = start(|c| books(c, None));
    let mut ws = connect(&server.url);
    subscribe(&mut ws, 1, &["book.*"]);
    server.publish("book.P", 2); // 1, 2 through the pattern, no snapshot
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.P".into(), 1));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.P".into(), 2));
    let ack = subscribe(&mut ws, 2, &["book.P"]);
    assert_eq!(
        entry(&ack, "book.P")["waiting"].as_bool(),
        Some(true),
        "{ack:?}"
    );
    server.publish("book.P", 2); // 3, 4: deltas the exact subscription waits past
    server.publish("book.Q", 1); // another topic of the pattern still flows
    server
        .publisher
        .publish_snapshot("book.P", r#"{"s":5}"#)
        .unwrap(); // 5
    server.publish("book.P", 1); // 6
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.Q".into(), 1));
    assert_eq!(next_data(&mut ws), ("snapshot".into(), "book.P".into(), 5));
    assert_eq!(next_data(&mut ws), ("msg".into(), "book.P".into(), 6));
}

#[test]
fn a_resume_that_would_queue_more_than_20000_frames_is_not_recovered() {
    let server = start(|c| {
        namespace(c, "long.", false, Some(30_000));
        c.recovery.max_messages = 30_000;
    });
    let mut ws = connect(&server.url);
    let epoch = epoch_of(&subscribe(&mut ws, 1, &["long.t"]), "long.t");
    drop(ws);
    server.publish("long.t", 24_999);
    server.publish_settled("long.t", 1); // 25,000 held
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 2, &[("long.t", &epoch, 0)]);
    let e = entry(&ack, "long.t");
    assert_eq!(e["recovered"].as_bool(), Some(false), "{ack:?}");
    assert_eq!(e["seq"].as_u64(), Some(25_000), "joined at the head");
    server.publish("long.t", 1);
    assert_eq!(next_data(&mut c), ("msg".into(), "long.t".into(), 25_001));
    // Within the budget it recovers.
    let mut c = connect(&server.url);
    let ack = resume(&mut c, 3, &[("long.t", &epoch, 10_000)]);
    assert_eq!(
        entry(&ack, "long.t")["recovered"].as_bool(),
        Some(true),
        "{ack:?}"
    );
}
