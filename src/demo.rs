//! `corecast demo`: a synthetic market feed published in-process, so a newcomer sees data flow
//! with one command. Runs on its own thread and paces itself in 10 ms ticks.
//!
//! Per symbol, on average: one `ticker.<SYM>` a second, two `trades.<SYM>`, and six
//! `book.<SYM>` deltas (one or two price levels each) with the whole book as a snapshot every
//! [`SNAPSHOT_EVERY`]. Prices start near each market's real price and move as the book does;
//! every book message carries the checksum of `crate::book` (docs/market-data.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::publisher::Publisher;

const BASES: [&str; 50] = [
    "BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "AVAX", "DOT", "LINK", "MATIC", "LTC", "BCH",
    "ATOM", "UNI", "XLM", "ETC", "FIL", "APT", "ARB", "OP", "NEAR", "ALGO", "ICP", "AAVE", "MKR",
    "SNX", "CRV", "LDO", "INJ", "SUI", "SEI", "TIA", "RUNE", "GRT", "SAND", "MANA", "AXS", "FTM",
    "EGLD", "HBAR", "VET", "XTZ", "EOS", "KAVA", "ZEC", "DASH", "COMP", "YFI", "SUSHI", "1INCH",
];
const QUOTES: [&str; 7] = ["USD", "USDT", "EUR", "USDC", "BTC", "ETH", "GBP"];

/// Feed settings.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Number of symbols (at most 300). Default 300.
    pub symbols: usize,
    /// Multiplies every rate; 1.0 is about 2,700 messages/s for 300 symbols. Default 1.0.
    pub rate_scale: f64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            symbols: 300,
            rate_scale: 1.0,
        }
    }
}

/// Symbol names of the feed, `BASE` + `QUOTE` (`BTCUSD`), in a stable order.
pub fn symbols(n: usize) -> Vec<String> {
    QUOTES
        .iter()
        .flat_map(|q| BASES.iter().map(move |b| format!("{b}{q}")))
        .filter(|s| !matches!(s.as_str(), "BTCBTC" | "ETHETH"))
        .take(n)
        .collect()
}

/// xorshift64*: a small deterministic generator, enough for a synthetic feed.
mod orders;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Market {
    symbol: String,
    price: f64,
    tick: f64,
    trade_id: u64,
    volume: f64,
}

/// A running feed; stops when dropped or told to.
pub struct Feed {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Feed {
    /// Starts publishing on a new thread.
    pub fn start(publisher: Publisher, config: FeedConfig) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("demo-feed".into())
            .spawn(move || run(publisher, config, flag))
            .expect("spawning the feed thread");
        Feed {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the feed and returns how many events it published.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where `corecast demo` serves its admin endpoint unless told otherwise (Prometheus'
/// conventional exporter port range).
pub const ADMIN: &str = "127.0.0.1:9464";

/// The demo user's private topic: its orders and fills.
pub const USER_TOPIC: &str = "user.demo.orders";

/// Lifetime of the demo user's token, seconds (12 h).
const USER_TOKEN_TTL: u64 = 12 * 3600;

/// Turns on auth for the demo, unless the configuration already did: an HS256 secret made
/// at this start (random), every public topic open without a token (`anonymous_topics =
/// ["*"]`), and the private namespace `user.` for tokens. Returns the demo user's token
/// (`sub` `demo`, 12 h), or `None` when auth was configured by the caller (then the demo
/// mints nothing).
pub fn declare_auth(config: &mut crate::config::Config) -> anyhow::Result<Option<String>> {
    if config.auth.enabled() {
        return Ok(None);
    }
    let secret =
        crate::token::random_hex(32).context("reading /dev/urandom for the demo's secret")?;
    config.auth.hmac_secret = Some(corecast_shards::auth::Secret(secret.clone()));
    if config.auth.anonymous_topics.is_none() {
        config.auth.anonymous_topics = Some(vec!["*".into()]);
    }
    let spec = crate::token::TokenSpec {
        sub: "demo".into(),
        ttl_s: USER_TOKEN_TTL,
        topics: Vec::new(),
        roles: Vec::new(),
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
        kid: None,
        not_before_s: None,
    };
    let token = crate::token::mint(
        &spec,
        &crate::token::SigningKey::Hmac(secret, jsonwebtoken::Algorithm::HS256),
    )?;
    Ok(Some(token))
}

/// Declares the demo's `book.` namespace (snapshot topics), unless the configuration already
/// has a namespace of that prefix.
pub fn declare_namespaces(config: &mut crate::config::Config) {
    if !config.namespaces.iter().any(|n| n.prefix == "book.") {
        config
            .namespaces
            .push(corecast_shards::namespace::Namespace {
                prefix: "book.".into(),
                snapshots: true,
                gap_policy: None,
                history_max_messages: None,
                history_max_age_ms: None,
            });
    }
}

/// Approximate USD price of each base in [`BASES`] (late 2025), so quotes look like a real
/// market's: BTCUSD near 90,000, DOGEUSD near 0.15.
const BASE_USD: [f64; 50] = [
    90_000.0, 3_000.0, 140.0, 2.1, 0.42, 0.15, 13.0, 2.2, 13.0, 0.2, 85.0, 520.0, 2.5, 6.0, 0.25,
    13.0, 1.6, 1.8, 0.22, 0.35, 1.9, 0.14, 3.5, 180.0, 1_500.0, 0.6, 0.4, 0.6, 6.0, 1.6, 0.15, 0.7,
    0.7, 0.05, 0.15, 0.16, 1.0, 0.7, 8.0, 0.14, 0.013, 0.5, 0.5, 0.12, 400.0, 50.0, 30.0, 4_000.0,
    0.4, 0.18,
];

/// Price of one USD in each quote of [`QUOTES`].
const QUOTE_PER_USD: [f64; 7] = [
    1.0,
    1.0005,
    0.86,
    0.9998,
    1.0 / 90_000.0,
    1.0 / 3_000.0,
    0.75,
];

/// Levels per side of every demo book.
pub const BOOK_DEPTH: usize = 10;

/// How often each symbol's book is published whole (as a snapshot); symbols are staggered.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(3);

/// The starting price of `symbol` (as made by [`symbols`]) in its quote currency.
pub fn start_price(symbol: &str) -> f64 {
    let (q, quote) = QUOTES
        .iter()
        .enumerate()
        .filter(|(_, q)| symbol.ends_with(*q))
        .max_by_key(|(_, q)| q.len())
        .expect("a demo symbol ends with a quote");
    let base = &symbol[..symbol.len() - quote.len()];
    let b = BASES.iter().position(|x| *x == base).unwrap_or(0);
    BASE_USD[b] * QUOTE_PER_USD[q]
}

/// Decimals of a price near `price`: six significant digits (BTCUSD 0.1, ETHUSD 0.01,
/// DOGEUSD 0.000001), as exchanges tick.
fn decimals_for(price: f64) -> u32 {
    (5 - price.log10().floor() as i32).clamp(0, 10) as u32
}

/// One symbol's book, generated: levels in integer ticks and sizes in units of 0.0001, and
/// the same book as a client keeps it (for the checksum).
struct BookFeed {
    bids: std::collections::BTreeMap<i64, u64>,
    asks: std::collections::BTreeMap<i64, u64>,
    view: crate::book::Book,
    decimals: u32,
    next_snapshot: Instant,
}

impl BookFeed {
    fn new(mid: i64, decimals: u32, rng: &mut Rng, first_snapshot: Instant) -> BookFeed {
        let mut b = BookFeed {
            bids: Default::default(),
            asks: Default::default(),
            view: crate::book::Book::new(BOOK_DEPTH),
            decimals,
            next_snapshot: first_snapshot,
        };
        let (mut bid, mut ask) = (mid - 1, mid + 1);
        for _ in 0..BOOK_DEPTH {
            b.bids.insert(bid, size(rng));
            b.asks.insert(ask, size(rng));
            bid -= 1 + (rng.next() % 3) as i64;
            ask += 1 + (rng.next() % 3) as i64;
        }
        b.rebuild_view();
        b
    }

    fn price(&self, ticks: i64) -> String {
        let scale = 10i64.pow(self.decimals);
        if self.decimals == 0 {
            return ticks.to_string();
        }
        format!(
            "{}.{:0width$}",
            ticks / scale,
            ticks % scale,
            width = self.decimals as usize
        )
    }

    fn rebuild_view(&mut self) {
        self.view.clear();
        let levels: Vec<(crate::book::Side, String, String)> = self
            .bids
            .iter()
            .map(|(p, s)| (crate::book::Side::Bid, self.price(*p), size_text(*s)))
            .chain(
                self.asks
                    .iter()
                    .map(|(p, s)| (crate::book::Side::Ask, self.price(*p), size_text(*s))),
            )
            .collect();
        for (side, p, s) in levels {
            let _ = self.view.set(side, &p, &s);
        }
    }

    /// The whole book as a snapshot's `data`.
    fn snapshot(&self, symbol: &str) -> String {
        let side = |levels: Vec<(&i64, &u64)>| {
            levels
                .into_iter()
                .map(|(p, s)| format!(r#"["{}","{}"]"#, self.price(*p), size_text(*s)))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            r#"{{"symbol":"{symbol}","depth":{BOOK_DEPTH},"bids":[{}],"asks":[{}],"checksum":{}}}"#,
            side(self.bids.iter().rev().collect()),
            side(self.asks.iter().collect()),
            self.view.checksum()
        )
    }

    /// One random change: a level's size, or a level removed and another added on the same
    /// side (the book keeps its depth, never crosses). Returns the delta's `data`.
    fn delta(&mut self, symbol: &str, rng: &mut Rng) -> String {
        let bid_side = rng.next() & 1 == 0;
        let (best_bid, best_ask) = (
            *self.bids.keys().next_back().unwrap_or(&0),
            *self.asks.keys().next().unwrap_or(&0),
        );
        let levels = if bid_side {
            &mut self.bids
        } else {
            &mut self.asks
        };
        let mut changes: Vec<(i64, u64)> = Vec::new();
        let pick = *levels
            .keys()
            .nth((rng.next() % levels.len().max(1) as u64) as usize)
            .unwrap_or(&0);
        if rng.unit() < 0.5 {
            let s = size(rng);
            levels.insert(pick, s);
            changes.push((pick, s));
        } else {
            levels.remove(&pick);
            changes.push((pick, 0));
            // A new level within the side's span, on the right side of the other's best.
            let (lo, hi) = if bid_side {
                (best_bid - 3 * BOOK_DEPTH as i64, best_ask - 1)
            } else {
                (best_bid + 1, best_ask + 3 * BOOK_DEPTH as i64)
            };
            for _ in 0..16 {
                let p = lo + (rng.next() % (hi - lo + 1).max(1) as u64) as i64;
                if p != pick && !levels.contains_key(&p) {
                    let s = size(rng);
                    levels.insert(p, s);
                    changes.push((p, s));
                    break;
                }
            }
        }
        // Keep the best BOOK_DEPTH, as clients do.
        while levels.len() > BOOK_DEPTH {
            let worst = if bid_side {
                *levels.keys().next().unwrap_or(&0)
            } else {
                *levels.keys().next_back().unwrap_or(&0)
            };
            levels.remove(&worst);
        }
        let side = if bid_side {
            crate::book::Side::Bid
        } else {
            crate::book::Side::Ask
        };
        let mut list = Vec::with_capacity(changes.len());
        for (p, s) in changes {
            let (price, text) = (self.price(p), size_text(s));
            let _ = self.view.set(side, &price, &text);
            list.push(format!(r#"["{price}","{text}"]"#));
        }
        let (bids, asks) = if bid_side {
            (list.join(","), String::new())
        } else {
            (String::new(), list.join(","))
        };
        format!(
            r#"{{"symbol":"{symbol}","bids":[{bids}],"asks":[{asks}],"checksum":{}}}"#,
            self.view.checksum()
        )
    }

    /// Mid price in ticks.
    fn mid(&self) -> i64 {
        let bid = *self.bids.keys().next_back().unwrap_or(&0);
        let ask = *self.asks.keys().next().unwrap_or(&0);
        (bid + ask) / 2
    }
}

/// A level's size: 0.0001 to 5 in units of 0.0001.
fn size(rng: &mut Rng) -> u64 {
    1 + rng.next() % 50_000
}

fn size_text(units: u64) -> String {
    format!("{}.{:04}", units / 10_000, units % 10_000)
}

fn run(publisher: Publisher, config: FeedConfig, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let names = symbols(config.symbols.min(300));
    let count = names.len().max(1) as u32;
    let mut markets: Vec<(Market, BookFeed)> = names
        .into_iter()
        .enumerate()
        .map(|(i, symbol)| {
            let price = start_price(&symbol);
            let decimals = decimals_for(price);
            let tick = 10f64.powi(-(decimals as i32));
            let mid = (price / tick).round() as i64;
            let first = started + SNAPSHOT_EVERY * i as u32 / count;
            let book = BookFeed::new(mid, decimals, &mut rng, first);
            (
                Market {
                    symbol,
                    price,
                    tick,
                    trade_id: 0,
                    volume: 0.0,
                },
                book,
            )
        })
        .collect();
    let tick = Duration::from_millis(10);
    // Expected events per symbol per 10 ms tick.
    let (p_ticker, p_trade, p_book) = (
        0.01 * config.rate_scale,
        0.02 * config.rate_scale,
        0.06 * config.rate_scale,
    );
    let mut published = 0u64;
    let mut next = Instant::now();
    let mut orders = orders::Orders::default();
    let mut prices: Vec<(String, f64, usize)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        prices.clear();
        prices.extend(
            markets
                .iter()
                .take(8)
                .map(|(m, b)| (m.symbol.clone(), m.price, b.decimals as usize)),
        );
        published += orders.tick(&mut rng, &publisher, &prices);
        let now = Instant::now();
        for (m, book) in &mut markets {
            // Trades and tickers follow the book's mid.
            m.price = book.mid() as f64 * m.tick;
            let d = book.decimals as usize;
            for _ in 0..events(&mut rng, p_trade) {
                m.trade_id += 1;
                let qty = 0.001 + rng.unit() * 2.0;
                m.volume += qty;
                let side = if rng.next() & 1 == 0 { "buy" } else { "sell" };
                let data = format!(
                    r#"{{"symbol":"{}","id":{},"price":"{:.d$}","qty":"{qty:.4}","side":"{side}"}}"#,
                    m.symbol, m.trade_id, m.price
                );
                published += u64::from(
                    publisher
                        .publish(&format!("trades.{}", m.symbol), data)
                        .is_ok(),
                );
            }
            let topic = format!("book.{}", m.symbol);
            if now >= book.next_snapshot {
                book.next_snapshot += SNAPSHOT_EVERY;
                let data = book.snapshot(&m.symbol);
                published += u64::from(publisher.publish_snapshot(&topic, data).is_ok());
            }
            for _ in 0..events(&mut rng, p_book) {
                let data = book.delta(&m.symbol, &mut rng);
                published += u64::from(publisher.publish(&topic, data).is_ok());
            }
            if events(&mut rng, p_ticker) > 0 {
                let data = format!(
                    r#"{{"symbol":"{}","bid":"{:.d$}","ask":"{:.d$}","last":"{:.d$}","volume_24h":"{:.4}"}}"#,
                    m.symbol,
                    m.price - m.tick,
                    m.price + m.tick,
                    m.price,
                    m.volume
                );
                published += u64::from(
                    publisher
                        .publish(&format!("ticker.{}", m.symbol), data)
                        .is_ok(),
                );
            }
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now; // behind schedule: do not burst to catch up
        }
    }
    published
}

/// Number of events this tick for an expected count `p` (Bernoulli for p < 1, else rounded).
fn events(rng: &mut Rng, p: f64) -> u32 {
    let whole = p.floor();
    let frac = p - whole;
    whole as u32 + u32::from(rng.unit() < frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hundred_distinct_valid_symbols() {
        let s = symbols(300);
        assert_eq!(s.len(), 300);
        let mut d = s.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 300);
        for sym in &s {
            corecast_shards::topic::validate_topic(&format!("book.{sym}")).unwrap();
        }
        assert_eq!(s[0], "BTCUSD");
    }

    #[test]
    fn prices_are_near_real_markets_with_exchange_like_ticks() {
        let btc = start_price("BTCUSD");
        assert!((50_000.0..200_000.0).contains(&btc), "{btc}");
        assert_eq!(decimals_for(btc), 1);
        assert_eq!(decimals_for(start_price("ETHUSD")), 2);
        let doge = start_price("DOGEUSD");
        assert!((0.01..1.0).contains(&doge), "{doge}");
        let ethbtc = start_price("ETHBTC");
        assert!((0.01..0.1).contains(&ethbtc), "{ethbtc}");
        assert!(start_price("BTCEUR") < btc && start_price("BTCGBP") < btc);
    }

    #[test]
    fn generated_books_stay_whole_uncrossed_and_match_their_checksums() {
        let mut rng = Rng(7);
        let mut b = BookFeed::new(900_000, 1, &mut rng, Instant::now());
        let mut client = crate::book::Book::new(BOOK_DEPTH);
        let mut snap = b.snapshot("BTCUSD").into_bytes();
        client
            .apply(&simd_json::to_owned_value(&mut snap).unwrap(), true)
            .unwrap();
        for _ in 0..5_000 {
            let mut d = b.delta("BTCUSD", &mut rng).into_bytes();
            client
                .apply(&simd_json::to_owned_value(&mut d).unwrap(), false)
                .unwrap();
            assert_eq!(b.bids.len(), BOOK_DEPTH);
            assert_eq!(b.asks.len(), BOOK_DEPTH);
            assert!(b.bids.keys().next_back() < b.asks.keys().next());
        }
    }
}
