//! `corecast watch`: a small client that subscribes and prints what arrives, checking that each
//! topic's `seq` is contiguous and reporting announced gaps. Uses tungstenite's client, not the
//! server's frame code.

use std::collections::HashMap;

use anyhow::Context;
use simd_json::prelude::*;
use tungstenite::Message;

/// Runs until the server closes, or `count` messages arrived.
pub fn run(url: &str, topics: &[String], count: Option<u64>) -> anyhow::Result<()> {
    let (mut ws, _) = tungstenite::connect(url).with_context(|| format!("connecting to {url}"))?;
    let request = simd_json::json!({"op": "subscribe", "id": 1, "topics": topics});
    ws.send(Message::text(request.encode()))?;
    let mut last: HashMap<String, u64> = HashMap::new();
    let (mut msgs, mut holes) = (0u64, 0u64);
    loop {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => {
                eprintln!("closed by server: {frame:?}");
                break;
            }
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => return Err(e.into()),
        };
        println!("{text}");
        let mut bytes = text.as_bytes().to_vec();
        let v = simd_json::to_owned_value(&mut bytes).context("server sent invalid JSON")?;
        match v["op"].as_str() {
            Some(op @ ("msg" | "snapshot")) => {
                let topic = v["topic"].as_str().unwrap_or_default().to_string();
                let seq = v["seq"].as_u64().unwrap_or(0);
                // A snapshot starts the topic over: its seq may be below the last one.
                if let Some(prev) = last.insert(topic.clone(), seq).filter(|_| op == "msg") {
                    if seq != prev + 1 {
                        holes += 1;
                        eprintln!("unannounced hole in {topic}: {prev} then {seq}");
                    }
                }
                msgs += 1;
                if count.is_some_and(|c| msgs >= c) {
                    break;
                }
            }
            Some("gap") => {
                let topic = v["topic"].as_str().unwrap_or_default().to_string();
                if let Some(to) = v["to"].as_u64() {
                    last.insert(topic, to);
                }
            }
            Some("ack") => {
                if let Some(list) = v["topics"].as_array() {
                    for t in list {
                        if let (Some(name), Some(seq)) = (t["topic"].as_str(), t["seq"].as_u64()) {
                            last.insert(name.to_string(), seq);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    eprintln!("{msgs} messages, {holes} unannounced holes");
    if holes > 0 {
        anyhow::bail!("{holes} sequence holes were not announced");
    }
    Ok(())
}

/// What `watch --book` saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BookReport {
    /// Book messages whose checksum was checked (snapshots and deltas).
    pub checked: u64,
    /// Of those, checksums that did not match (each followed by a resync).
    pub failed: u64,
    /// Sequence holes the server did not announce.
    pub holes: u64,
    /// `gap` notices received (each followed by a resync).
    pub gaps: u64,
    /// Reconnections made with `since`, and how many of them recovered.
    pub resumes: u64,
    pub recovered: u64,
    /// Snapshots applied.
    pub snapshots: u64,
}

/// How `watch --book` runs.
#[derive(Debug, Clone)]
pub struct BookWatch {
    pub url: String,
    pub topic: String,
    /// Disconnect and resume (with `since`) this often; `None`: stay connected.
    pub reconnect_every: Option<std::time::Duration>,
    /// Stop after this long; `None`: until the server closes.
    pub duration: Option<std::time::Duration>,
    /// Print a status line each second.
    pub print: bool,
}

/// `corecast watch --book TOPIC`: keeps the topic's order book from its snapshot and deltas
/// (`crate::book`), checks the checksum of every message, and, when asked, disconnects and
/// resumes from where it was (`since`), carrying on with the same book when the server
/// recovers the missed messages. A checksum that fails, a gap, or a hole makes it resync.
/// Errors: connecting, or the server refusing the subscription.
pub fn run_book(w: &BookWatch) -> anyhow::Result<BookReport> {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let mut report = BookReport::default();
    let mut book = crate::book::Book::new(crate::demo::BOOK_DEPTH);
    // Where the book stands: epoch and seq of the last message applied.
    let mut at: Option<(String, u64)> = None;
    let mut last_print = Instant::now();
    loop {
        let (mut ws, _) =
            tungstenite::connect(&w.url).with_context(|| format!("connecting to {}", w.url))?;
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
        }
        let entry = match &at {
            Some((epoch, seq)) => {
                report.resumes += 1;
                simd_json::json!({"topic": w.topic.clone(), "since": {"epoch": epoch.clone(), "seq": *seq}})
            }
            None => simd_json::json!(w.topic.clone()),
        };
        let request = simd_json::json!({"op": "subscribe", "id": 1, "topics": [entry]});
        ws.send(Message::text(request.encode()))?;
        let connected = Instant::now();
        // False until the book is whole again (after a snapshot, or a recovered resume).
        let mut whole = false;
        let mut epoch = String::new();
        let mut last_seq = at.as_ref().map_or(0, |a| a.1);
        loop {
            let done = w.duration.is_some_and(|d| started.elapsed() >= d);
            let reconnect = w
                .reconnect_every
                .is_some_and(|every| connected.elapsed() >= every);
            if done || reconnect {
                let _ = ws.close(None);
                let _ = ws.flush();
                if done {
                    return Ok(report);
                }
                break;
            }
            if w.print && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let best = |l: Option<&crate::book::Level>| {
                    l.map_or("-".to_string(), |l| format!("{} x {}", l.price, l.size))
                };
                println!(
                    "{} seq {last_seq} | bid {} | ask {} | checked {} ok, {} failed | resumes {} ({} recovered) | gaps {}",
                    w.topic,
                    best(book.bids().next()),
                    best(book.asks().next()),
                    report.checked - report.failed,
                    report.failed,
                    report.resumes,
                    report.recovered,
                    report.gaps
                );
            }
            let text = match ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    eprintln!("closed by server: {frame:?}");
                    return Ok(report);
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(tungstenite::Error::ConnectionClosed) => return Ok(report),
                Err(e) => return Err(e.into()),
            };
            let mut bytes = text.as_bytes().to_vec();
            let v = simd_json::to_owned_value(&mut bytes).context("server sent invalid JSON")?;
            let mut resync = false;
            match v["op"].as_str() {
                Some("ack") => {
                    let Some(e) = v["topics"].as_array().and_then(|l| l.first()) else {
                        continue;
                    };
                    epoch = e
                        .get("epoch")
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_string();
                    last_seq = e.get("seq").and_then(|x| x.as_u64()).unwrap_or(0);
                    if e.get("recovered").and_then(|x| x.as_bool()) == Some(true) {
                        report.recovered += 1;
                        whole = true;
                    } else {
                        // A new start: the book comes with the next snapshot.
                        whole = false;
                    }
                }
                Some("error") => anyhow::bail!("the server refused: {text}"),
                Some(op @ ("snapshot" | "msg")) => {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    let snapshot = op == "snapshot";
                    if snapshot {
                        report.snapshots += 1;
                        whole = true;
                    } else if seq != last_seq + 1 {
                        report.holes += 1;
                        eprintln!("unannounced hole in {}: {last_seq} then {seq}", w.topic);
                        resync = true;
                    }
                    last_seq = seq;
                    if whole && !resync {
                        report.checked += 1;
                        if let Err(e) = book.apply(&v["data"], snapshot) {
                            report.failed += 1;
                            eprintln!("{} seq {seq}: {e}", w.topic);
                            resync = true;
                        }
                    }
                    if !epoch.is_empty() {
                        at = Some((epoch.clone(), last_seq));
                    }
                }
                Some("gap") => {
                    report.gaps += 1;
                    resync = true;
                }
                _ => {}
            }
            if resync {
                whole = false;
                at = None;
                let r = simd_json::json!({"op": "resync", "id": 2, "topic": w.topic.clone()});
                ws.send(Message::text(r.encode()))?;
            }
        }
    }
}
