//! Topic names and patterns: pure functions, usable on any thread.
//!
//! A topic is 1 to [`MAX_TOPIC_LEN`] bytes of `[A-Za-z0-9._:-]`, not starting or ending with
//! `.`, with no empty segment (`a..b`). A pattern is a topic prefix followed by `.*`
//! (`trades.*`) and matches every topic that starts with the prefix and a dot, present and future.
//! The charset never needs JSON escaping, so topic names are copied into frames as they are.

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// The reserved namespace of the server's own topics (`_sys.stats`, the figures the admin
/// dashboard draws, published once a second). Publishers may not publish under it (ingest error
/// `reserved_topic`), and only the operator may subscribe to it (docs/protocol.md, "Reserved
/// topics").
pub const SYSTEM_PREFIX: &str = "_sys";

/// The one reserved topic today: the server's figures, published once a second while someone
/// subscribes to it.
pub const SYSTEM_STATS: &str = "_sys.stats";

/// True for `_sys` and every name under it (`_sys.stats`); for a pattern, pass its prefix
/// (`_sys.*` is the prefix `_sys`). Linear in the length of [`SYSTEM_PREFIX`].
#[inline]
pub fn is_system(name: &str) -> bool {
    name == SYSTEM_PREFIX || prefix_matches(SYSTEM_PREFIX, name)
}

/// What a client asked for: one topic, or every topic under a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// An exact topic name.
    Topic(&'a str),
    /// `prefix.*`: holds the prefix without the trailing `.*`.
    Prefix(&'a str),
}

/// Why a topic name was refused; the text goes to the client in an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("topic has a character outside [A-Za-z0-9._:-]")]
    BadChar,
    #[error("topic has an empty segment (leading, trailing or double '.')")]
    EmptySegment,
    #[error("'*' is only allowed as the last segment, as in 'trades.*'")]
    BadWildcard,
}

/// Checks an exact topic name. Linear in its length.
pub fn validate_topic(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let bytes = name.as_bytes();
    for &b in bytes {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-' => {}
            b'*' => return Err(TopicError::BadWildcard),
            _ => return Err(TopicError::BadChar),
        }
    }
    if bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' || name.contains("..") {
        return Err(TopicError::EmptySegment);
    }
    Ok(())
}

/// Parses what a client subscribes to: a topic, or `prefix.*`.
pub fn parse_selector(text: &str) -> Result<Selector<'_>, TopicError> {
    if let Some(prefix) = text.strip_suffix(".*") {
        validate_topic(prefix)?;
        return Ok(Selector::Prefix(prefix));
    }
    validate_topic(text)?;
    Ok(Selector::Topic(text))
}

/// True when `topic` lies under `prefix` (`trades` matches `trades.BTCUSD`, not `tradesX`).
#[inline]
pub fn prefix_matches(prefix: &str, topic: &str) -> bool {
    topic.len() > prefix.len() + 1
        && topic.as_bytes()[prefix.len()] == b'.'
        && topic.starts_with(prefix)
}

/// Every prefix a pattern could name that covers `topic`: the topic up to each of its dots
/// (`a.b.c` -> `a`, `a.b`). Routing looks each one up instead of scanning every pattern, so a
/// frame costs O(segments of its topic) whatever the number of patterns subscribed.
pub fn covering_prefixes(topic: &str) -> impl Iterator<Item = &str> {
    topic
        .bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'.')
        .map(move |(i, _)| &topic[..i])
}

/// Topic names in sorted order, so the topics under a pattern's prefix are found in
/// O(log n + matches) instead of a scan of every topic. Kept beside a hash map that serves the
/// per-message lookups; used on subscribe and unsubscribe of patterns only. Lives with its
/// owner (dispatcher thread or shard-local).
#[derive(Debug, Default)]
pub struct NameIndex(std::collections::BTreeSet<std::sync::Arc<str>>);

impl NameIndex {
    /// Adds a name (no-op if present). O(log n).
    pub fn insert(&mut self, name: std::sync::Arc<str>) {
        self.0.insert(name);
    }

    /// Removes a name. O(log n).
    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// The names under `prefix` (those `prefix_matches`), in order.
    pub fn under(&self, prefix: &str) -> Vec<std::sync::Arc<str>> {
        let low = format!("{prefix}.");
        self.0
            .range::<str, _>((
                std::ops::Bound::Included(low.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|n| n.starts_with(low.as_str()))
            .filter(|n| n.len() > low.len())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_market_names() {
        for t in [
            "book.BTCUSD",
            "trades.ETH-USD",
            "user:42.orders",
            "a",
            "x_y.z",
        ] {
            assert_eq!(validate_topic(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic(&"a".repeat(129)), Err(TopicError::TooLong));
        assert_eq!(validate_topic("a b"), Err(TopicError::BadChar));
        assert_eq!(validate_topic("a\"b"), Err(TopicError::BadChar));
        assert_eq!(validate_topic("é"), Err(TopicError::BadChar));
        assert_eq!(validate_topic(".a"), Err(TopicError::EmptySegment));
        assert_eq!(validate_topic("a."), Err(TopicError::EmptySegment));
        assert_eq!(validate_topic("a..b"), Err(TopicError::EmptySegment));
        assert_eq!(validate_topic("a*"), Err(TopicError::BadWildcard));
        assert_eq!(parse_selector("*.a"), Err(TopicError::BadWildcard));
        assert_eq!(parse_selector(".*"), Err(TopicError::Empty));
    }

    #[test]
    fn patterns_match_under_prefix_only() {
        assert_eq!(parse_selector("trades.*"), Ok(Selector::Prefix("trades")));
        assert_eq!(parse_selector("trades"), Ok(Selector::Topic("trades")));
        assert!(prefix_matches("trades", "trades.BTCUSD"));
        assert!(prefix_matches("a.b", "a.b.c"));
        assert!(!prefix_matches("trades", "trades"));
        assert!(!prefix_matches("trades", "tradesX.BTC"));
        assert!(!prefix_matches("trades", "trades."));
        assert!(!prefix_matches("trades", "book.BTCUSD"));
        let covering: Vec<&str> = covering_prefixes("a.b.c").collect();
        assert_eq!(covering, ["a", "a.b"]);
        assert_eq!(covering_prefixes("a").count(), 0);
        let mut index = NameIndex::default();
        for n in ["a", "a-b", "a.b", "a.c.d", "a0", "ab.c", "b.a"] {
            index.insert(n.into());
        }
        let under: Vec<String> = index.under("a").iter().map(|n| n.to_string()).collect();
        assert_eq!(under, ["a.b", "a.c.d"]);
        index.remove("a.b");
        assert_eq!(index.under("a").len(), 1);
        assert_eq!(index.under("a.c").len(), 1);
        assert!(index.under("z").is_empty());
        for p in covering {
            assert!(prefix_matches(p, "a.b.c"));
        }
    }
}
