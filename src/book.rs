//! A price-level order book as the demo publishes it and as a client keeps it: levels keyed by
//! price, prices and sizes as the decimal strings the publisher sent, and the checksum both
//! sides compute over those strings (docs/market-data.md, "Order books and checksums").
//!
//! Messages (`data` of `book.<SYMBOL>`):
//! - snapshot (published with `"snapshot": true`):
//!   `{"symbol":"BTCUSD","depth":10,"bids":[["91234.5","0.4210"],...],"asks":[...],"checksum":123}`
//!   with every level of each side (best first), at most `depth`;
//! - delta: `{"symbol":"BTCUSD","bids":[[price,size],...],"asks":[...],"checksum":123}`, each
//!   level replacing the one at its price, a size of zero (`"0.0000"`) removing it; after a
//!   delta a client keeps the best `depth` levels of each side.
//!
//! `checksum`: CRC-32 (IEEE 802.3, as zlib's `crc32`) of the ASCII text made of the best 10
//! asks (lowest first) then the best 10 bids (highest first), each level written
//! `price:size` with both strings exactly as sent, levels separated by `,` and the two sides by
//! `|`: `"91234.6:0.2000,91234.9:1.5000|91234.5:0.4210,91234.1:3.0000"`. An empty side is
//! empty text. Computed after the message is applied (and truncated to `depth`).

use std::collections::BTreeMap;

/// Levels per side the checksum covers.
pub const CHECKSUM_LEVELS: usize = 10;

/// A price, ordered by its value; equal values written differently are different levels only
/// if their text differs (the publisher writes each price one way).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Price(f64);

impl Eq for Price {}

impl PartialOrd for Price {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Price {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Which side of the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bid,
    Ask,
}

/// A level as sent: its price and size text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub price: String,
    pub size: String,
}

/// Why a book message could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BookError {
    #[error("a level is not [price, size] of two decimal strings: {0}")]
    BadLevel(String),
    #[error("checksum {sent} sent, {computed} computed")]
    Checksum { sent: u32, computed: u32 },
    #[error("\"checksum\" is missing or not an unsigned 32-bit integer")]
    NoChecksum,
}

/// An order book of at most `depth` levels per side.
#[derive(Debug, Clone, Default)]
pub struct Book {
    depth: usize,
    bids: BTreeMap<Price, Level>,
    asks: BTreeMap<Price, Level>,
}

impl Book {
    /// An empty book keeping `depth` levels per side.
    pub fn new(depth: usize) -> Book {
        Book {
            depth,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
        }
    }

    /// Levels kept per side.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Sets the level at `price` to `size` (a zero size removes it), then keeps the best
    /// `depth` levels of that side.
    pub fn set(&mut self, side: Side, price: &str, size: &str) -> Result<(), BookError> {
        let bad = || BookError::BadLevel(format!("[{price:?}, {size:?}]"));
        let p: f64 = price.parse().map_err(|_| bad())?;
        let s: f64 = size.parse().map_err(|_| bad())?;
        if !p.is_finite() || !s.is_finite() || s < 0.0 {
            return Err(bad());
        }
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if s == 0.0 {
            levels.remove(&Price(p));
        } else {
            levels.insert(
                Price(p),
                Level {
                    price: price.to_string(),
                    size: size.to_string(),
                },
            );
        }
        while levels.len() > self.depth {
            // Bids keep the highest prices, asks the lowest.
            match side {
                Side::Bid => levels.pop_first(),
                Side::Ask => levels.pop_last(),
            };
        }
        Ok(())
    }

    /// Removes every level (a snapshot replaces the book).
    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    /// Bids, best (highest) first.
    pub fn bids(&self) -> impl Iterator<Item = &Level> {
        self.bids.values().rev()
    }

    /// Asks, best (lowest) first.
    pub fn asks(&self) -> impl Iterator<Item = &Level> {
        self.asks.values()
    }

    /// The checksum text (see the module documentation).
    pub fn checksum_text(&self) -> String {
        let side = |levels: &mut dyn Iterator<Item = &Level>| {
            levels
                .take(CHECKSUM_LEVELS)
                .map(|l| format!("{}:{}", l.price, l.size))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("{}|{}", side(&mut self.asks()), side(&mut self.bids()))
    }

    /// CRC-32 of [`Book::checksum_text`].
    pub fn checksum(&self) -> u32 {
        crc32fast::hash(self.checksum_text().as_bytes())
    }

    /// Applies one message's `data` (already parsed): a snapshot clears the book first. Then
    /// checks its `checksum`. On an error the book may be partly updated: resync.
    pub fn apply(&mut self, data: &simd_json::OwnedValue, snapshot: bool) -> Result<(), BookError> {
        use simd_json::prelude::*;
        if snapshot {
            self.clear();
        }
        for (key, side) in [("bids", Side::Bid), ("asks", Side::Ask)] {
            let Some(levels) = data.get(key).and_then(|l| l.as_array()) else {
                continue;
            };
            for level in levels {
                let pair = level.as_array().filter(|p| p.len() == 2);
                let strings = pair.and_then(|p| Some((p[0].as_str()?, p[1].as_str()?)));
                let Some((price, size)) = strings else {
                    return Err(BookError::BadLevel(format!("{level:?}")));
                };
                self.set(side, price, size)?;
            }
        }
        let sent = data
            .get("checksum")
            .and_then(|c| c.as_u64())
            .and_then(|c| u32::try_from(c).ok())
            .ok_or(BookError::NoChecksum)?;
        let computed = self.checksum();
        if sent != computed {
            return Err(BookError::Checksum { sent, computed });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_replace_remove_and_truncate_to_depth_keeping_the_best() {
        let mut b = Book::new(2);
        b.set(Side::Bid, "10.0", "1.0").unwrap();
        b.set(Side::Bid, "11.0", "2.0").unwrap();
        b.set(Side::Bid, "9.5", "3.0").unwrap(); // worst of three: dropped
        b.set(Side::Ask, "12.0", "1.0").unwrap();
        b.set(Side::Ask, "13.0", "1.0").unwrap();
        b.set(Side::Ask, "12.5", "4.0").unwrap(); // 13.0 dropped
        let bids: Vec<_> = b.bids().map(|l| l.price.as_str()).collect();
        let asks: Vec<_> = b.asks().map(|l| l.price.as_str()).collect();
        assert_eq!(bids, ["11.0", "10.0"]);
        assert_eq!(asks, ["12.0", "12.5"]);
        b.set(Side::Bid, "11.0", "0.0000").unwrap();
        assert_eq!(b.bids().count(), 1);
        assert!(b.set(Side::Bid, "x", "1").is_err());
        assert!(b.set(Side::Bid, "1", "-1").is_err());
    }

    #[test]
    fn the_checksum_is_crc32_of_the_documented_text() {
        let mut b = Book::new(10);
        b.set(Side::Bid, "91234.5", "0.4210").unwrap();
        b.set(Side::Bid, "91234.1", "3.0000").unwrap();
        b.set(Side::Ask, "91234.9", "1.5000").unwrap();
        b.set(Side::Ask, "91234.6", "0.2000").unwrap();
        assert_eq!(
            b.checksum_text(),
            "91234.6:0.2000,91234.9:1.5000|91234.5:0.4210,91234.1:3.0000"
        );
        // zlib's crc32 of that text, computed independently:
        // python3 -c "import zlib; print(zlib.crc32(b'91234.6:0.2000,...'))"
        assert_eq!(b.checksum(), 1_388_802_225);
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the IEEE check value"
        );
    }
}
