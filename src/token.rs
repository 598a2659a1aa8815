//! Minting test tokens (`corecast token`, and the demo's user token): a JWT (RFC 7519) with
//! the claims corecast reads (docs/security.md, "Claims"), signed with an HMAC secret or a
//! PEM private key. For development and tests: production tokens come from your identity
//! provider.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// What to put in a token and how to sign it.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// `sub`: 1 to 64 characters of `[A-Za-z0-9_:-]`.
    pub sub: String,
    /// Lifetime, seconds: `exp = iat + ttl`.
    pub ttl_s: u64,
    /// `topics` claim: patterns (`*`, `prefix.*`, topics) the token may subscribe to.
    pub topics: Vec<String>,
    /// `roles` claim: role names of `[auth.roles]`.
    pub roles: Vec<String>,
    /// `iss`, when set.
    pub issuer: Option<String>,
    /// `aud`, when set.
    pub audience: Option<String>,
    /// `kid` header, when set (a key of the server's JWKS).
    pub kid: Option<String>,
    /// `nbf` this many seconds after now (negative: before), when set.
    pub not_before_s: Option<i64>,
}

/// The key a token is signed with.
#[derive(Debug, Clone)]
pub enum SigningKey {
    /// HS256 with the secret's UTF-8 bytes (the server's `auth.hmac_secret`).
    Hmac(String),
    /// A PEM private key file (PKCS#8, or PKCS#1 for RSA) and the algorithm: RS256/384/512,
    /// PS256/384/512, ES256/384 or EdDSA.
    Pem(PathBuf, Algorithm),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs a token. Errors: an unreadable key file, a key that does not fit the algorithm.
pub fn mint(spec: &TokenSpec, key: &SigningKey) -> anyhow::Result<String> {
    let iat = now();
    let mut claims = serde_json::json!({
        "sub": spec.sub,
        "iat": iat,
        "exp": iat + spec.ttl_s,
    });
    let c = claims.as_object_mut().expect("an object");
    if !spec.topics.is_empty() {
        c.insert("topics".into(), spec.topics.clone().into());
    }
    if !spec.roles.is_empty() {
        c.insert("roles".into(), spec.roles.clone().into());
    }
    if let Some(iss) = &spec.issuer {
        c.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = &spec.audience {
        c.insert("aud".into(), aud.clone().into());
    }
    if let Some(nbf) = spec.not_before_s {
        c.insert("nbf".into(), (iat as i64 + nbf).into());
    }
    let (alg, key) = match key {
        SigningKey::Hmac(secret) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()).context("an empty secret")?,
        ),
        SigningKey::Pem(path, alg) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            use jsonwebtoken::AlgorithmFamily as F;
            let key = match alg.family() {
                F::Rsa => EncodingKey::from_rsa_pem(&pem),
                F::Ec => EncodingKey::from_ec_pem(&pem),
                F::Ed => EncodingKey::from_ed_pem(&pem),
                F::Hmac => anyhow::bail!("{alg:?} takes --secret, not --key"),
            }
            .with_context(|| format!("{} is not a PEM private key for {alg:?}", path.display()))?;
            (*alg, key)
        }
    };
    let mut header = Header::new(alg);
    header.kid = spec.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).context("signing the token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_passes_the_servers_check() {
        let secret = "0123456789abcdef0123456789abcdef".to_string();
        let auth = corecast_shards::auth::Auth::new(&corecast_shards::auth::AuthConfig {
            hmac_secret: Some(corecast_shards::auth::Secret(secret.clone())),
            issuer: Some("me".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let spec = TokenSpec {
            sub: "alice".into(),
            ttl_s: 600,
            topics: vec!["trades.*".into()],
            roles: vec![],
            issuer: Some("me".into()),
            audience: None,
            kid: None,
            not_before_s: None,
        };
        let token = mint(&spec, &SigningKey::Hmac(secret)).unwrap();
        let grant = auth.verify(&token, now()).unwrap();
        assert_eq!(&*grant.sub, "alice");
        assert_eq!(grant.lifetime, 600);
    }
}
