//! A token's life on an open connection (docs/security.md, "Refresh"): the server's
//! `refresh`, a new `auth` in time, too late (4004), for another user (`sub_mismatch`), and
//! with fewer permissions (`unsubscribed`, reason `forbidden`), with a bystander that loses
//! nothing.

mod common;

use std::time::Duration;

use common::tokens::*;
use common::*;
use serde_json::json;
use simd_json::prelude::*;

/// Leeway of these servers, seconds.
const LEEWAY: u64 = 1;

fn server() -> TestServer {
    auth_server(|c| {
        c.auth.leeway_s = LEEWAY;
        c.namespaces.push(corecast_shards::namespace::Namespace {
            prefix: "book.".into(),
            snapshots: true,
            gap_policy: None,
            history_max_messages: None,
            history_max_age_ms: None,
        });
    })
}

/// A 6 s token: `refresh` comes 2 s (a third of its life, less than 30 s) before `exp`, less
/// up to a quarter of that as jitter; a new token then keeps the stream going past the old
/// expiry, nothing lost.
#[test]
fn a_refresh_in_time_keeps_the_stream() {
    let server = server();
    let mut bystander = Bystander::new(&server, "public.bystander");
    let c = claims("alice", 6, json!({}));
    let exp = c["exp"].as_u64().unwrap();
    let mut ws = with_bearer(&server.url, &hs(c)).unwrap();
    subscribe(&mut ws, 1, &["user.alice.orders"]);
    let r = next_op(&mut ws, "refresh");
    let at = now();
    assert_eq!(r["expires_at"].as_u64(), Some(exp));
    assert!(
        (exp - 3..=exp - 1).contains(&at),
        "refresh at {at}, exp {exp}"
    );
    send_auth(&mut ws, 2, &hs(claims("alice", 600, json!({}))));
    let ack = next_op(&mut ws, "ack");
    assert_eq!(
        (ack["id"].as_u64(), ack["sub"].as_str()),
        (Some(2), Some("alice"))
    );
    // Past the old token's end and its leeway, the connection still delivers in order.
    while now() <= exp + LEEWAY + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    server.publish("user.alice.orders", 5);
    expect_contiguous(&mut ws, "user.alice.orders", 1, 5);
    bystander.answer_pings();
    bystander.check(&server, 3);
}

/// No new token: the connection is closed with 4004 at `exp` plus the leeway (within a
/// second of it); a token for another user does not count and leaves the old one in force.
#[test]
fn too_late_or_for_another_user_the_connection_closes_with_4004() {
    let server = server();
    let mut bystander = Bystander::new(&server, "public.bystander");
    for other_user in [false, true] {
        let c = claims("alice", 4, json!({}));
        let exp = c["exp"].as_u64().unwrap();
        let mut ws = with_bearer(&server.url, &hs(c)).unwrap();
        subscribe(&mut ws, 1, &["user.alice.orders"]);
        next_op(&mut ws, "refresh");
        if other_user {
            send_auth(&mut ws, 2, &hs(claims("bob", 600, json!({}))));
            let e = next_op(&mut ws, "error");
            assert_eq!(
                (e["id"].as_u64(), e["code"].as_str()),
                (Some(2), Some("sub_mismatch"))
            );
            subscribe(&mut ws, 3, &["user.alice.fills"]);
            send(
                &mut ws,
                r#"{"op":"subscribe","id":4,"topics":["user.bob"]}"#,
            );
            assert_eq!(
                next_op(&mut ws, "error")["code"],
                "forbidden",
                "still alice"
            );
        }
        let (code, reason) = expect_close(&mut ws);
        assert_eq!((code, reason.as_str()), (4004, "token expired"));
        let t = now();
        assert!(
            (exp + LEEWAY..=exp + LEEWAY + 1).contains(&t),
            "closed at {t}, exp {exp}"
        );
        bystander.check(&server, 3);
    }
}

/// A refreshed token with fewer permissions ends the subscriptions it no longer allows:
/// each gets `unsubscribed` (reason `forbidden`) and none of their frames follow, a snapshot
/// topic still waiting for its snapshot included; the others go on.
#[test]
fn a_narrower_token_ends_what_it_no_longer_allows() {
    let server = server();
    let mut bystander = Bystander::new(&server, "public.bystander");
    let wide = hs(claims(
        "alice",
        600,
        json!({"topics": ["trades.*", "book.*", "ticker.BTC"]}),
    ));
    let narrow = hs(claims("alice", 600, json!({"topics": ["ticker.BTC"]})));
    let mut ws = with_bearer(&server.url, &wide).unwrap();
    let ack = subscribe(
        &mut ws,
        1,
        &["trades.BTC", "trades.spot.*", "ticker.BTC", "user.alice"],
    );
    assert_eq!(ack["topics"].as_array().unwrap().len(), 4);
    let ack = subscribe(&mut ws, 2, &["book.ETH"]);
    assert_eq!(ack["topics"][0]["waiting"].as_bool(), Some(true), "{ack:?}");
    server.publish("trades.BTC", 2);
    expect_contiguous(&mut ws, "trades.BTC", 1, 2);
    std::thread::sleep(Duration::from_millis(1000)); // one auth per second
    send_auth(&mut ws, 3, &narrow);
    assert_eq!(next_op(&mut ws, "ack")["id"], 3);
    let mut ended = Vec::new();
    for _ in 0..3 {
        let u = next_op(&mut ws, "unsubscribed");
        assert_eq!(u["reason"], "forbidden");
        ended.push(u["topic"].as_str().unwrap().to_string());
    }
    ended.sort();
    assert_eq!(ended, ["book.ETH", "trades.BTC", "trades.spot.*"]);
    // Frames of the ended topics (the snapshot the book waited for among them) never come;
    // the allowed ones do, in order.
    server.publish("trades.BTC", 3);
    server.publish("trades.spot.SOL", 3);
    server
        .server()
        .publisher()
        .publish_snapshot("book.ETH", r#"{"bids":[]}"#)
        .unwrap();
    server.publish("ticker.BTC", 2);
    server.publish("user.alice", 1);
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = next_json(&mut ws);
        let topic = m["topic"].as_str().unwrap_or("").to_string();
        assert!(
            matches!(topic.as_str(), "ticker.BTC" | "user.alice"),
            "{m:?}"
        );
        got.push((topic, m["seq"].as_u64().unwrap()));
    }
    assert_eq!(
        got,
        [
            ("ticker.BTC".into(), 1),
            ("ticker.BTC".into(), 2),
            ("user.alice".into(), 1)
        ]
    );
    // The ended subscriptions are gone: unsubscribing them is an error, subscribing is refused.
    send(
        &mut ws,
        r#"{"op":"unsubscribe","id":4,"topics":["trades.BTC"]}"#,
    );
    assert_eq!(next_op(&mut ws, "error")["code"], "not_subscribed");
    send(
        &mut ws,
        r#"{"op":"subscribe","id":5,"topics":["trades.BTC"]}"#,
    );
    assert_eq!(next_op(&mut ws, "error")["code"], "forbidden");
    bystander.check(&server, 3);
}

/// The frames of an ended subscription still queued on the shard are purged, not written:
/// with a batch window holding the connection's writes, messages published just before the
/// narrowing `auth` never reach the client; those of the topics it keeps do, in order.
#[test]
fn a_narrower_token_purges_what_is_queued() {
    let server = auth_server(|c| c.shard.batch_window_us = 1_000_000);
    let wide = hs(claims(
        "alice",
        600,
        json!({"topics": ["trades.*", "ticker.BTC"]}),
    ));
    let narrow = hs(claims("alice", 600, json!({"topics": ["ticker.BTC"]})));
    let mut ws = with_bearer(&server.url, &wide).unwrap();
    subscribe(&mut ws, 1, &["trades.BTC", "ticker.BTC"]);
    // Queued behind the window: the first write of this connection is up to 1 s away.
    server.publish("trades.BTC", 5);
    server.publish("ticker.BTC", 2);
    std::thread::sleep(Duration::from_millis(100));
    send_auth(&mut ws, 2, &narrow);
    let mut seen = Vec::new();
    loop {
        let m = next_json(&mut ws);
        match m["op"].as_str() {
            Some("msg") => seen.push((
                m["topic"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
            )),
            Some("ack") => assert_eq!(m["id"], 2),
            Some("unsubscribed") => {
                assert_eq!(
                    (m["topic"].as_str(), m["reason"].as_str()),
                    (Some("trades.BTC"), Some("forbidden"))
                );
                break;
            }
            _ => panic!("unexpected {m:?}"),
        }
    }
    server.publish("ticker.BTC", 1);
    let m = next_op(&mut ws, "msg");
    seen.push((
        m["topic"].as_str().unwrap().to_string(),
        m["seq"].as_u64().unwrap(),
    ));
    assert_eq!(
        seen,
        [
            ("ticker.BTC".to_string(), 1),
            ("ticker.BTC".into(), 2),
            ("ticker.BTC".into(), 3)
        ],
        "no trades.BTC frame was written"
    );
}
