//! Authentication: JSON Web Tokens (RFC 7519) checked with the practices of RFC 8725, and
//! the permissions they carry ([`perms`]). Built once at start ([`Auth::new`]) and shared by
//! every shard (`Arc`); a token is checked on the shard core that serves the connection, at
//! its upgrade or at its `auth` message, never per published message. docs/security.md.
//!
//! Key choice (RFC 8725 §2.1, §3.1): a token's `alg` decides its key family, and each family
//! has its own keys: an `HS*` token is checked only against `hmac_secret`, an `RS*`/`PS*`,
//! `ES*` or `EdDSA` token only against a public key of that family (`public_key_file`, or the
//! key of its `kid` in `jwks_file`). `alg: none` and unknown algorithms are refused; the
//! `jku`, `x5u` and `jwk` headers are ignored (never fetched, never trusted).

pub mod perms;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use perms::{Perm, Permissions, Private};

/// Longest `auth.max_token_lifetime_s` accepted: a year.
pub const MAX_LIFETIME_S: u64 = 366 * 86_400;

/// A secret that never appears in `Debug` output, logs or `print-config`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

/// `[auth]`: how clients prove who they are and what they may read. Auth is on when any key
/// is set (`hmac_secret`, `public_key_file` or `jwks_file`); with none, every client is
/// anonymous and may subscribe to everything, as without this section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256/HS384/HS512 tokens: the key is the string's UTF-8 bytes (at
    /// least 32 bytes). Default unset.
    pub hmac_secret: Option<Secret>,
    /// PEM public key (`-----BEGIN PUBLIC KEY-----` or `BEGIN RSA PUBLIC KEY`) for RS256/384/512
    /// and PS256/384/512 (RSA), ES256/ES384 (EC P-256/P-384) or EdDSA (Ed25519) tokens; the
    /// key type is read from the file. Default unset.
    pub public_key_file: Option<PathBuf>,
    /// JSON Web Key Set (RFC 7517) of public keys (RSA, EC, OKP/Ed25519), each with a `kid`;
    /// a token names its key with the `kid` header. Read at start and again on SIGHUP (a
    /// file that fails to load then keeps the previous set). Default unset.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim, when set. Default unset (not checked).
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences must equal it), when set. Default
    /// unset (not checked).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 5.
    pub leeway_s: u64,
    /// Tokens whose `exp - iat` (or, without `iat`, `exp` minus now) is longer are refused
    /// (`too_long_lived`), seconds. Default 86400 (24 h).
    pub max_token_lifetime_s: u64,
    /// How long a connection without a token may wait before its `auth` message when
    /// anonymous access is off, ms; then it is closed with 4003. Default 5000.
    pub timeout_ms: u64,
    /// Patterns (`*`, `prefix.*` or topics) a connection without a token may subscribe to.
    /// Default: none when auth is on (every connection must authenticate), everything when
    /// it is off. Never the private namespace.
    pub anonymous_topics: Option<Vec<String>>,
    /// The private per-user namespace: `<prefix>.<sub>` and `<prefix>.<sub>.…` belong to the
    /// user `<sub>`. Default `user`.
    pub private_prefix: String,
    /// Roles (of `[auth.roles]`) whose holders may read every user's private namespace,
    /// patterns over it included. Default none.
    pub private_read_roles: Vec<String>,
    /// `[auth.roles]`: role name -> topic patterns its holders may subscribe to, e.g.
    /// `admin = ["admin.*"]`. Roles a token names that are not here grant nothing. Default
    /// none.
    pub roles: BTreeMap<String, Vec<String>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_s: 5,
            max_token_lifetime_s: 86_400,
            timeout_ms: 5_000,
            anonymous_topics: None,
            private_prefix: "user".into(),
            private_read_roles: Vec::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl AuthConfig {
    /// True when a key is configured: tokens are checked and permissions enforced.
    pub fn enabled(&self) -> bool {
        self.hmac_secret.is_some() || self.public_key_file.is_some() || self.jwks_file.is_some()
    }
}

/// Why a token was refused: the `reason` of the HTTP 401 body and of the `unauthorized`
/// error (docs/protocol.md, "Authentication").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// `exp` plus the leeway has passed.
    Expired,
    /// `nbf` minus the leeway is still ahead.
    NotYetValid,
    /// The signature does not verify with the chosen key.
    BadSignature,
    /// `alg` is `none`, unknown, or of a family with no configured key.
    BadAlgorithm,
    /// The `kid` names no key of the JWKS, or no `kid` while several keys are configured.
    UnknownKid,
    /// `iss` is not `auth.issuer`.
    BadIssuer,
    /// No audience of the token is `auth.audience`.
    BadAudience,
    /// A required claim is missing (`sub`, `exp`, and `iss`/`aud` when configured).
    MissingClaim,
    /// `exp - iat` is longer than `max_token_lifetime_s`.
    TooLongLived,
    /// `sub` is not 1 to 64 characters of `[A-Za-z0-9_:-]`.
    BadSub,
    /// The `topics` claim holds something that is not a pattern.
    BadClaim,
}

impl Reason {
    /// The reason as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadSignature => "bad_signature",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadIssuer => "bad_issuer",
            Reason::BadAudience => "bad_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::TooLongLived => "too_long_lived",
            Reason::BadSub => "bad_sub",
            Reason::BadClaim => "bad_claim",
        }
    }
}

/// A refused token: the reason, and a message for the client that never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: Reason,
    pub message: String,
}

fn refused(reason: Reason, message: impl Into<String>) -> Refused {
    Refused {
        reason,
        message: message.into(),
    }
}

/// A verified token: who it is, when it ends, and what it may read.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The `sub` claim.
    pub sub: Arc<str>,
    /// The `exp` claim, Unix seconds.
    pub exp: u64,
    /// `exp - iat` (or `exp` minus the time it was checked, without `iat`), seconds.
    pub lifetime: u64,
    /// The permissions of its `topics`, its roles and `anonymous_topics`.
    pub permissions: Permissions,
}

/// A public key of the JWKS, by `kid`.
struct JwksKey {
    kid: String,
    key: DecodingKey,
    family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one: then only that algorithm is accepted.
    alg: Option<Algorithm>,
}

/// Claims read from a token (after the signature and the time claims are verified).
#[derive(Deserialize)]
struct Claims {
    // Optional here so that a missing one is named by the library's required-claims check.
    sub: Option<String>,
    exp: Option<f64>,
    iat: Option<f64>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// The header fields the key choice reads, parsed by us before the library sees the token:
/// `alg: none` is then named as such instead of as a parse error.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// The configured keys, the claim rules and the permission policy. Shared by every shard.
pub struct Auth {
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, AlgorithmFamily)>,
    jwks_file: Option<PathBuf>,
    jwks: RwLock<Arc<Vec<JwksKey>>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    max_lifetime: u64,
    /// How long a connection may wait for its `auth` message.
    pub timeout: Duration,
    /// `None`: anonymous connections are not allowed (each must send `auth`).
    anonymous: Option<Permissions>,
    private: Private,
    private_read_roles: Vec<String>,
    roles: BTreeMap<String, Vec<Perm>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hmac", &self.hmac.is_some())
            .field("public", &self.public.as_ref().map(|p| p.1))
            .field("jwks_file", &self.jwks_file)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads the keys and checks the policy; `Ok(None)` when auth is off. Errors name the
    /// field and what is wrong with it (a file that cannot be read or parsed, a short
    /// secret, a bad pattern, an unknown role).
    pub fn new(config: &AuthConfig) -> Result<Option<Auth>, String> {
        if !config.enabled() {
            if config.anonymous_topics.is_some() || !config.roles.is_empty() {
                return Err(
                    "auth.anonymous_topics and auth.roles need a key (hmac_secret, \
                            public_key_file or jwks_file): without one auth is off and \
                            every topic is open"
                        .into(),
                );
            }
            return Ok(None);
        }
        let hmac = match &config.hmac_secret {
            Some(s) if s.0.len() < 32 => {
                return Err(format!(
                    "auth.hmac_secret must be at least 32 bytes (RFC 7518 3.2 asks for a key as \
                     long as the hash), got {}",
                    s.0.len()
                ))
            }
            Some(s) => Some(
                DecodingKey::from_secret(s.0.as_bytes())
                    .map_err(|e| format!("auth.hmac_secret: {e}"))?,
            ),
            None => None,
        };
        let public = match &config.public_key_file {
            Some(path) => Some(load_public_key(path)?),
            None => None,
        };
        let jwks = match &config.jwks_file {
            Some(path) => load_jwks(path)?,
            None => Vec::new(),
        };
        if config.leeway_s > 300 {
            return Err(format!(
                "auth.leeway_s must be at most 300, got {}",
                config.leeway_s
            ));
        }
        if config.max_token_lifetime_s == 0 || config.timeout_ms == 0 {
            return Err("auth.max_token_lifetime_s and auth.timeout_ms must be above 0".into());
        }
        if config.timeout_ms > 3_600_000 {
            return Err(format!(
                "auth.timeout_ms must be at most 3600000 (an hour), got {}",
                config.timeout_ms
            ));
        }
        if config.max_token_lifetime_s > MAX_LIFETIME_S {
            return Err(format!(
                "auth.max_token_lifetime_s must be at most {MAX_LIFETIME_S} (a year), got {}",
                config.max_token_lifetime_s
            ));
        }
        let private = Private::new(&config.private_prefix)?;
        let mut roles = BTreeMap::new();
        for (name, patterns) in &config.roles {
            let perms = Perm::parse_all(patterns).map_err(|e| format!("auth.roles.{name}: {e}"))?;
            if let Some(p) = perms.iter().find(|p| private.reaches(p)) {
                return Err(format!(
                    "auth.roles.{name}: {p} reaches into the private namespace {:?}: list the \
                     role in auth.private_read_roles instead (private topics are granted only \
                     to their owner and to those roles)",
                    private.prefix()
                ));
            }
            roles.insert(name.clone(), perms);
        }
        if let Some(r) = config
            .private_read_roles
            .iter()
            .find(|r| !roles.contains_key(*r))
        {
            return Err(format!(
                "auth.private_read_roles names {r:?}, which is not a role of [auth.roles]"
            ));
        }
        let anonymous = match &config.anonymous_topics {
            Some(list) if !list.is_empty() => {
                let perms =
                    Perm::parse_all(list).map_err(|e| format!("auth.anonymous_topics: {e}"))?;
                if let Some(p) = perms.iter().find(|p| private.reaches(p)) {
                    return Err(format!(
                        "auth.anonymous_topics: {p} is in the private namespace {:?}, which \
                         anonymous clients never read",
                        private.prefix()
                    ));
                }
                Some(Permissions {
                    perms,
                    sub: None,
                    private_read: false,
                })
            }
            _ => None,
        };
        Ok(Some(Auth {
            hmac,
            public,
            jwks_file: config.jwks_file.clone(),
            jwks: RwLock::new(Arc::new(jwks)),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_s,
            max_lifetime: config.max_token_lifetime_s,
            timeout: Duration::from_millis(config.timeout_ms),
            anonymous,
            private,
            private_read_roles: config.private_read_roles.clone(),
            roles,
        }))
    }

    /// Reads `jwks_file` again (SIGHUP). On an error the previous set stays in force and
    /// the error is returned; `Ok(n)` is the number of keys now in force.
    pub fn reload_jwks(&self) -> Result<usize, String> {
        let Some(path) = &self.jwks_file else {
            return Ok(0);
        };
        let keys = load_jwks(path)?;
        let n = keys.len();
        *self.jwks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// The permissions of a connection without a token; `None` when each must authenticate.
    pub fn anonymous(&self) -> Option<&Permissions> {
        self.anonymous.as_ref()
    }

    /// The private namespace's rule.
    pub fn private(&self) -> &Private {
        &self.private
    }

    /// Allowed clock skew, seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Checks a token at Unix time `now` (seconds) and returns what it grants. The token
    /// never appears in the error.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, Refused> {
        let header = raw_header(token)?;
        let alg_name = header.alg.as_deref().unwrap_or("");
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(refused(
                Reason::BadAlgorithm,
                "alg \"none\" is refused: tokens must be signed",
            ));
        }
        let alg: Algorithm = alg_name.parse().map_err(|_| {
            refused(
                Reason::BadAlgorithm,
                "alg is not a JWS algorithm this server accepts",
            )
        })?;
        let jwks = self.jwks.read().unwrap_or_else(|e| e.into_inner()).clone();
        let key = self.key_for(alg, header.kid.as_deref(), &jwks)?;
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = self.audience.is_some();
        v.aud = None;
        v.iss = None;
        let mut required = vec!["exp", "sub"];
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(library_refusal)?;
        self.grant(data.claims, now)
    }

    /// The key a token of `alg` (with `kid`) is checked against (see the module docs).
    fn key_for<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&str>,
        jwks: &'a [JwksKey],
    ) -> Result<&'a DecodingKey, Refused> {
        let family = alg.family();
        if family == AlgorithmFamily::Hmac {
            return self.hmac.as_ref().ok_or_else(|| {
                refused(
                    Reason::BadAlgorithm,
                    format!("{alg:?} tokens are not accepted: no hmac_secret is configured"),
                )
            });
        }
        let wrong_family = || {
            refused(
                Reason::BadAlgorithm,
                format!("{alg:?} does not match the type of the token's key"),
            )
        };
        let asymmetric = usize::from(self.public.is_some()) + jwks.len();
        match kid {
            Some(kid) if self.jwks_file.is_some() => {
                let k = jwks.iter().find(|k| k.kid == kid).ok_or_else(|| {
                    refused(
                        Reason::UnknownKid,
                        "the token's kid names no key of the JWKS",
                    )
                })?;
                if k.family != family || k.alg.is_some_and(|a| a != alg) {
                    return Err(wrong_family());
                }
                Ok(&k.key)
            }
            _ if asymmetric > 1 => Err(refused(
                Reason::UnknownKid,
                "several keys are configured: the token must name one with kid",
            )),
            _ => {
                let (key, key_family) = match (&self.public, jwks.first()) {
                    (Some((k, f)), _) => (k, *f),
                    (None, Some(k)) if k.alg.is_none_or(|a| a == alg) => (&k.key, k.family),
                    (None, Some(_)) => return Err(wrong_family()),
                    (None, None) => {
                        return Err(refused(
                            Reason::BadAlgorithm,
                            format!("{alg:?} tokens are not accepted: no public key is configured"),
                        ))
                    }
                };
                if key_family != family {
                    return Err(wrong_family());
                }
                Ok(key)
            }
        }
    }

    /// Checks the claims the library does not (sub, lifetime, topics) and builds the grant.
    fn grant(&self, claims: Claims, now: u64) -> Result<Grant, Refused> {
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(refused(Reason::MissingClaim, "sub and exp are required"));
        };
        if !valid_sub(&sub) {
            return Err(refused(
                Reason::BadSub,
                "sub must be 1 to 64 characters of [A-Za-z0-9_:-]",
            ));
        }
        let exp = exp.max(0.0) as u64;
        // RFC 7519 §4.1.4: not accepted *on or after* `exp` (plus the leeway). The library
        // refuses only after it (`exp < now - leeway`), which would let a connection closed
        // with 4004 at `exp` come straight back with the same token for the rest of that
        // second.
        if exp.saturating_add(self.leeway) <= now {
            return Err(refused(Reason::Expired, "the token has expired (exp)"));
        }
        // An `iat` in the future does not shorten the lifetime: it counts from now at most.
        let from = claims.iat.map_or(now, |iat| (iat.max(0.0) as u64).min(now));
        let lifetime = exp.saturating_sub(from);
        if lifetime > self.max_lifetime {
            return Err(refused(
                Reason::TooLongLived,
                format!(
                    "the token lives {lifetime} s; at most {} s are accepted",
                    self.max_lifetime
                ),
            ));
        }
        let mut perms =
            Perm::parse_all(&claims.topics).map_err(|e| refused(Reason::BadClaim, e))?;
        let mut private_read = false;
        for role in &claims.roles {
            if let Some(p) = self.roles.get(role) {
                perms.extend(p.iter().cloned());
            }
            private_read |= self.private_read_roles.contains(role);
        }
        if let Some(a) = &self.anonymous {
            perms.extend(a.perms.iter().cloned());
        }
        Ok(Grant {
            permissions: Permissions {
                perms,
                sub: Some(sub.as_str().into()),
                private_read,
            },
            sub: sub.into(),
            exp,
            lifetime,
        })
    }
}

/// `sub` is 1 to 64 characters of `[A-Za-z0-9_:-]`: never a dot, so a user's name can
/// never reach into another user's private namespace.
pub fn valid_sub(sub: &str) -> bool {
    (1..=64).contains(&sub.len())
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
}

fn raw_header(token: &str) -> Result<RawHeader, Refused> {
    let malformed = || {
        refused(
            Reason::Malformed,
            "not a JWT: three base64url parts of JSON",
        )
    };
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| malformed())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed())
}

fn library_refusal(e: jsonwebtoken::errors::Error) -> Refused {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => refused(Reason::Expired, "the token has expired (exp)"),
        K::ImmatureSignature => refused(Reason::NotYetValid, "the token is not valid yet (nbf)"),
        K::InvalidSignature => refused(Reason::BadSignature, "the signature does not verify"),
        K::InvalidIssuer => refused(Reason::BadIssuer, "iss is not this server's issuer"),
        K::InvalidAudience => refused(Reason::BadAudience, "aud does not name this server"),
        K::MissingRequiredClaim(c) => {
            refused(Reason::MissingClaim, format!("the claim {c:?} is required"))
        }
        K::InvalidAlgorithm | K::MissingAlgorithm => {
            refused(Reason::BadAlgorithm, "the token's alg does not fit its key")
        }
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            refused(Reason::BadSignature, "the signature does not verify")
        }
        _ => refused(
            Reason::Malformed,
            "not a JWT of valid claims (sub and exp required, numbers for times)",
        ),
    }
}

/// Reads a PEM public key and its family.
fn load_public_key(path: &PathBuf) -> Result<(DecodingKey, AlgorithmFamily), String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("auth.public_key_file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY") {
        return Err(format!(
            "auth.public_key_file {} holds a private key: give the server the public key only \
             (openssl pkey -in private.pem -pubout -out public.pem)",
            path.display()
        ));
    }
    type Load = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let tries: [(Load, AlgorithmFamily); 3] = [
        (DecodingKey::from_rsa_pem, AlgorithmFamily::Rsa),
        (DecodingKey::from_ec_pem, AlgorithmFamily::Ec),
        (DecodingKey::from_ed_pem, AlgorithmFamily::Ed),
    ];
    for (load, family) in tries {
        if let Ok(key) = load(&pem) {
            return Ok((key, family));
        }
    }
    Err(format!(
        "auth.public_key_file {}: not a PEM RSA, EC (P-256/P-384) or Ed25519 public key",
        path.display()
    ))
}

/// Reads a JWKS file. Symmetric (`oct`) keys are refused (a shared secret belongs in
/// `hmac_secret`, never beside public keys). Left out: keys meant for encryption (`"use":"enc"`,
/// `key_ops` without `verify`, or an `alg` that is not a signature algorithm), which identity
/// providers publish beside their signing keys, and keys without `kid` or of a type or curve
/// this server cannot use. A file with no usable key is an error naming what was left out.
fn load_jwks(path: &PathBuf) -> Result<Vec<JwksKey>, String> {
    let where_ = || format!("auth.jwks_file {}", path.display());
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", where_()))?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not a JWK set: {e}", where_()))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    let mut skipped: Vec<String> = Vec::new();
    for jwk in &set.keys {
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            skipped.push(format!("{:?} (\"use\":\"enc\")", jwk.common.key_id));
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                Err(_) => {
                    // An encryption algorithm (RSA-OAEP, ...).
                    skipped.push(format!("{:?} (alg {a})", jwk.common.key_id));
                    continue;
                }
            },
            None => None,
        };
        if jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&jsonwebtoken::jwk::KeyOperations::Verify))
        {
            skipped.push(format!("{:?} (key_ops without verify)", jwk.common.key_id));
            continue;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            skipped.push("a key without kid".to_string());
            continue;
        };
        let family = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "{}: key {kid:?} is symmetric (oct); put a shared secret in hmac_secret",
                    where_()
                ))
            }
            _ => {
                skipped.push(format!("key {kid:?} of an unknown type"));
                continue;
            }
        };
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(k) => k,
            Err(e) => {
                skipped.push(format!("key {kid:?}: {e}"));
                continue;
            }
        };
        if keys.iter().any(|k: &JwksKey| k.kid == kid) {
            return Err(format!("{}: kid {kid:?} appears twice", where_()));
        }
        keys.push(JwksKey {
            kid,
            key,
            family,
            alg,
        });
    }
    if keys.is_empty() {
        let left_out = if skipped.is_empty() {
            String::new()
        } else {
            format!(" (left out: {})", skipped.join("; "))
        };
        return Err(format!(
            "{}: no key to verify signatures with{left_out}",
            where_()
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;

/// Constant-time equality of two secrets (a publisher key, the admin key): every byte of the
/// longer input is looked at whatever differs, so the time taken does not tell where.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}
