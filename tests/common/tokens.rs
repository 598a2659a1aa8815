//! Tokens for the auth tests: minted with the jsonwebtoken crate (not the server's code) from
//! the secrets and keys in tests/keys/, and clients that send them.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;

use super::{set_timeout, start, Client, TestServer};

/// The HS256 secret of [`auth_server`].
pub const SECRET: &str = "tests-only-secret-0123456789abcdef";

/// A test key file's path.
pub fn key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// Unix seconds now (the server checks `exp` and `nbf` against this clock).
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token of `claims` signed with [`SECRET`].
pub fn hs(claims: Value) -> String {
    hs_with(SECRET.as_bytes(), claims)
}

/// An HS256 token signed with `secret`'s bytes.
pub fn hs_with(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// A token signed with the private key `pem` (tests/keys/) under `alg`, with `kid`.
pub fn signed(alg: Algorithm, pem: &str, kid: Option<&str>, claims: Value) -> String {
    let bytes = std::fs::read(key(pem)).unwrap();
    let k = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&bytes),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&bytes),
        _ => EncodingKey::from_rsa_pem(&bytes),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &k).unwrap()
}

/// Claims for `sub` living `ttl` seconds from now, with `extra` merged in.
pub fn claims(sub: &str, ttl: u64, extra: Value) -> Value {
    let t = now();
    let mut c = serde_json::json!({"sub": sub, "iat": t, "exp": t + ttl});
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

/// A server with auth on: HS256 with [`SECRET`], `public.*` open to anonymous clients, the
/// role `ops` reading every user's private topics; then `tweak`.
pub fn auth_server(tweak: impl FnOnce(&mut corecast::Config)) -> TestServer {
    start(|c| {
        c.auth.hmac_secret = Some(corecast_shards::auth::Secret(SECRET.into()));
        c.auth.anonymous_topics = Some(vec!["public.*".into()]);
        c.auth.roles = [
            ("ops".to_string(), vec!["admin.*".to_string()]),
            ("trader".to_string(), vec!["trades.*".to_string()]),
        ]
        .into();
        c.auth.private_read_roles = vec!["ops".into()];
        tweak(c);
    })
}

/// What a refused upgrade answered: status, `Retry-After`, and the JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub retry_after: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

/// Upgrades to `url` with extra request headers; `Err` describes a refusal.
pub fn upgrade(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tungstenite::connect(req) {
        Ok((ws, _)) => {
            set_timeout(&ws, Duration::from_secs(10));
            Ok(ws)
        }
        Err(tungstenite::Error::Http(r)) => {
            let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
            let body = r.body().clone().unwrap_or_default();
            Err(Refused {
                status: r.status().as_u16(),
                retry_after: header("retry-after"),
                www_authenticate: header("www-authenticate"),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            })
        }
        Err(e) => panic!("upgrade to {url} failed below HTTP: {e}"),
    }
}

/// Sends `{"op":"auth","id":id,"token":token}`.
pub fn send_auth(ws: &mut Client, id: u64, token: &str) {
    super::send(
        ws,
        &format!(r#"{{"op":"auth","id":{id},"token":"{token}"}}"#),
    );
}

/// Upgrades with `Authorization: Bearer <token>`.
pub fn with_bearer(url: &str, token: &str) -> Result<Client, Refused> {
    upgrade(url, &[("Authorization", &format!("Bearer {token}"))])
}

/// The refusal of an upgrade that was expected to fail.
pub fn refused(r: Result<Client, Refused>) -> Refused {
    match r {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(r) => r,
    }
}
