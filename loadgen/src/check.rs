//! What one connection checks in each text frame it receives: per-topic sequence
//! continuity (every hole announced by a `gap` notice or counted as a loss), repeats and
//! misrouted frames, and latency from the intended send time carried in the message.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::wire;

/// Counts for one class of connection (healthy or slow).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub delivered: u64,
    /// Holes in a sequence that no `gap` message announced.
    pub unannounced: u64,
    /// Messages missing at the end: the topic's last sequence seen anywhere minus this
    /// subscription's last (after the drain, so only real losses remain).
    pub tail_missing: u64,
    pub gap_notices: u64,
    /// Messages covered by `gap` notices (only what the connection still expected).
    pub announced: u64,
    /// Messages or notices for a sequence already delivered or announced (must be 0).
    pub duplicates: u64,
    /// Messages or notices for a topic the connection did not subscribe to (must be 0).
    pub misrouted: u64,
}

impl Tally {
    /// Adds another reader's counts to these.
    pub fn add(&mut self, o: &Tally) {
        self.delivered += o.delivered;
        self.unannounced += o.unannounced;
        self.tail_missing += o.tail_missing;
        self.gap_notices += o.gap_notices;
        self.announced += o.announced;
        self.duplicates += o.duplicates;
        self.misrouted += o.misrouted;
    }
}

/// What a text frame turned out to be.
pub(crate) enum Seen {
    Msg,
    /// A gap notice covering this many messages.
    Gap(u64),
    FirstAck,
    Other,
}

/// Checks one text frame against the connection's subscriptions (`(topic, next expected
/// seq)`, 0 = not yet known) and counts it in `tally`.
pub(crate) fn on_text(
    subs: &mut [(u32, u64)],
    acked: &mut bool,
    p: &[u8],
    index: &HashMap<Vec<u8>, u32>,
    tally: &mut Tally,
    interval: Option<&mut Histogram<u64>>,
    total: &mut Histogram<u64>,
) -> Seen {
    let fast = msg_fields(p);
    let op = match fast {
        Some(_) => &b"msg"[..],
        None => match wire::str_after(p, b"\"op\":\"") {
            Some(op) => op,
            None => return Seen::Other,
        },
    };
    match op {
        b"msg" => {
            let (topic, seq) = match fast {
                Some((topic, seq, _)) => (Some(topic), Some(seq)),
                None => (
                    wire::str_after(p, b"\"topic\":\""),
                    wire::u64_after(p, b"\"seq\":"),
                ),
            };
            let (Some(topic), Some(seq)) = (topic, seq) else {
                return Seen::Other;
            };
            let Some(sub) = subscription(subs, index, topic) else {
                // A topic this connection never asked for.
                tally.misrouted += 1;
                return Seen::Other;
            };
            if sub.1 != 0 && seq < sub.1 {
                // Already delivered or announced: a repeat or a reordering, never a delivery.
                tally.duplicates += 1;
                return Seen::Other;
            }
            if sub.1 != 0 && seq > sub.1 {
                tally.unannounced += seq - sub.1;
            }
            sub.1 = seq.saturating_add(1);
            tally.delivered += 1;
            if let Some(interval) = interval {
                let sent = match fast {
                    Some((_, _, sent)) => Some(sent),
                    None => wire::find(p, b"\"data\":{")
                        .and_then(|at| wire::u64_after(&p[at..], b"\"t\":")),
                };
                if let Some(sent) = sent {
                    let us = now_us().saturating_sub(sent).max(1);
                    interval.saturating_record(us);
                    total.saturating_record(us);
                }
            }
            Seen::Msg
        }
        b"gap" => {
            let topic = wire::str_after(p, b"\"topic\":\"");
            let (from, to) = (
                wire::u64_after(p, b"\"from\":"),
                wire::u64_after(p, b"\"to\":"),
            );
            let (Some(topic), Some(from), Some(to)) = (topic, from, to) else {
                return Seen::Other;
            };
            let Some(sub) = subscription(subs, index, topic) else {
                tally.misrouted += 1;
                return Seen::Other;
            };
            // Only what this connection still expected counts as announced.
            let from_eff = if sub.1 == 0 { from } else { from.max(sub.1) };
            if to < from_eff {
                tally.duplicates += 1;
                return Seen::Other;
            }
            if sub.1 != 0 && from > sub.1 {
                tally.unannounced += from - sub.1;
            }
            let n = to - from_eff + 1;
            tally.gap_notices += 1;
            tally.announced += n;
            sub.1 = to.saturating_add(1);
            Seen::Gap(n)
        }
        b"ack" => {
            let mut text = p.to_vec();
            if let Ok(v) = simd_json::to_owned_value(&mut text) {
                use simd_json::prelude::*;
                let list = v.get("topics").and_then(|t| t.as_array());
                for e in list.into_iter().flatten() {
                    let (Some(name), Some(seq)) = (
                        e.get("topic").and_then(|x| x.as_str()),
                        e.get("seq").and_then(|x| x.as_u64()),
                    ) else {
                        continue;
                    };
                    if let Some(sub) = subscription(subs, index, name.as_bytes()) {
                        if sub.1 == 0 {
                            sub.1 = seq.saturating_add(1);
                        } else if seq.saturating_add(1) > sub.1 {
                            // The topic moved on past what this connection has seen.
                            tally.unannounced += seq + 1 - sub.1;
                            sub.1 = seq + 1;
                        }
                    }
                }
            }
            if *acked {
                Seen::Other
            } else {
                *acked = true;
                Seen::FirstAck
            }
        }
        _ => Seen::Other,
    }
}

/// A text frame of the json-pubsub protocol (`crate::Protocol::JsonPubsub`): a message as its
/// publisher sent it, `{"op":"pub","topic":T,"t":N,...}`. Counted as delivered, with its
/// latency from `t`; there are no sequences to check.
pub(crate) fn on_pub_text(
    p: &[u8],
    tally: &mut Tally,
    interval: Option<&mut Histogram<u64>>,
    total: &mut Histogram<u64>,
) -> Seen {
    if wire::str_after(p, b"\"op\":\"") != Some(&b"pub"[..]) {
        return Seen::Other;
    }
    tally.delivered += 1;
    if let (Some(interval), Some(sent)) = (interval, wire::u64_after(p, b"\"t\":")) {
        let us = now_us().saturating_sub(sent).max(1);
        interval.saturating_record(us);
        total.saturating_record(us);
    }
    Seen::Msg
}

/// A `msg` in exactly the layout corecast writes (docs/protocol.md; `encode_msg`) with
/// loadgen's payload: `{"op":"msg","topic":T,"seq":N,"ts":N,"data":{"t":N,...`. Returns
/// topic, seq and intended send time by walking the fields in order, without searching;
/// `None` for anything else, which then takes the general, searching path.
fn msg_fields(p: &[u8]) -> Option<(&[u8], u64, u64)> {
    let rest = p.strip_prefix(b"{\"op\":\"msg\",\"topic\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let (topic, rest) = rest.split_at(end);
    let (seq, rest) = wire::leading_u64(rest.strip_prefix(b"\",\"seq\":")?)?;
    let (_, rest) = wire::leading_u64(rest.strip_prefix(b",\"ts\":")?)?;
    let (sent, _) = wire::leading_u64(rest.strip_prefix(b",\"data\":{\"t\":")?)?;
    Some((topic, seq, sent))
}

/// This connection's `(topic, next expected seq)` for a topic name, if it subscribed to it.
fn subscription<'a>(
    subs: &'a mut [(u32, u64)],
    index: &HashMap<Vec<u8>, u32>,
    topic: &[u8],
) -> Option<&'a mut (u32, u64)> {
    let &t = index.get(topic)?;
    subs.iter_mut().find(|(x, _)| *x == t)
}

/// Microseconds since the epoch (the clock the publisher stamps intended send times with).
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::latency_histogram;

    struct One {
        subs: Vec<(u32, u64)>,
        acked: bool,
        index: HashMap<Vec<u8>, u32>,
        tally: Tally,
        hist: Histogram<u64>,
    }

    impl One {
        fn new() -> One {
            One {
                subs: vec![(0, 0)],
                acked: false,
                index: [(b"t".to_vec(), 0), (b"other".to_vec(), 1)].into(),
                tally: Tally::default(),
                hist: latency_histogram(),
            }
        }

        fn feed(&mut self, text: &str) -> Seen {
            let mut interval = latency_histogram();
            on_text(
                &mut self.subs,
                &mut self.acked,
                text.as_bytes(),
                &self.index,
                &mut self.tally,
                Some(&mut interval),
                &mut self.hist,
            )
        }

        fn msg(&mut self, seq: u64) -> Seen {
            self.feed(&format!(
                r#"{{"op":"msg","topic":"t","seq":{seq},"ts":1,"data":{{"t":1,"p":"x"}}}}"#
            ))
        }
    }

    #[test]
    fn contiguous_after_ack_is_clean_and_holes_count() {
        let mut c = One::new();
        assert!(matches!(
            c.feed(r#"{"op":"ack","id":1,"topics":[{"topic":"t","seq":10}]}"#),
            Seen::FirstAck
        ));
        assert!(matches!(c.msg(11), Seen::Msg));
        assert!(matches!(c.msg(12), Seen::Msg));
        assert_eq!((c.tally.delivered, c.tally.unannounced), (2, 0));
        c.msg(15);
        assert_eq!(
            c.tally.unannounced, 2,
            "13 and 14 vanished without a notice"
        );
        assert_eq!(c.hist.len(), 3, "latency recorded per message");
    }

    #[test]
    fn gap_notices_count_only_what_was_still_expected() {
        let mut c = One::new();
        c.feed(r#"{"op":"ack","id":1,"topics":[{"topic":"t","seq":0}]}"#);
        c.msg(1);
        c.msg(2);
        // Overlaps 2, already delivered: only 3..=5 count.
        assert!(matches!(
            c.feed(r#"{"op":"gap","topic":"t","from":2,"to":5,"reason":"slow_consumer"}"#),
            Seen::Gap(3)
        ));
        assert_eq!(c.tally.announced, 3);
        c.msg(6);
        assert_eq!(c.tally.unannounced, 0);
        // Entirely in the past: a repeat.
        c.feed(r#"{"op":"gap","topic":"t","from":3,"to":4,"reason":"slow_consumer"}"#);
        assert_eq!(c.tally.duplicates, 1);
        assert_eq!(c.tally.announced, 3);
        // A notice that starts past the expected seq leaves a hole of its own.
        c.feed(r#"{"op":"gap","topic":"t","from":9,"to":9,"reason":"slow_consumer"}"#);
        assert_eq!(c.tally.unannounced, 2, "7 and 8 were never announced");
    }

    #[test]
    fn repeats_and_foreign_topics_are_not_deliveries() {
        let mut c = One::new();
        c.feed(r#"{"op":"ack","id":1,"topics":[{"topic":"t","seq":0}]}"#);
        c.msg(1);
        c.msg(2);
        assert!(matches!(c.msg(2), Seen::Other));
        assert!(matches!(c.msg(1), Seen::Other));
        assert_eq!((c.tally.delivered, c.tally.duplicates), (2, 2));
        c.msg(3);
        assert_eq!(
            c.tally.unannounced, 0,
            "a repeat does not move the expectation back"
        );
        c.feed(r#"{"op":"msg","topic":"other","seq":1,"ts":1,"data":{}}"#);
        c.feed(r#"{"op":"msg","topic":"nobody","seq":1,"ts":1,"data":{}}"#);
        assert_eq!(
            c.tally.misrouted, 2,
            "one known but not subscribed, one never named"
        );
        assert_eq!(c.tally.delivered, 3);
    }

    #[test]
    fn a_later_ack_cannot_hide_a_hole_and_a_bad_ack_does_not_panic() {
        let mut c = One::new();
        c.feed(r#"{"op":"ack","id":1,"topics":[{"topic":"t","seq":0}]}"#);
        c.msg(1);
        c.feed(r#"{"op":"ack","id":2,"topics":[{"topic":"t","seq":5}]}"#);
        assert_eq!(c.tally.unannounced, 4, "2..=5 skipped by the second ack");
        c.msg(6);
        assert_eq!(c.tally.unannounced, 4);
        for bad in [
            r#"{"op":"ack","id":3}"#,
            r#"{"op":"ack","id":3,"topics":[{"seq":1}]}"#,
            r#"{"op":"ack","id":3,"topics":"x"}"#,
            r#"{"op":"ack"#,
        ] {
            c.feed(bad);
        }
        assert_eq!(c.tally.unannounced, 4);
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    #[test]
    fn the_fast_path_reads_what_the_general_path_reads() {
        let exact = br#"{"op":"msg","topic":"lg.3","seq":42,"ts":17,"data":{"t":99,"p":"xx"}}"#;
        assert_eq!(msg_fields(exact), Some((&b"lg.3"[..], 42, 99)));
        assert_eq!(wire::u64_after(exact, b"\"seq\":"), Some(42));
        // Any other layout falls back (fields reordered, another op, a missing field).
        for other in [
            &br#"{"op":"msg","seq":42,"topic":"lg.3","ts":17,"data":{"t":99}}"#[..],
            br#"{"op":"gap","topic":"lg.3","from":1,"to":2,"reason":"slow_consumer"}"#,
            br#"{"op":"msg","topic":"lg.3","seq":42,"ts":17,"data":{"p":"x","t":99}}"#,
            br#"{"op":"msg","topic":"lg.3","seq":,"ts":17,"data":{"t":99}}"#,
        ] {
            assert_eq!(
                msg_fields(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
