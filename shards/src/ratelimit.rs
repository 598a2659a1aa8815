//! Inbound rate limiting: a token bucket per connection, shard-local.
//!
//! Every inbound frame but a close takes one token (whole messages, each fragment of a
//! fragmented one, and control frames alike, so a ping flood and a continuation flood are
//! limited the same way). Tokens refill continuously at `rate` per second up to `burst`.
//! A frame that finds the bucket empty is refused and counted as a strike; an allowed frame
//! resets the count, and `max_strikes` refusals in a row close the connection.

use std::time::Instant;

/// What the bucket said about one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it.
    Allow,
    /// Refuse it and tell the client; the number is the strike count so far.
    Refuse(u32),
    /// Too many strikes: close the connection (1008).
    Close,
}

/// Token bucket; 16 bytes of state plus the refill instant.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens available, in thousandths, so the refill is exact in integers.
    milli_tokens: u64,
    last_refill: Instant,
    strikes: u32,
}

/// Limits shared by every connection of a shard.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sustained inbound frames per second.
    pub rate: u32,
    /// Frames allowed in a burst.
    pub burst: u32,
    /// Refused frames in a row before the connection is closed.
    pub max_strikes: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limits: &Limits, now: Instant) -> Self {
        TokenBucket {
            milli_tokens: u64::from(limits.burst) * 1000,
            last_refill: now,
            strikes: 0,
        }
    }

    /// Takes one token at `now`. O(1).
    pub fn take(&mut self, limits: &Limits, now: Instant) -> Verdict {
        let cap = u64::from(limits.burst) * 1000;
        let rate = u64::from(limits.rate).max(1);
        let elapsed_us = now.saturating_duration_since(self.last_refill).as_micros() as u64;
        // rate tokens/s = rate milli-tokens/ms = rate/1000 milli-tokens/us.
        let refill = elapsed_us.saturating_mul(rate) / 1000;
        if refill > 0 {
            if self.milli_tokens + refill >= cap {
                self.milli_tokens = cap;
                self.last_refill = now;
            } else {
                self.milli_tokens += refill;
                // Advance only by the time paid for, so fractions of a token are not lost.
                self.last_refill += std::time::Duration::from_micros(refill * 1000 / rate);
            }
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes += 1;
        if self.strikes >= limits.max_strikes {
            Verdict::Close
        } else {
            Verdict::Refuse(self.strikes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const L: Limits = Limits {
        rate: 10,
        burst: 5,
        max_strikes: 3,
    };

    #[test]
    fn burst_then_refuse_then_close() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&L, t0);
        for _ in 0..5 {
            assert_eq!(b.take(&L, t0), Verdict::Allow);
        }
        assert_eq!(b.take(&L, t0), Verdict::Refuse(1));
        assert_eq!(b.take(&L, t0), Verdict::Refuse(2));
        assert_eq!(b.take(&L, t0), Verdict::Close);
    }

    #[test]
    fn refills_at_rate_and_an_allowed_frame_forgives() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&L, t0);
        for _ in 0..5 {
            b.take(&L, t0);
        }
        assert_eq!(b.take(&L, t0), Verdict::Refuse(1));
        assert_eq!(b.take(&L, t0), Verdict::Refuse(2));
        // 10/s: one token per 100 ms, and an allowed frame resets the strikes.
        assert_eq!(b.take(&L, t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(
            b.take(&L, t0 + Duration::from_millis(100)),
            Verdict::Refuse(1)
        );
    }

    #[test]
    fn frequent_frames_do_not_lose_fractions_of_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&L, t0);
        for _ in 0..5 {
            b.take(&L, t0);
        }
        // Every 60 ms for 3 s: 10/s must allow 30 frames, not fewer.
        let allowed = (1..=50)
            .map(|i| b.take(&L, t0 + Duration::from_millis(60 * i)))
            .filter(|v| *v == Verdict::Allow)
            .count();
        assert_eq!(allowed, 30);
    }
}
