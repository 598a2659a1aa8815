//! Log budgets: what a client can cause to be logged (refusals, drops, closes) is limited per
//! shard and kind, so a flood of bad clients cannot fill a disk. The lines themselves are
//! `tracing` events (the binary chooses text or JSON); none carries a token.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lines of one kind a shard writes per second at most; the rest are counted and the count
/// is written with the next line allowed (`suppressed`).
pub const LINES_PER_SEC: u32 = 10;

/// One kind's budget on one shard. Shard-local.
pub struct Budget {
    window: Cell<Instant>,
    used: Cell<u32>,
    suppressed: Cell<u64>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            window: Cell::new(Instant::now()),
            used: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }
}

impl Budget {
    /// `Some(n)` when a line may be written now, `n` being the lines suppressed since the
    /// last one written; `None` when this second's budget is spent (the line is counted).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window.get()) >= Duration::from_secs(1) {
            self.window.set(now);
            self.used.set(0);
        }
        if self.used.get() >= LINES_PER_SEC {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.used.set(self.used.get() + 1);
        Some(self.suppressed.replace(0))
    }
}

/// A shard's budgets, by kind.
#[derive(Default)]
pub(crate) struct Budgets {
    /// Upgrades refused (HTTP 401, 403, 429) and requests refused as `forbidden`.
    pub(crate) refusals: Budget,
    /// Frames dropped for slow consumers, and frames the shard skipped (`shard_overflow`).
    pub(crate) drops: Budget,
    /// Connections closed by the server (heartbeat, auth, rate limit, protocol errors).
    pub(crate) closes: Budget,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_counted() {
        let b = Budget::default();
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| b.allow(t0).is_some()).count();
        assert_eq!(allowed, LINES_PER_SEC as usize);
        assert_eq!(
            b.allow(t0 + Duration::from_secs(1)),
            Some(990),
            "the count comes with the next line"
        );
        assert_eq!(b.allow(t0 + Duration::from_secs(1)), Some(0));
    }
}
