use super::*;

const GOOD: &str = "GET /ws?token=x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn status(req: &str) -> u16 {
    match parse(req.as_bytes(), "/ws") {
        Parsed::Reject(r) => r.status,
        Parsed::Upgrade { .. } => 101,
        Parsed::Partial => 0,
    }
}

#[test]
fn upgrades_with_rfc_sample_accept_key() {
    let Parsed::Upgrade {
        response,
        consumed,
        head,
    } = parse(GOOD.as_bytes(), "/ws")
    else {
        panic!("expected an upgrade")
    };
    assert_eq!(consumed, GOOD.len());
    let text = String::from_utf8(response).unwrap();
    // RFC 6455 section 1.3's worked example.
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(head.token, Some(Ok("x".into())), "GOOD has ?token=x");
}

#[test]
fn tokens_come_from_the_header_or_the_query_not_both() {
    let head = |req: &str| match parse(req.as_bytes(), "/ws") {
        Parsed::Upgrade { head, .. } => head,
        other => panic!("{other:?}"),
    };
    let plain = GOOD.replace("/ws?token=x", "/ws");
    assert_eq!(head(&plain).token, None);
    let bearer = plain.replace("Host: a\r\n", "Host: a\r\nAuthorization: Bearer a.b.c\r\n");
    assert_eq!(head(&bearer).token, Some(Ok("a.b.c".into())));
    let basic = plain.replace("Host: a\r\n", "Host: a\r\nAuthorization: Basic xyz\r\n");
    assert_eq!(head(&basic).token, None, "another scheme is not a token");
    let twice = GOOD.replace("token=x", "token=x&token=y");
    assert!(head(&twice).token.unwrap().is_err());
    assert!(!format!("{:?}", head(GOOD)).contains("token=x"));
    assert!(format!("{:?}", head(GOOD)).contains("<redacted>"));
    let both = GOOD.replace("Host: a\r\n", "Host: a\r\nAuthorization: Bearer a.b.c\r\n");
    assert!(head(&both).token.unwrap().is_err());
    let escaped = GOOD.replace("token=x", "a=1&token=a%2Eb.c&z");
    assert_eq!(head(&escaped).token, Some(Ok("a.b.c".into())));
    let with = GOOD.replace(
        "Host: a\r\n",
        "Host: a\r\nOrigin: https://o\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n",
    );
    let h = head(&with);
    assert_eq!(h.origin.as_deref(), Some(&b"https://o"[..]));
    assert_eq!(h.forwarded_for.as_deref(), Some(&b"1.2.3.4,5.6.7.8"[..]));
}

#[test]
fn refuses_what_is_not_an_upgrade() {
    assert_eq!(status("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n"), 426);
    assert_eq!(status(&GOOD.replace("GET /ws", "POST /ws")), 405);
    assert_eq!(status(&GOOD.replace("GET /ws", "GET /other")), 404);
    assert_eq!(status(&GOOD.replace("keep-alive, Upgrade", "close")), 400);
    assert_eq!(status(&GOOD.replace("Version: 13", "Version: 8")), 426);
    assert_eq!(
        status(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
        400
    );
    assert_eq!(status("\x16\x03\x01garbage\r\n\r\n"), 400);
    assert_eq!(status("GET /ws HTTP/1.1\r\nHost: a\r\n"), 0);
    let long = format!(
        "GET /ws HTTP/1.1\r\nX: {}\r\n",
        "a".repeat(MAX_REQUEST_HEAD)
    );
    assert_eq!(status(&long), 431);
}

#[test]
fn list_fields_combine_across_lines() {
    let split = GOOD.replace(
        "Connection: keep-alive, Upgrade\r\n",
        "Connection: keep-alive\r\nConnection: Upgrade\r\n",
    );
    assert_eq!(status(&split), 101);
    let split = GOOD.replace(
        "Upgrade: websocket\r\n",
        "Upgrade: h2c\r\nUpgrade: websocket\r\n",
    );
    assert_eq!(status(&split), 101);
    let empty_elements = GOOD.replace("keep-alive, Upgrade", " , ,Upgrade,");
    assert_eq!(status(&empty_elements), 101);
}

#[test]
fn singleton_fields_twice_are_refused_before_their_values() {
    for (line, twice) in [
        ("Host: a\r\n", "Host: a\r\nHost: a\r\n"),
        (
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Version: 13\r\nsec-websocket-version: 8\r\n",
        ),
        (
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
    ] {
        let req = GOOD.replace(line, twice);
        let Parsed::Reject(r) = parse(req.as_bytes(), "/ws") else {
            panic!("{twice:?} upgraded")
        };
        assert_eq!(r.status, 400, "{twice:?}");
        assert!(r.message.starts_with("more than one"), "{}", r.message);
    }
}

#[test]
fn host_is_required_and_valid() {
    assert_eq!(status(&GOOD.replace("Host: a\r\n", "")), 400);
    for bad in ["", "a b", "a:b", "[::1", "a/b", "a@b", "%zz"] {
        assert_eq!(
            status(&GOOD.replace("Host: a", &format!("Host: {bad}"))),
            400,
            "{bad:?}"
        );
    }
    for good in [
        "127.0.0.1:8080",
        "[::1]:80",
        "example.com",
        "a-b.c_d~",
        "%41",
    ] {
        assert_eq!(
            status(&GOOD.replace("Host: a", &format!("Host: {good}"))),
            101,
            "{good:?}"
        );
    }
}

#[test]
fn an_upgrade_has_no_body() {
    let with = |h: &str| GOOD.replace("Host: a\r\n", &format!("Host: a\r\n{h}\r\n"));
    assert_eq!(status(&with("Content-Length: 5")), 400);
    assert_eq!(status(&with("Transfer-Encoding: chunked")), 400);
    assert_eq!(status(&with("Content-Length: 0")), 101);
}

#[test]
fn target_forms() {
    assert_eq!(target_path("/ws").unwrap(), "/ws");
    assert_eq!(target_path("/ws?a=b/c").unwrap(), "/ws");
    assert_eq!(target_path("http://127.0.0.1:8080/ws").unwrap(), "/ws");
    assert_eq!(target_path("WSS://h/ws?q").unwrap(), "/ws");
    assert_eq!(target_path("http://h").unwrap(), "/");
    assert_eq!(target_path("http://h?x").unwrap(), "/");
    assert_eq!(target_path("/w%73").unwrap(), "/ws");
    assert_eq!(target_path("/ws%2fx").unwrap(), "/ws%2Fx");
    for bad in [
        "ws",
        "*",
        "h:80",
        "ftp://h/ws",
        "http:///ws",
        "http://u@h/ws",
        "/w%s",
        "/ws#f",
        "/w s",
        "/ws%",
    ] {
        assert!(target_path(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        status(&GOOD.replace("GET /ws", "GET http://127.0.0.1:8080/ws")),
        101
    );
    assert_eq!(status(&GOOD.replace("GET /ws", "GET /w%73")), 101);
    assert_eq!(status(&GOOD.replace("GET /ws", "GET /WS")), 404);
    assert_eq!(status(&GOOD.replace("GET /ws", "GET h:80")), 400);
    assert_eq!(status(&GOOD.replace("GET /ws", "GET /other")), 404);
    assert!(parse(GOOD.replace("GET /ws", "GET /any").as_bytes(), "*").is_upgrade());
}

#[test]
fn refusals_never_quote_the_query() {
    for target in [
        "ws?token=SECRET",
        "http://u@h/ws?token=SECRET",
        "x?token=a://b",
    ] {
        let req = GOOD.replace("GET /ws?token=x", &format!("GET {target}"));
        let Parsed::Reject(r) = parse(req.as_bytes(), "/ws") else {
            panic!("{target} upgraded")
        };
        assert_eq!(r.status, 400, "{target}");
        assert!(
            !r.message.contains("SECRET") && !r.message.contains("a://b"),
            "{}",
            r.message
        );
    }
}

#[test]
fn rejection_response_is_plain_http() {
    let r = Rejection::new(426, "Upgrade Required", "hi").response();
    let text = String::from_utf8(r).unwrap();
    assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(text.contains("Upgrade: websocket\r\n"));
    assert!(text.ends_with("\r\n\r\nhi\n"));
}
