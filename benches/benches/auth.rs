//! What a token costs the shard that checks it (at the upgrade or an `auth` message, never
//! per published message): `Auth::verify` for each key family, and the permission check of
//! one subscribe. Tokens are minted with `corecast::token` from the keys in tests/keys/.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use corecast::token::{mint, SigningKey, TokenSpec};
use corecast_shards::auth::{Auth, AuthConfig, Secret};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

fn key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/keys")
        .join(name)
}

fn spec() -> TokenSpec {
    TokenSpec {
        sub: "alice".into(),
        ttl_s: 3600,
        topics: vec!["trades.*".into(), "book.*".into()],
        roles: vec![],
        issuer: None,
        audience: None,
        kid: None,
        not_before_s: None,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn verify(c: &mut Criterion) {
    use jsonwebtoken::Algorithm as A;
    let mut g = c.benchmark_group("auth_verify");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, AuthConfig, SigningKey); 4] = [
        (
            "HS256",
            AuthConfig {
                hmac_secret: Some(Secret(SECRET.into())),
                ..AuthConfig::default()
            },
            SigningKey::Hmac(SECRET.into(), A::HS256),
        ),
        (
            "RS256_2048",
            AuthConfig {
                public_key_file: Some(key("rsa-public.pem")),
                ..AuthConfig::default()
            },
            SigningKey::Pem(key("rsa-private.pem"), A::RS256),
        ),
        (
            "ES256",
            AuthConfig {
                public_key_file: Some(key("ec-public.pem")),
                ..AuthConfig::default()
            },
            SigningKey::Pem(key("ec-private.pem"), A::ES256),
        ),
        (
            "EdDSA",
            AuthConfig {
                public_key_file: Some(key("ed-public.pem")),
                ..AuthConfig::default()
            },
            SigningKey::Pem(key("ed-private.pem"), A::EdDSA),
        ),
    ];
    for (name, config, signing) in cases {
        let auth = Auth::new(&config).unwrap().unwrap();
        let token = mint(&spec(), &signing).unwrap();
        let t = now();
        g.bench_function(name, |b| b.iter(|| auth.verify(&token, t).unwrap().exp));
    }
    g.finish();
}

fn permission_check(c: &mut Criterion) {
    let auth = Auth::new(&AuthConfig {
        hmac_secret: Some(Secret(SECRET.into())),
        anonymous_topics: Some(vec!["ticker.*".into(), "news.*".into()]),
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    let token = mint(
        &spec(),
        &SigningKey::Hmac(SECRET.into(), jsonwebtoken::Algorithm::HS256),
    )
    .unwrap();
    let grant = auth.verify(&token, now()).unwrap();
    let topics = [
        "trades.BTCUSD",
        "book.ETHUSD",
        "ticker.SOLUSD",
        "user.alice.orders",
    ];
    let mut g = c.benchmark_group("auth_permission");
    g.throughput(Throughput::Elements(topics.len() as u64));
    g.bench_function("subscribe_of_4_topics", |b| {
        b.iter(|| {
            topics
                .iter()
                .filter(|t| {
                    let sel = corecast_shards::topic::parse_selector(t).unwrap();
                    grant.permissions.allows(auth.private(), sel)
                })
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, verify, permission_check);
criterion_main!(benches);
