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

/// The algorithm named `name` (`RS256`, ...); the error lists the names accepted.
pub fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    name.parse().map_err(|_| {
        anyhow::anyhow!(
            "{name:?} is not a JWS algorithm; one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA (case matters)"
        )
    })
}

/// The key a token is signed with.
#[derive(Debug, Clone)]
pub enum SigningKey {
    /// An HMAC algorithm (HS256/384/512) with the secret's UTF-8 bytes (the server's
    /// `auth.hmac_secret`, at least 32 bytes).
    Hmac(String, Algorithm),
    /// A PEM private key file (PKCS#8, or PKCS#1 for RSA) and the algorithm: RS256/384/512,
    /// PS256/384/512, ES256/384 or EdDSA.
    Pem(PathBuf, Algorithm),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs a token. Errors: a `sub` the server would refuse, a secret shorter than the server
/// accepts, an algorithm of another family than the key, an unreadable key file, a public key
/// where the private one is needed, a key that does not fit the algorithm.
pub fn mint(spec: &TokenSpec, key: &SigningKey) -> anyhow::Result<String> {
    if !corecast_shards::auth::valid_sub(&spec.sub) {
        anyhow::bail!(
            "sub {:?} would be refused (bad_sub): 1 to 64 characters of [A-Za-z0-9_:-]",
            spec.sub
        );
    }
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
        SigningKey::Hmac(secret, alg) => {
            if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac {
                anyhow::bail!("{alg:?} signs with a private key: give --key, not --secret");
            }
            if secret.len() < 32 {
                anyhow::bail!(
                    "the secret is {} bytes; the server accepts at least 32 (auth.hmac_secret)",
                    secret.len()
                );
            }
            (*alg, EncodingKey::from_secret(secret.as_bytes())?)
        }
        SigningKey::Pem(path, alg) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            if String::from_utf8_lossy(&pem).contains("PUBLIC KEY") {
                anyhow::bail!(
                    "{} is a public key: tokens are signed with the private key",
                    path.display()
                );
            }
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

/// `n` random bytes from the kernel (`/dev/urandom`) as 2`n` lowercase hex digits: a secret
/// made at start (the demo's HS256 secret, the dashboard's key when `server.admin_key` is unset).
pub fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        let token = mint(&spec, &SigningKey::Hmac(secret.clone(), Algorithm::HS256)).unwrap();
        let grant = auth.verify(&token, now()).unwrap();
        assert_eq!(&*grant.sub, "alice");
        assert_eq!(grant.lifetime, 600);
        let token = mint(&spec, &SigningKey::Hmac(secret.clone(), Algorithm::HS512)).unwrap();
        assert!(
            auth.verify(&token, now()).is_ok(),
            "HS512 with the same secret"
        );
    }

    #[test]
    fn what_the_server_would_refuse_is_not_minted() {
        let spec = |sub: &str| TokenSpec {
            sub: sub.into(),
            ttl_s: 60,
            topics: vec![],
            roles: vec![],
            issuer: None,
            audience: None,
            kid: None,
            not_before_s: None,
        };
        let long = "0123456789abcdef0123456789abcdef".to_string();
        let err = |s: &TokenSpec, k: SigningKey| mint(s, &k).unwrap_err().to_string();
        assert!(err(
            &spec("a.b"),
            SigningKey::Hmac(long.clone(), Algorithm::HS256)
        )
        .contains("bad_sub"));
        assert!(err(
            &spec("a"),
            SigningKey::Hmac("short".into(), Algorithm::HS256)
        )
        .contains("32"));
        assert!(err(&spec("a"), SigningKey::Hmac(long, Algorithm::RS256)).contains("--key"));
        let public =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa-public.pem");
        assert!(err(&spec("a"), SigningKey::Pem(public, Algorithm::RS256)).contains("public key"));
        assert!(algorithm("rs256")
            .unwrap_err()
            .to_string()
            .contains("RS256"));
    }
}
