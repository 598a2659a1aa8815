//! `corecast demo`: a synthetic market feed published in-process, so a newcomer sees data flow
//! with one command. Runs on its own thread and paces itself in 10 ms ticks.
//!
//! Per symbol, on average: one `ticker.<SYM>` a second, two `trades.<SYM>` and six
//! `book.<SYM>` deltas (one or two price levels each). Prices follow a random walk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

fn run(publisher: Publisher, config: FeedConfig, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut markets: Vec<Market> = symbols(config.symbols.min(300))
        .into_iter()
        .enumerate()
        .map(|(i, symbol)| {
            let price = 10f64.powf(-1.0 + 6.0 * ((i * 7919) % 1000) as f64 / 1000.0);
            Market {
                symbol,
                price,
                tick: price / 10_000.0,
                trade_id: 0,
                volume: 0.0,
            }
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
    while !stop.load(Ordering::Relaxed) {
        for m in &mut markets {
            // Random walk: one tick up or down, now and then.
            if rng.unit() < 0.2 {
                let dir = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
                m.price = (m.price + dir * m.tick).max(m.tick);
            }
            for _ in 0..events(&mut rng, p_trade) {
                m.trade_id += 1;
                let qty = 0.001 + rng.unit() * 2.0;
                m.volume += qty;
                let side = if rng.next() & 1 == 0 { "buy" } else { "sell" };
                let data = format!(
                    r#"{{"symbol":"{}","id":{},"price":"{:.6}","qty":"{qty:.4}","side":"{side}"}}"#,
                    m.symbol, m.trade_id, m.price
                );
                published += u64::from(
                    publisher
                        .publish(&format!("trades.{}", m.symbol), data)
                        .is_ok(),
                );
            }
            for _ in 0..events(&mut rng, p_book) {
                let level = (rng.next() % 10) as f64;
                let qty = if rng.unit() < 0.3 {
                    0.0
                } else {
                    rng.unit() * 5.0
                };
                let data = format!(
                    r#"{{"symbol":"{}","bids":[["{:.6}","{qty:.4}"]],"asks":[["{:.6}","{:.4}"]]}}"#,
                    m.symbol,
                    m.price - m.tick * (1.0 + level),
                    m.price + m.tick * (1.0 + level),
                    rng.unit() * 5.0
                );
                published += u64::from(
                    publisher
                        .publish(&format!("book.{}", m.symbol), data)
                        .is_ok(),
                );
            }
            if events(&mut rng, p_ticker) > 0 {
                let data = format!(
                    r#"{{"symbol":"{}","bid":"{:.6}","ask":"{:.6}","last":"{:.6}","volume_24h":"{:.4}"}}"#,
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
}
