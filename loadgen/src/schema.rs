//! The `--json` document of a fanout, latency or soak run: one serde type that loadgen writes
//! and `tuning/` (the `sweep` tool) reads, so the schema lives in one place. Any thread.
//!
//! Keys and units are stable (scripts read them): counts are messages, rates are per second,
//! latencies are µs from the message's intended send time (healthy connections), CPU is % of
//! one core. Every field has a default, so a document from an older loadgen (without
//! `saturation` or `protocol`) still reads.

use serde::{Deserialize, Serialize};

/// Latency percentiles, µs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What one class of connection (healthy or slow) saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TallyJson {
    pub delivered: u64,
    pub gap_notices: u64,
    /// Messages covered by gap notices.
    pub gaps: u64,
    /// Holes no gap notice announced.
    pub unannounced: u64,
    /// Messages missing at the end of a subscription's stream.
    pub tail_missing: u64,
    pub duplicates: u64,
    pub misrouted: u64,
}

/// One periodic report of a soak.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SampleJson {
    /// Seconds since the monitor started.
    pub at_secs: f64,
    pub connected: u64,
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub gap_notices: u64,
    pub reconnects: u64,
    pub disconnects: u64,
    /// The server's resident memory, KiB (null without `--server-pid`).
    pub server_rss_kib: Option<u64>,
}

/// The `--json` document of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunJson {
    /// Wire protocol driven: `corecast`.
    pub protocol: String,
    pub connections_ok: u64,
    pub connect_failures: u64,
    pub published: u64,
    pub delivered: u64,
    /// Deliveries the subscriptions should have received.
    pub expected: u64,
    /// `expected` comes from the publisher's counts (no churn), not from what was seen.
    pub expected_exact: bool,
    /// Healthy connections' messages neither delivered nor announced.
    pub lost: u64,
    /// Messages covered by gap notices, all connections.
    pub gaps: u64,
    pub gap_notices: u64,
    pub unexpected_disconnects: u64,
    pub reconnects: u64,
    /// From the start of publishing to the last delivery or notice, s.
    pub elapsed_secs: f64,
    /// Deliveries of the messages published in the publishing window, per second of it.
    pub delivered_per_sec: f64,
    /// Deliveries per second from the start of publishing to the last delivery (what the
    /// server sustained, drain included).
    #[serde(default)]
    pub sustained_per_sec: f64,
    pub latency_us: Latency,
    /// The loadgen process, % of one core, over the publishing window.
    pub client_cpu_pct: f64,
    /// The busiest reader thread, % of one core.
    pub client_thread_cpu_pct: f64,
    /// Each reader thread, % of one core, in reader order (`--threads`).
    #[serde(default)]
    pub reader_cpu_pct: Vec<f64>,
    pub server_cpu_pct: Option<f64>,
    /// Loadgen was its own bottleneck in some second (`saturation` says when and why).
    pub loadgen_saturated: bool,
    pub saturation: Vec<String>,
    /// Spells in which a CPU ran nothing (`cpu 1: 93 ms at 3.0 s`); null when not watched.
    #[serde(default)]
    pub host_stalls: Option<Vec<String>>,
    pub publisher_max_lag_us: u64,
    pub healthy: TallyJson,
    pub slow_connections: u64,
    pub slow: TallyJson,
    /// Periodic reports (soak), in order.
    pub reports: Vec<SampleJson>,
}

impl RunJson {
    /// The document as one line of JSON.
    pub fn to_json(&self) -> String {
        // Plain structs of numbers, strings and vectors always serialise.
        simd_json::serde::to_string(self).expect("a run report serialises")
    }

    /// Reads a document; `Err` names what is wrong.
    pub fn from_json(text: &[u8]) -> Result<RunJson, String> {
        let mut bytes = text.to_vec();
        simd_json::serde::from_slice(&mut bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_back_as_written() {
        let run = RunJson {
            protocol: "corecast".into(),
            delivered_per_sec: 993_000.0,
            latency_us: Latency {
                p50: 1,
                p90: 2,
                p99: 3,
                p999: 4,
                max: 5,
            },
            server_cpu_pct: Some(104.5),
            saturation: vec!["reader: 93% CPU at 14 s".into()],
            loadgen_saturated: true,
            reports: vec![SampleJson {
                at_secs: 1.5,
                server_rss_kib: None,
                ..SampleJson::default()
            }],
            ..RunJson::default()
        };
        let text = run.to_json();
        assert!(
            text.contains(r#""saturation":["reader: 93% CPU at 14 s"]"#),
            "{text}"
        );
        assert!(text.contains(r#""latency_us":{"p50":1,"p90":2,"p99":3,"p999":4,"max":5}"#));
        assert_eq!(RunJson::from_json(text.as_bytes()), Ok(run));
    }

    #[test]
    fn an_older_document_without_the_new_keys_still_reads() {
        let old = br#"{"delivered_per_sec":5,"lost":0,"gaps":0,"client_cpu_pct":50.0,"server_cpu_pct":90.0,"loadgen_saturated":false,"latency_us":{"p50":1,"p99":2000,"p999":3000,"max":4000}}"#;
        let run = RunJson::from_json(old).unwrap();
        assert_eq!((run.delivered_per_sec, run.latency_us.p99), (5.0, 2000));
        assert!(run.saturation.is_empty() && run.protocol.is_empty());
        assert!(RunJson::from_json(b"{not json").is_err());
    }
}
