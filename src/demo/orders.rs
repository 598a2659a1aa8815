//! The demo's private stream: the fake user `demo`'s orders and fills on
//! [`super::USER_TOPIC`] (`user.demo.orders`), readable only with that user's token
//! (docs/security.md). An order every ~2 s on a demo market, then its fills, each event a
//! JSON object with `type` `"order"` or `"fill"`.

use super::Rng;
use crate::publisher::Publisher;

/// One open order of the fake user.
struct Open {
    id: u64,
    symbol: String,
    side: &'static str,
    price: f64,
    decimals: usize,
    left: f64,
}

/// The fake user's order flow.
#[derive(Default)]
pub(super) struct Orders {
    next_id: u64,
    open: Vec<Open>,
}

impl Orders {
    /// One 10 ms tick: maybe a new order (p = 0.005, one per ~2 s), maybe a fill of an open
    /// one (p = 0.01 each). `price_of` gives a market's price and decimals. Returns the events
    /// published.
    pub(super) fn tick(
        &mut self,
        rng: &mut Rng,
        publisher: &Publisher,
        markets: &[(String, f64, usize)],
    ) -> u64 {
        let mut published = 0;
        if !markets.is_empty() && rng.unit() < 0.005 {
            self.next_id += 1;
            let (symbol, price, decimals) = &markets[(rng.next() % markets.len() as u64) as usize];
            let side = if rng.unit() < 0.5 { "buy" } else { "sell" };
            let qty = ((rng.unit() * 9.0 + 1.0) * 100.0).round() / 100.0;
            let o = Open {
                id: self.next_id,
                symbol: symbol.clone(),
                side,
                price: *price,
                decimals: *decimals,
                left: qty,
            };
            let data = format!(
                r#"{{"type":"order","order_id":{},"symbol":"{}","side":"{}","price":"{:.d$}","qty":"{:.2}","status":"open"}}"#,
                o.id,
                o.symbol,
                o.side,
                o.price,
                o.left,
                d = o.decimals
            );
            published += u64::from(publisher.publish(super::USER_TOPIC, data).is_ok());
            self.open.push(o);
        }
        let mut i = 0;
        while i < self.open.len() {
            if rng.unit() >= 0.01 {
                i += 1;
                continue;
            }
            let o = &mut self.open[i];
            let qty = if o.left <= 0.5 {
                o.left
            } else {
                ((o.left * rng.unit()).max(0.01) * 100.0).round() / 100.0
            };
            o.left = ((o.left - qty) * 100.0).round() / 100.0;
            let status = if o.left <= 0.0 { "filled" } else { "partial" };
            let data = format!(
                r#"{{"type":"fill","order_id":{},"symbol":"{}","side":"{}","price":"{:.d$}","qty":"{:.2}","left":"{:.2}","status":"{}"}}"#,
                o.id,
                o.symbol,
                o.side,
                o.price,
                qty,
                o.left,
                status,
                d = o.decimals
            );
            published += u64::from(publisher.publish(super::USER_TOPIC, data).is_ok());
            if o.left <= 0.0 {
                self.open.swap_remove(i);
            } else {
                i += 1;
            }
        }
        published
    }
}
