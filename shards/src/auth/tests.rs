use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};

/// The library checks `exp` and `nbf` against the system clock.
fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn hs() -> Auth {
    let config = AuthConfig {
        hmac_secret: Some(Secret(SECRET.into())),
        anonymous_topics: Some(vec!["ticker.*".into()]),
        roles: [("ops".to_string(), vec!["admin.*".to_string()])].into(),
        private_read_roles: vec!["ops".into()],
        ..AuthConfig::default()
    };
    Auth::new(&config).unwrap().unwrap()
}

fn mint(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn reason(auth: &Auth, token: &str) -> Reason {
    auth.verify(token, now()).unwrap_err().reason
}

#[test]
fn a_valid_token_grants_its_topics_roles_and_the_anonymous_ones() {
    let auth = hs();
    let now = now();
    let token = mint(serde_json::json!({
        "sub": "alice", "exp": now + 60, "iat": now, "topics": ["trades.*"], "roles": ["ops", "nobody"]
    }));
    let g = auth.verify(&token, now).unwrap();
    assert_eq!(&*g.sub, "alice");
    assert_eq!(g.exp, now + 60);
    assert_eq!(g.lifetime, 60);
    let p = auth.private();
    let allows = |s| {
        g.permissions
            .allows(p, crate::topic::parse_selector(s).unwrap())
    };
    assert!(allows("trades.x"));
    assert!(allows("admin.x"));
    assert!(allows("ticker.x"));
    assert!(allows("user.bob.orders"), "ops reads every user");
    assert!(!allows("book.x"));
}

#[test]
fn claims_are_checked_with_the_configured_rules() {
    let auth = hs();
    let now = now();
    let t = |c| reason(&auth, &mint(c));
    use serde_json::json;
    assert_eq!(t(json!({"sub":"a","exp": now - 6})), Reason::Expired);
    assert!(
        auth.verify(&mint(json!({"sub":"a","exp": now - 4})), now)
            .is_ok(),
        "leeway"
    );
    // On `exp` plus the leeway, not only after it (RFC 7519 §4.1.4).
    let at_the_second = auth.verify(&mint(json!({"sub":"a","exp": now - 5})), now);
    assert_eq!(at_the_second.err().map(|r| r.reason), Some(Reason::Expired));
    assert_eq!(
        t(json!({"sub":"a","exp": now + 60, "nbf": now + 6})),
        Reason::NotYetValid
    );
    assert_eq!(t(json!({"sub":"a"})), Reason::MissingClaim);
    assert_eq!(t(json!({"exp": now + 60})), Reason::MissingClaim);
    assert_eq!(t(json!({"sub":"a.b","exp": now + 60})), Reason::BadSub);
    assert_eq!(t(json!({"sub":"","exp": now + 60})), Reason::BadSub);
    assert_eq!(
        t(json!({"sub":"a","exp": now + 90_000, "iat": now})),
        Reason::TooLongLived
    );
    assert_eq!(
        t(json!({"sub":"a","exp": now + 90_000})),
        Reason::TooLongLived
    );
    assert_eq!(
        t(json!({"sub":"a","exp": now + 60, "topics": ["a b"]})),
        Reason::BadClaim
    );
    assert_eq!(t(json!({"sub":"a","exp": "soon"})), Reason::Malformed);
}

#[test]
fn unsigned_foreign_and_garbage_tokens_are_refused() {
    let auth = hs();
    let now = now();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let body = b64(&format!(r#"{{"sub":"a","exp":{}}}"#, now + 60));
    let none = format!("{}.{body}.", b64(r#"{"alg":"none"}"#));
    assert_eq!(reason(&auth, &none), Reason::BadAlgorithm);
    let rs = format!("{}.{body}.c2ln", b64(r#"{"alg":"RS256"}"#));
    assert_eq!(reason(&auth, &rs), Reason::BadAlgorithm, "no public key");
    for garbage in ["", "abc", "a.b.c", "a.b.c.d", "😀.x.y"] {
        assert_eq!(reason(&auth, garbage), Reason::Malformed, "{garbage:?}");
    }
    let good = mint(serde_json::json!({"sub":"a","exp": now + 60}));
    let (head, _) = good.rsplit_once('.').unwrap();
    assert_eq!(reason(&auth, &format!("{head}.AAAA")), Reason::BadSignature);
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = |c: AuthConfig| Auth::new(&c).unwrap_err();
    let secret = Some(Secret(SECRET.into()));
    assert!(bad(AuthConfig {
        hmac_secret: Some(Secret("short".into())),
        ..AuthConfig::default()
    })
    .contains("hmac_secret"));
    assert!(bad(AuthConfig {
        hmac_secret: secret.clone(),
        private_read_roles: vec!["x".into()],
        ..AuthConfig::default()
    })
    .contains("private_read_roles"));
    assert!(bad(AuthConfig {
        hmac_secret: secret.clone(),
        anonymous_topics: Some(vec!["a.*.b".into()]),
        ..AuthConfig::default()
    })
    .contains("anonymous_topics"));
    assert!(bad(AuthConfig {
        public_key_file: Some("/nonexistent.pem".into()),
        ..AuthConfig::default()
    })
    .contains("public_key_file"));
    assert!(bad(AuthConfig {
        anonymous_topics: Some(vec!["a.*".into()]),
        ..AuthConfig::default()
    })
    .contains("need a key"));
    assert!(Auth::new(&AuthConfig::default()).unwrap().is_none());
    assert_eq!(format!("{:?}", Secret(SECRET.into())), "\"<redacted>\"");
}
