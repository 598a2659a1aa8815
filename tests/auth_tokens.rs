//! Tokens at the upgrade and in the `auth` message, over real sockets with tokens minted by
//! the jsonwebtoken crate (docs/security.md): every refusal's exact status and reason, the
//! three places a token may come from, and a bystander on the same shard that loses nothing.

mod common;

use common::tokens::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use simd_json::prelude::*;

/// Refusal reasons at the upgrade, each with a real token: 401, `WWW-Authenticate: Bearer`,
/// and the reason in the JSON body; no WebSocket opens, and the bystander loses nothing.
#[test]
fn invalid_tokens_are_refused_at_the_upgrade_with_their_reason() {
    let server = auth_server(|c| {
        c.auth.issuer = Some("https://auth.test/".into());
        c.auth.audience = Some("corecast".into());
        c.auth.max_token_lifetime_s = 3600;
    });
    let mut bystander = Bystander::new(&server, "public.bystander");
    let ok = |extra| {
        claims(
            "alice",
            600,
            merge(json!({"iss":"https://auth.test/","aud":"corecast"}), extra),
        )
    };
    let t = now();
    let none_token = {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&ok(json!({})).to_string())
        )
    };
    let valid = hs(ok(json!({})));
    let (head, _) = valid.rsplit_once('.').unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            hs(ok(json!({"iat": t - 100, "exp": t - 10}))),
            "expired",
        ),
        (
            "not yet valid",
            hs(ok(json!({"nbf": t + 60}))),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            hs(ok(json!({"iss": "https://evil.test/"}))),
            "bad_issuer",
        ),
        (
            "wrong audience",
            hs(ok(json!({"aud": "someone-else"}))),
            "bad_audience",
        ),
        (
            "missing audience",
            hs(claims("alice", 600, json!({"iss":"https://auth.test/"}))),
            "missing_claim",
        ),
        (
            "bad signature",
            format!("{head}.c2lnbmF0dXJl"),
            "bad_signature",
        ),
        (
            "other secret",
            hs_with(b"another-secret-0123456789abcdefgh", ok(json!({}))),
            "bad_signature",
        ),
        ("alg none", none_token, "bad_algorithm"),
        (
            "RS256 without a public key",
            signed(Algorithm::RS256, "rsa-private.pem", None, ok(json!({}))),
            "bad_algorithm",
        ),
        ("garbage", "not-a-token".into(), "malformed"),
        ("three parts of garbage", "a.b.c".into(), "malformed"),
        (
            "sub with a dot",
            hs(merge(ok(json!({})), json!({"sub": "bob.orders"}))),
            "bad_sub",
        ),
        (
            "too long lived",
            hs(ok(json!({"exp": t + 7200}))),
            "too_long_lived",
        ),
        (
            "no sub",
            hs(json!({"exp": t + 60, "iss":"https://auth.test/","aud":"corecast"})),
            "missing_claim",
        ),
    ];
    for (what, token, reason) in cases {
        let r = refused(with_bearer(&server.url, &token));
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(r.body["error"], "unauthorized", "{what}: {r:?}");
        assert_eq!(r.body["reason"], reason, "{what}: {r:?}");
        assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"), "{what}");
        assert!(
            !r.body.to_string().contains(&token),
            "{what}: the body quotes the token"
        );
        bystander.check(&server, 3);
    }
    // The query parameter is refused the same way.
    let r = refused(upgrade(
        &format!(
            "{}?token={}",
            server.url,
            hs(ok(json!({"iat": t - 100, "exp": t - 10})))
        ),
        &[],
    ));
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("expired"))
    );
    // And the valid one opens, naming its user.
    let mut ws = with_bearer(&server.url, &valid).unwrap();
    let welcome = next_op(&mut ws, "welcome");
    assert_eq!(welcome["sub"], "alice");
    assert!(welcome["expires_at"].as_u64().unwrap() >= t + 600);
    bystander.check(&server, 3);
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Algorithm confusion (RFC 8725 2.1): an HS256 token whose HMAC key is the server's RSA
/// public key is refused, with or without an `hmac_secret` beside the public key.
#[test]
fn an_hs_token_signed_with_the_public_key_is_refused() {
    let public = std::fs::read(key("rsa-public.pem")).unwrap();
    let forged = hs_with(&public, claims("mallory", 600, json!({})));
    let rsa_only = start(|c| c.auth.public_key_file = Some(key("rsa-public.pem")));
    let r = refused(with_bearer(&rsa_only.url, &forged));
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("bad_algorithm"))
    );
    let genuine = signed(
        Algorithm::RS256,
        "rsa-private.pem",
        None,
        claims("alice", 600, json!({})),
    );
    let mut ws = with_bearer(&rsa_only.url, &genuine).unwrap();
    assert_eq!(next_op(&mut ws, "welcome")["sub"], "alice");

    let both = start(|c| {
        c.auth.public_key_file = Some(key("rsa-public.pem"));
        c.auth.hmac_secret = Some(corecast_shards::auth::Secret(SECRET.into()));
    });
    let r = refused(with_bearer(&both.url, &forged));
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("bad_signature"))
    );
    let r = refused(with_bearer(
        &both.url,
        &signed(
            Algorithm::RS256,
            "rsa-private.pem",
            None,
            claims("a", 600, json!({"exp": now() - 60})),
        ),
    ));
    assert_eq!(
        r.body["reason"], "expired",
        "RS256 is checked against the public key"
    );
}

/// EC and Ed25519 public key files work, and a token of another family is refused.
#[test]
fn ec_and_ed25519_keys_verify_their_own_family_only() {
    for (file, alg, private) in [
        ("ec-public.pem", Algorithm::ES256, "ec-private.pem"),
        ("ed-public.pem", Algorithm::EdDSA, "ed-private.pem"),
    ] {
        let server = start(|c| c.auth.public_key_file = Some(key(file)));
        let mut ws = with_bearer(
            &server.url,
            &signed(alg, private, None, claims("alice", 600, json!({}))),
        )
        .unwrap();
        assert_eq!(next_op(&mut ws, "welcome")["sub"], "alice", "{file}");
        let rs = signed(
            Algorithm::RS256,
            "rsa-private.pem",
            None,
            claims("alice", 600, json!({})),
        );
        let r = refused(with_bearer(&server.url, &rs));
        assert_eq!(
            (r.status, r.body["reason"].as_str()),
            (401, Some("bad_algorithm")),
            "{file}"
        );
    }
}

/// A JWKS: the `kid` picks the key; an unknown `kid`, or none while several keys are
/// configured, is refused; a reload (SIGHUP) brings in a new key.
#[test]
fn jwks_keys_are_picked_by_kid_and_reloaded() {
    let dir = std::env::temp_dir().join(format!("corecast-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    let jwk = |pem: &str, alg: Algorithm, kid: &str| {
        let bytes = std::fs::read(key(pem)).unwrap();
        let k = match alg {
            Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&bytes),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&bytes),
        }
        .unwrap();
        let mut j = jsonwebtoken::jwk::Jwk::from_encoding_key(&k, alg).unwrap();
        j.common.key_id = Some(kid.into());
        j
    };
    let write = |keys: Vec<jsonwebtoken::jwk::Jwk>| {
        std::fs::write(
            &jwks,
            serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys }).unwrap(),
        )
        .unwrap();
    };
    write(vec![jwk("rsa-private.pem", Algorithm::RS256, "rsa-1")]);
    let server = start(|c| c.auth.jwks_file = Some(jwks.clone()));
    let rs = |kid: Option<&str>| {
        signed(
            Algorithm::RS256,
            "rsa-private.pem",
            kid,
            claims("alice", 600, json!({})),
        )
    };
    let es = |kid: Option<&str>| {
        signed(
            Algorithm::ES256,
            "ec-private.pem",
            kid,
            claims("alice", 600, json!({})),
        )
    };
    assert!(with_bearer(&server.url, &rs(Some("rsa-1"))).is_ok());
    assert!(
        with_bearer(&server.url, &rs(None)).is_ok(),
        "one key: no kid needed"
    );
    let r = refused(with_bearer(&server.url, &rs(Some("rsa-9"))));
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("unknown_kid"))
    );
    let r = refused(with_bearer(&server.url, &es(Some("ec-1"))));
    assert_eq!(r.body["reason"], "unknown_kid", "not loaded yet");

    write(vec![
        jwk("rsa-private.pem", Algorithm::RS256, "rsa-1"),
        jwk("ec-private.pem", Algorithm::ES256, "ec-1"),
        {
            // An encryption key beside the signing keys, as identity providers publish: left out.
            let mut enc = jwk("rsa-private.pem", Algorithm::RS256, "enc-1");
            enc.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
            enc
        },
    ]);
    assert_eq!(server.server().reload_jwks(), Ok(2));
    let r = refused(with_bearer(&server.url, &rs(Some("enc-1"))));
    assert_eq!(
        r.body["reason"], "unknown_kid",
        "an encryption key verifies nothing"
    );
    assert!(
        with_bearer(&server.url, &es(Some("ec-1"))).is_ok(),
        "reloaded"
    );
    let r = refused(with_bearer(&server.url, &rs(None)));
    assert_eq!(
        r.body["reason"], "unknown_kid",
        "two keys: a kid is required"
    );
    let r = refused(with_bearer(&server.url, &es(Some("rsa-1"))));
    assert_eq!(
        r.body["reason"], "bad_algorithm",
        "an ES256 token on the RSA key"
    );

    std::fs::write(&jwks, "not json").unwrap();
    assert!(server.server().reload_jwks().is_err());
    assert!(
        with_bearer(&server.url, &es(Some("ec-1"))).is_ok(),
        "the old keys stay"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A token from the query, the header, or the first message: each opens the user's private
/// topic, which the other user's token cannot read.
#[test]
fn a_token_comes_from_the_query_the_header_or_the_first_message() {
    let server = auth_server(|_| {});
    let mut bystander = Bystander::new(&server, "public.bystander");
    let alice = hs(claims("alice", 600, json!({})));
    let bob = hs(claims("bob", 600, json!({})));
    let mut by_query = upgrade(&format!("{}?token={alice}", server.url), &[]).unwrap();
    let mut by_header = with_bearer(&server.url, &alice).unwrap();
    let mut by_message = upgrade(&server.url, &[]).unwrap();
    send_auth(&mut by_message, 1, &alice);
    let ack = next_op(&mut by_message, "ack");
    assert_eq!(
        (ack["id"].as_u64(), ack["sub"].as_str()),
        (Some(1), Some("alice"))
    );
    assert!(ack["expires_at"].as_u64().unwrap() > now());
    let mut other = with_bearer(&server.url, &bob).unwrap();
    for ws in [&mut by_query, &mut by_header, &mut by_message] {
        let a = subscribe(ws, 2, &["user.alice.orders"]);
        assert_eq!(a["topics"][0]["topic"], "user.alice.orders");
    }
    send(
        &mut other,
        r#"{"op":"subscribe","id":2,"topics":["user.alice.orders"]}"#,
    );
    let e = next_op(&mut other, "error");
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(2), Some("forbidden"))
    );
    assert!(e["message"].as_str().unwrap().contains("user.alice.orders"));
    server.publish("user.alice.orders", 3);
    for ws in [&mut by_query, &mut by_header, &mut by_message] {
        expect_contiguous(ws, "user.alice.orders", 1, 3);
    }
    // bob still works on his own.
    subscribe(&mut other, 3, &["user.bob"]);
    bystander.check(&server, 3);
}

/// Anonymous clients: the allowed patterns only, never a private topic; where anonymous
/// access is off, a request before `auth` is refused and the connection closes with 4003.
#[test]
fn anonymous_access_is_the_configured_patterns_or_nothing() {
    let server = auth_server(|_| {});
    let mut bystander = Bystander::new(&server, "public.bystander");
    let mut anon = connect(&server.url);
    subscribe(&mut anon, 1, &["public.news", "public.x.*"]);
    for (id, topic) in [
        (2, "trades.BTC"),
        (3, "user.alice"),
        (4, "user.*"),
        (5, "public.ok\",\"trades.x"),
    ] {
        send(
            &mut anon,
            &format!(r#"{{"op":"subscribe","id":{id},"topics":["{topic}"]}}"#),
        );
        let e = next_op(&mut anon, "error");
        assert_eq!(
            (e["id"].as_u64(), e["code"].as_str()),
            (Some(id), Some("forbidden")),
            "{topic}"
        );
    }
    // The refused requests took nothing: public.ok was not subscribed with trades.x.
    send(
        &mut anon,
        r#"{"op":"unsubscribe","id":6,"topics":["public.ok"]}"#,
    );
    assert_eq!(next_op(&mut anon, "error")["code"], "not_subscribed");
    server.publish("public.news", 2);
    expect_contiguous(&mut anon, "public.news", 1, 2);
    bystander.check(&server, 2);

    let closed = auth_server(|c| {
        c.auth.anonymous_topics = None;
        c.auth.timeout_ms = 400;
    });
    let mut ws = connect(&closed.url);
    let welcome = next_op(&mut ws, "welcome");
    assert_eq!(
        (
            welcome["auth"].as_str(),
            welcome["auth_timeout_ms"].as_u64()
        ),
        (Some("required"), Some(400))
    );
    send(
        &mut ws,
        r#"{"op":"subscribe","id":1,"topics":["public.news"]}"#,
    );
    let e = next_op(&mut ws, "error");
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(1), Some("auth_required"))
    );
    send(&mut ws, r#"{"op":"ping","id":2}"#);
    assert_eq!(next_op(&mut ws, "pong")["id"], 2, "ping needs no token");
    let started = std::time::Instant::now();
    let (code, reason) = expect_close(&mut ws);
    assert_eq!((code, reason.as_str()), (4003, "authentication required"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // One that authenticates in time stays.
    let mut ok = connect(&closed.url);
    send_auth(&mut ok, 1, &hs(claims("carol", 600, json!({}))));
    assert_eq!(next_op(&mut ok, "ack")["sub"], "carol");
    std::thread::sleep(std::time::Duration::from_millis(700));
    send(
        &mut ok,
        r#"{"op":"subscribe","id":2,"topics":["user.carol.fills"]}"#,
    );
    assert_eq!(
        next_op(&mut ok, "ack")["id"],
        2,
        "still open past the auth timeout"
    );
}

/// Roles: the patterns of the token's roles, and `private_read_roles` over every user's
/// namespace; roles the server does not know grant nothing.
#[test]
fn roles_grant_their_patterns_and_private_reads() {
    let server = auth_server(|_| {});
    let ops = hs(claims("ops1", 600, json!({"roles": ["ops", "unknown"]})));
    let mut ws = with_bearer(&server.url, &ops).unwrap();
    subscribe(
        &mut ws,
        1,
        &["admin.alerts", "user.alice.orders", "user.*", "public.x"],
    );
    send(
        &mut ws,
        r#"{"op":"subscribe","id":2,"topics":["trades.BTC"]}"#,
    );
    assert_eq!(next_op(&mut ws, "error")["code"], "forbidden");
    let trader = hs(claims(
        "t1",
        600,
        json!({"roles": ["trader"], "topics": ["book.*"]}),
    ));
    let mut ws = with_bearer(&server.url, &trader).unwrap();
    subscribe(&mut ws, 1, &["trades.BTC", "book.ETH", "user.t1.*"]);
    for (id, topic) in [(2, "admin.alerts"), (3, "user.*"), (4, "user.alice.orders")] {
        send(
            &mut ws,
            &format!(r#"{{"op":"subscribe","id":{id},"topics":["{topic}"]}}"#),
        );
        assert_eq!(next_op(&mut ws, "error")["code"], "forbidden", "{topic}");
    }
}

/// `auth` messages: a bad token is refused with its reason, at most one per second.
#[test]
fn auth_messages_are_checked_and_rate_limited() {
    let server = auth_server(|_| {});
    let mut ws = connect(&server.url);
    next_op(&mut ws, "welcome");
    send(&mut ws, r#"{"op":"auth","id":1,"token":"garbage"}"#);
    let e = next_op(&mut ws, "error");
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str(), e["reason"].as_str()),
        (Some(1), Some("unauthorized"), Some("malformed"))
    );
    send_auth(&mut ws, 2, &hs(claims("a", 600, json!({}))));
    let e = next_op(&mut ws, "error");
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(2), Some("rate_limited"))
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    send_auth(&mut ws, 3, &hs(claims("a", 600, json!({}))));
    assert_eq!(next_op(&mut ws, "ack")["id"], 3);
    send(&mut ws, r#"{"op":"auth","id":4}"#);
    assert_eq!(next_op(&mut ws, "error")["code"], "bad_request");
    // Auth off: an auth message is a bad request, the connection goes on.
    let open = start(|_| {});
    let mut ws = connect(&open.url);
    send(&mut ws, r#"{"op":"auth","id":1,"token":"x"}"#);
    assert_eq!(next_op(&mut ws, "error")["code"], "bad_request");
    subscribe(&mut ws, 2, &["user.anyone"]);
}

/// The real binary: SIGHUP reads the JWKS again (a new key is then accepted), and a file that
/// fails to load keeps the previous keys, saying why on stderr.
#[test]
fn sighup_reloads_the_jwks_of_the_running_binary() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("corecast-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    let set = |keys: &[(&str, Algorithm, &str)]| {
        let keys = keys
            .iter()
            .map(|(pem, alg, kid)| {
                let bytes = std::fs::read(key(pem)).unwrap();
                let k = match alg {
                    Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&bytes),
                    _ => jsonwebtoken::EncodingKey::from_rsa_pem(&bytes),
                }
                .unwrap();
                let mut j = jsonwebtoken::jwk::Jwk::from_encoding_key(&k, *alg).unwrap();
                j.common.key_id = Some(kid.to_string());
                j
            })
            .collect();
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys }).unwrap()
    };
    std::fs::write(&jwks, set(&[("rsa-private.pem", Algorithm::RS256, "a")])).unwrap();
    let config = dir.join("corecast.toml");
    std::fs::write(
        &config,
        format!("[auth]\njwks_file = {:?}\n", jwks.display().to_string()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
            "--shards",
            "1",
        ])
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The next log line that says `needle` (others, such as refusals, come between).
    let mut next_with = |needle: &str| loop {
        let line = lines.next().expect("stderr open").unwrap();
        if line.contains(needle) {
            break line;
        }
    };
    let url = {
        let line = next_with("clients on ws://");
        let rest = line.split("clients on ws://").nth(1).unwrap();
        format!("ws://{}/ws", rest.split(',').next().unwrap().trim())
    };
    let es = signed(
        Algorithm::ES256,
        "ec-private.pem",
        Some("b"),
        claims("alice", 600, json!({})),
    );
    assert_eq!(
        refused(with_bearer(&url, &es)).body["reason"],
        "unknown_kid"
    );
    let hup = || {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    };
    std::fs::write(
        &jwks,
        set(&[
            ("rsa-private.pem", Algorithm::RS256, "a"),
            ("ec-private.pem", Algorithm::ES256, "b"),
        ]),
    )
    .unwrap();
    hup();
    let line = next_with("SIGHUP");
    assert!(
        line.contains("SIGHUP: JWKS keys in force") && line.contains("keys=2"),
        "{line}"
    );
    assert!(with_bearer(&url, &es).is_ok(), "the new key is in force");
    std::fs::write(&jwks, "{").unwrap();
    hup();
    let line = next_with("SIGHUP");
    assert!(
        line.contains("jwks_file") && line.contains("the previous keys stay"),
        "{line}"
    );
    assert!(with_bearer(&url, &es).is_ok());
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
