//! Namespaces: rules for every topic whose name starts with a prefix (`[[namespaces]]` in the
//! configuration; docs/protocol.md, "Recovery"). A topic takes the rules of the longest
//! prefix that matches its name; a topic outside every namespace takes the defaults. Any
//! thread (read-only after start).

use serde::{Deserialize, Serialize};

/// What a connection's queue does when drop-oldest drops frames of a topic of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GapPolicy {
    /// A `gap` notice names the dropped sequences (the default for stream topics).
    #[default]
    Notice,
    /// The topic's queued frames are replaced by its held snapshot and the deltas after it
    /// (the default for snapshot topics).
    Resnapshot,
    /// The connection is closed with 4002 "slow consumer".
    Disconnect,
}

/// One `[[namespaces]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Matched against the start of a topic's name, e.g. `"book."`; required, not empty.
    pub prefix: String,
    /// Topics here are snapshot topics: a publisher marks full-state messages with
    /// `"snapshot": true`, and a subscriber starts from the newest snapshot. Default false.
    #[serde(default)]
    pub snapshots: bool,
    /// What a dropped frame does (see [`GapPolicy`]). Default `notice` for stream topics,
    /// `resnapshot` for snapshot topics.
    #[serde(default)]
    pub gap_policy: Option<GapPolicy>,
    /// Most messages of history kept per topic (0 keeps none). Default
    /// [`DEFAULT_HISTORY_MAX_MESSAGES`].
    #[serde(default)]
    pub history_max_messages: Option<usize>,
    /// Oldest message of history kept, ms. Default [`DEFAULT_HISTORY_MAX_AGE_MS`].
    #[serde(default)]
    pub history_max_age_ms: Option<u64>,
}

/// Default history per topic, messages: a client that reconnects within a minute on a topic
/// publishing 100 msgs/s recovers exactly.
pub const DEFAULT_HISTORY_MAX_MESSAGES: usize = 10_000;
/// Default oldest history kept, ms (two minutes).
pub const DEFAULT_HISTORY_MAX_AGE_MS: u64 = 120_000;

/// The rules a topic follows, resolved from its namespace and the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub snapshots: bool,
    pub gap_policy: GapPolicy,
    pub history_max_messages: usize,
    pub history_max_age_ms: u64,
}

impl Rules {
    /// The rules of a topic outside every namespace.
    pub const DEFAULT: Rules = Rules {
        snapshots: false,
        gap_policy: GapPolicy::Notice,
        history_max_messages: DEFAULT_HISTORY_MAX_MESSAGES,
        history_max_age_ms: DEFAULT_HISTORY_MAX_AGE_MS,
    };
}

/// How a shard treats subscribers waiting for a snapshot (from `[recovery]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// After this long without a snapshot a waiter gets a `no_snapshot` gap (and again after
    /// each further period, for what was published meanwhile). `snapshot_wait_ms`.
    pub wait: std::time::Duration,
    /// While anyone waits, the dispatcher is asked this often to request a snapshot of the
    /// publisher. `snapshot_request_interval_ms`.
    pub request_every: std::time::Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            wait: std::time::Duration::from_millis(5_000),
            request_every: std::time::Duration::from_millis(1_000),
        }
    }
}

/// Every namespace, ready for lookups: `rules(topic)` costs one comparison per namespace.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// Longest prefix first, so the first match is the longest.
    by_length: Vec<(String, Rules)>,
    /// Some namespace has snapshot topics or a gap policy other than `notice`.
    policies: bool,
}

impl Namespaces {
    /// Checks and resolves the configured namespaces. Errors name the bad entry: an empty or
    /// repeated prefix, or a prefix that is not a valid start of a topic name.
    pub fn new(list: &[Namespace]) -> Result<Namespaces, String> {
        let mut by_length: Vec<(String, Rules)> = Vec::with_capacity(list.len());
        for ns in list {
            if ns.prefix.is_empty() {
                return Err("namespaces: a prefix must not be empty".into());
            }
            if !ns
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
            {
                return Err(format!(
                    "namespaces: prefix {:?} has characters a topic name cannot have",
                    ns.prefix
                ));
            }
            if by_length.iter().any(|(p, _)| *p == ns.prefix) {
                return Err(format!("namespaces: prefix {:?} appears twice", ns.prefix));
            }
            let rules = Rules {
                snapshots: ns.snapshots,
                gap_policy: ns.gap_policy.unwrap_or(if ns.snapshots {
                    GapPolicy::Resnapshot
                } else {
                    GapPolicy::Notice
                }),
                history_max_messages: ns
                    .history_max_messages
                    .unwrap_or(DEFAULT_HISTORY_MAX_MESSAGES),
                history_max_age_ms: ns.history_max_age_ms.unwrap_or(DEFAULT_HISTORY_MAX_AGE_MS),
            };
            if rules.gap_policy == GapPolicy::Resnapshot && !rules.snapshots {
                return Err(format!(
                    "namespaces: prefix {:?}: gap_policy \"resnapshot\" needs snapshots = true",
                    ns.prefix
                ));
            }
            by_length.push((ns.prefix.clone(), rules));
        }
        by_length.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let policies = by_length
            .iter()
            .any(|(_, r)| r.snapshots || r.gap_policy != GapPolicy::Notice);
        Ok(Namespaces {
            by_length,
            policies,
        })
    }

    /// True when a drop may need more than its notice: some namespace has snapshot topics or
    /// a gap policy other than `notice` (a drop must then look up its topic's rules).
    /// Computed once: the fan-out round asks per frame.
    pub fn has_policies(&self) -> bool {
        self.policies
    }

    /// The rules of `topic`: its longest matching namespace's, else [`Rules::DEFAULT`].
    pub fn rules(&self, topic: &str) -> Rules {
        self.by_length
            .iter()
            .find(|(p, _)| topic.starts_with(p.as_str()))
            .map_or(Rules::DEFAULT, |(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(prefix: &str, snapshots: bool) -> Namespace {
        Namespace {
            prefix: prefix.into(),
            snapshots,
            gap_policy: None,
            history_max_messages: None,
            history_max_age_ms: None,
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_others_take_the_defaults() {
        let mut deep = ns("book.BTC", false);
        deep.history_max_messages = Some(5);
        let n = Namespaces::new(&[ns("book.", true), deep]).unwrap();
        let book = n.rules("book.ETHUSD");
        assert!(book.snapshots);
        assert_eq!(book.gap_policy, GapPolicy::Resnapshot);
        let btc = n.rules("book.BTCUSD");
        assert!(!btc.snapshots);
        assert_eq!(btc.history_max_messages, 5);
        assert_eq!(btc.gap_policy, GapPolicy::Notice);
        assert_eq!(n.rules("trades.BTCUSD"), Rules::DEFAULT);
    }

    #[test]
    fn bad_namespaces_are_refused_with_the_reason() {
        assert!(Namespaces::new(&[ns("", false)])
            .unwrap_err()
            .contains("empty"));
        assert!(Namespaces::new(&[ns("a.", false), ns("a.", true)])
            .unwrap_err()
            .contains("twice"));
        assert!(Namespaces::new(&[ns("a b", false)])
            .unwrap_err()
            .contains("characters"));
        let mut r = ns("t.", false);
        r.gap_policy = Some(GapPolicy::Resnapshot);
        assert!(Namespaces::new(&[r]).unwrap_err().contains("snapshots"));
    }
}
