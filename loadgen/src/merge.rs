//! Joins what the reader threads saw into one report: counts add, histograms add, and the
//! end-of-stream check runs over all connections together, so the merged figures are those a
//! single thread would have produced from the same frames.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::check::Tally;
use crate::live::latency_histogram;

/// What the clients saw.
pub struct ClientReport {
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub healthy: Tally,
    pub slow: Tally,
    pub unexpected_disconnects: u64,
    pub reconnects: u64,
    /// Latency of healthy connections, µs from intended send time.
    pub latency_us: Histogram<u64>,
    /// From `connect()` to the `101` response, µs, first attempt of each connection.
    pub handshake_us: Histogram<u64>,
    /// From the first `connect()` to the last handshake completed.
    pub connect_span: Duration,
    /// CPU seconds each reader thread used, in reader order.
    pub thread_cpu_secs: Vec<f64>,
}

impl ClientReport {
    pub(crate) fn empty() -> Self {
        ClientReport {
            connections_ok: 0,
            connect_failures: 0,
            healthy: Tally::default(),
            slow: Tally::default(),
            unexpected_disconnects: 0,
            reconnects: 0,
            latency_us: latency_histogram(),
            handshake_us: latency_histogram(),
            connect_span: Duration::ZERO,
            thread_cpu_secs: Vec::new(),
        }
    }
}

/// One open subscription's position at the end, for the end-of-stream check.
pub(crate) struct StreamEnd {
    pub(crate) slow: bool,
    /// (topic index, next expected seq; 0 = not yet known).
    pub(crate) subs: Vec<(u32, u64)>,
}

/// What one reader thread hands back when it stops ([`crate::client::run`]); [`merge`] joins
/// them.
pub struct Finished {
    pub(crate) report: ClientReport,
    /// Connections open and acked at the end.
    pub(crate) open: Vec<StreamEnd>,
    /// Per topic, the highest sequence any of this thread's connections saw (open or not).
    pub(crate) seen: Vec<u64>,
    /// Connections owned, and those still waiting to be retried.
    pub(crate) owned: u64,
    pub(crate) unretried: u64,
    pub(crate) first_opened: Option<Instant>,
    pub(crate) last_handshake: Option<Instant>,
}

/// Joins what the reader threads saw into one report. The end of each topic's stream is the
/// highest sequence any connection of any thread saw (open at the end or not), and no less
/// than the topic's sequence before the run plus what the publisher sent on it (`published`,
/// when known); every open subscription short of it counts as `tail_missing`. `base` is each
/// topic's sequence before the run ([`crate::live::Live::base`]).
pub fn merge(
    parts: Vec<Finished>,
    published: Option<&[u64]>,
    base: &[Option<u64>],
) -> ClientReport {
    let mut report = ClientReport::empty();
    let topics = parts.iter().map(|p| p.seen.len()).max().unwrap_or(0);
    let mut last = vec![0u64; topics];
    for p in &parts {
        for (t, &seen) in p.seen.iter().enumerate() {
            last[t] = last[t].max(seen);
        }
    }
    if let Some(published) = published {
        for (t, l) in last.iter_mut().enumerate() {
            if let (Some(&Some(b)), Some(p)) = (base.get(t), published.get(t)) {
                *l = (*l).max(b + p);
            }
        }
    }
    let (mut owned, mut unretried) = (0, 0);
    let mut first_opened: Option<Instant> = None;
    let mut last_handshake: Option<Instant> = None;
    for p in parts {
        owned += p.owned;
        unretried += p.unretried;
        first_opened = match (first_opened, p.first_opened) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_handshake = last_handshake.max(p.last_handshake);
        for c in &p.open {
            report.connections_ok += 1;
            let tally = if c.slow {
                &mut report.slow
            } else {
                &mut report.healthy
            };
            for &(t, next) in &c.subs {
                if next > 0 {
                    tally.tail_missing += last[t as usize].saturating_sub(next - 1);
                }
            }
        }
        let r = p.report;
        report.healthy.add(&r.healthy);
        report.slow.add(&r.slow);
        report.connect_failures += r.connect_failures;
        report.unexpected_disconnects += r.unexpected_disconnects;
        report.reconnects += r.reconnects;
        let _ = report.latency_us.add(&r.latency_us);
        let _ = report.handshake_us.add(&r.handshake_us);
        report.thread_cpu_secs.extend(r.thread_cpu_secs);
    }
    if let (Some(first), Some(lastc)) = (first_opened, last_handshake) {
        report.connect_span = lastc.saturating_duration_since(first);
    }
    // A connection neither working at the end nor lost after opening (counted apart) failed
    // to connect: never opened before the deadline, stuck in its handshake, or out of
    // retries.
    report.connect_failures = (report.connect_failures + unretried)
        .max(owned.saturating_sub(report.connections_ok + report.unexpected_disconnects));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Part;

    /// One connection's record in a synthetic trace: slow or not, its subscriptions' next
    /// expected sequence at the end, and the latencies (µs) it recorded.
    struct Trace {
        slow: bool,
        subs: Vec<(u32, u64)>,
        latencies: Vec<u64>,
        open: bool,
    }

    fn trace() -> Vec<Trace> {
        // Three topics; topic 0's furthest reader is connection 5, so connection 0 (on the
        // other thread when split in two) must be found 3 messages short of the end.
        let mut t = Vec::new();
        for i in 0..8u64 {
            t.push(Trace {
                slow: i % 4 == 3,
                subs: vec![((i % 3) as u32, 100 + i)],
                latencies: (1..=50).map(|k| k * 37 + i * 1000).collect(),
                open: i != 6,
            });
        }
        t[0].subs = vec![(0, 101)];
        t[5].subs = vec![(0, 104), (1, 200)];
        t
    }

    /// What a reader thread owning `members` of the trace hands back.
    fn part(trace: &[Trace], members: &[usize]) -> Finished {
        let mut report = ClientReport::empty();
        let mut seen = vec![0u64; 3];
        let mut open = Vec::new();
        for &m in members {
            let c = &trace[m];
            let tally = if c.slow {
                &mut report.slow
            } else {
                &mut report.healthy
            };
            tally.delivered += c.latencies.len() as u64;
            for &l in &c.latencies {
                if !c.slow {
                    report.latency_us.saturating_record(l);
                }
            }
            report.handshake_us.saturating_record(1000 + m as u64);
            for &(t, next) in &c.subs {
                seen[t as usize] = seen[t as usize].max(next - 1);
            }
            if c.open {
                open.push(StreamEnd {
                    slow: c.slow,
                    subs: c.subs.clone(),
                });
            } else {
                report.unexpected_disconnects += 1;
            }
        }
        report.thread_cpu_secs = vec![1.0];
        Finished {
            report,
            open,
            seen,
            owned: members.len() as u64,
            unretried: 0,
            first_opened: None,
            last_handshake: None,
        }
    }

    #[test]
    fn merged_readers_report_what_one_reader_would_on_the_same_trace() {
        let t = trace();
        let all: Vec<usize> = (0..t.len()).collect();
        let published = [110u64, 0, 0];
        let base = [Some(0), None, Some(0)];
        let one = merge(vec![part(&t, &all)], Some(&published), &base);
        let split = |of: usize| {
            (0..of)
                .map(|index| part(&t, &Part { index, of }.owned(t.len())))
                .collect::<Vec<_>>()
        };
        for of in [2, 3] {
            let many = merge(split(of), Some(&published), &base);
            assert_eq!(many.connections_ok, one.connections_ok);
            assert_eq!(many.connect_failures, one.connect_failures);
            assert_eq!(many.unexpected_disconnects, one.unexpected_disconnects);
            for (a, b) in [(&many.healthy, &one.healthy), (&many.slow, &one.slow)] {
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{of} readers");
            }
            for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    many.latency_us.value_at_quantile(q),
                    one.latency_us.value_at_quantile(q)
                );
                assert_eq!(
                    many.handshake_us.value_at_quantile(q),
                    one.handshake_us.value_at_quantile(q)
                );
            }
            assert_eq!(many.latency_us.len(), one.latency_us.len());
            assert_eq!(many.thread_cpu_secs.len(), of);
        }
        // The end of topic 0 is what was published (110), past what anyone saw (103): each
        // open subscription on it is short by 110 minus what it saw.
        // Open on topic 0: connection 0 (saw 100), 3 (slow, saw 102), 5 (saw 103); 6 is closed.
        assert_eq!(
            one.healthy.tail_missing,
            (110 - 100) + (110 - 103) + tail_1_2(&t)
        );
        assert_eq!(one.connections_ok, 7);
    }

    /// Topics 1 and 2 have no published count (base unknown for 1, 0 published on 2): their
    /// end is the furthest sequence seen, by any connection, open or closed.
    fn tail_1_2(t: &[Trace]) -> u64 {
        let mut last = [0u64; 3];
        for c in t {
            for &(topic, next) in &c.subs {
                last[topic as usize] = last[topic as usize].max(next - 1);
            }
        }
        t.iter()
            .filter(|c| c.open && !c.slow)
            .flat_map(|c| c.subs.iter())
            .filter(|(topic, _)| *topic != 0)
            .map(|&(topic, next)| last[topic as usize] - (next - 1))
            .sum()
    }
}
