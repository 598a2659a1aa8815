//! `corecast watch`: a small client that subscribes and prints what arrives, checking that each
//! topic's `seq` is contiguous and reporting announced gaps. Uses tungstenite's client, not the
//! server's frame code.

use std::collections::HashMap;

use anyhow::Context;
use simd_json::prelude::*;
use tungstenite::Message;

/// Connects to `url`, with `token` as `Authorization: Bearer` when given (docs/security.md).
/// A refused upgrade's error names the HTTP status.
pub fn connect(
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>>
{
    use tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .with_context(|| format!("bad server URL {url}"))?;
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .context("the token is not a valid header value")?;
        request.headers_mut().insert("Authorization", value);
    }
    match tungstenite::connect(request) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow::bail!(
                "{url} refused the upgrade: {} {}",
                response.status(),
                body.trim()
            )
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {url}")),
    }
}

/// Runs until the server closes, or `count` messages arrived.
pub fn run(
    url: &str,
    token: Option<&str>,
    topics: &[String],
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut ws = connect(url, token)?;
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
            Some("error") if v["id"].as_u64() == Some(1) => {
                anyhow::bail!(
                    "the subscription was refused: {} ({})",
                    v["code"].as_str().unwrap_or_default(),
                    v["message"].as_str().unwrap_or_default()
                );
            }
            Some("refresh") => eprintln!(
                "the token expires at {} (Unix seconds); watch cannot refresh it: the server \
                 will close with 4004 then",
                v["expires_at"].as_u64().unwrap_or(0)
            ),
            _ => {}
        }
    }
    eprintln!("{msgs} messages, {holes} unannounced holes");
    if holes > 0 {
        anyhow::bail!("{holes} sequence holes were not announced");
    }
    Ok(())
}

/// What a book-keeping client saw (`watch --book`, loadgen's `book` scenario).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BookReport {
    /// Book messages whose checksum was checked (snapshots and deltas).
    pub checked: u64,
    /// Of those, checksums that did not match (each followed by a resync).
    pub failed: u64,
    /// Sequence holes the server did not announce.
    pub holes: u64,
    /// `gap` notices received (each followed by a resync, unless a snapshot follows).
    pub gaps: u64,
    /// Reconnections made with `since`, and how many of them recovered.
    pub resumes: u64,
    pub recovered: u64,
    /// Snapshots applied.
    pub snapshots: u64,
}

impl BookReport {
    /// Adds another client's counts to these.
    pub fn add(&mut self, o: &BookReport) {
        self.checked += o.checked;
        self.failed += o.failed;
        self.holes += o.holes;
        self.gaps += o.gaps;
        self.resumes += o.resumes;
        self.recovered += o.recovered;
        self.snapshots += o.snapshots;
    }
}

/// One topic's order book kept by a client across connections: it builds the subscribe
/// request (with `since` once it holds a position), applies what arrives
/// ([`crate::book::Book`]), checks every checksum, and answers a failed checksum, a gap or a
/// hole with a resync. Transport-agnostic: feed it each text message.
pub struct BookClient {
    pub topic: String,
    pub book: crate::book::Book,
    pub report: BookReport,
    /// Epoch and seq of the last message applied.
    at: Option<(String, u64)>,
    /// The book is whole (after a snapshot or a recovered resume).
    whole: bool,
    epoch: String,
    last_seq: u64,
}

impl BookClient {
    pub fn new(topic: &str, depth: usize) -> BookClient {
        BookClient {
            topic: topic.to_string(),
            book: crate::book::Book::new(depth),
            report: BookReport::default(),
            at: None,
            whole: false,
            epoch: String::new(),
            last_seq: 0,
        }
    }

    /// Sequence of the last message seen.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The subscribe request for a (new) connection: with `since` when the client holds a
    /// position (a resume).
    pub fn subscribe_request(&mut self) -> String {
        use simd_json::prelude::*;
        self.whole = false;
        let entry = match &self.at {
            Some((epoch, seq)) => {
                self.report.resumes += 1;
                simd_json::json!({"topic": self.topic.clone(), "since": {"epoch": epoch.clone(), "seq": *seq}})
            }
            None => simd_json::json!(self.topic.clone()),
        };
        simd_json::json!({"op": "subscribe", "id": 1, "topics": [entry]}).encode()
    }

    /// Takes one text message; returns a request to send back (a resync), if any.
    /// Errors: the message is not JSON, or the server refused the subscription.
    pub fn on_text(&mut self, text: &str) -> anyhow::Result<Option<String>> {
        use simd_json::prelude::*;
        let mut bytes = text.as_bytes().to_vec();
        let v = simd_json::to_owned_value(&mut bytes).context("server sent invalid JSON")?;
        let mut resync = false;
        match v.get("op").and_then(|o| o.as_str()) {
            Some("ack") => {
                let Some(e) = v
                    .get("topics")
                    .and_then(|l| l.as_array())
                    .and_then(|l| l.first())
                else {
                    return Ok(None);
                };
                self.epoch = e
                    .get("epoch")
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string();
                self.last_seq = e.get("seq").and_then(|x| x.as_u64()).unwrap_or(0);
                // Recovered: the same book carries on. Otherwise it comes with a snapshot.
                self.whole = e.get("recovered").and_then(|x| x.as_bool()) == Some(true);
                if self.whole {
                    self.report.recovered += 1;
                }
            }
            Some("error") => anyhow::bail!("the server refused: {text}"),
            Some(op @ ("snapshot" | "msg")) => {
                let seq = v.get("seq").and_then(|x| x.as_u64()).unwrap_or(0);
                let snapshot = op == "snapshot";
                if snapshot {
                    self.report.snapshots += 1;
                    self.whole = true;
                } else if seq != self.last_seq + 1 {
                    self.report.holes += 1;
                    resync = true;
                }
                self.last_seq = seq;
                if self.whole && !resync {
                    self.report.checked += 1;
                    let data = v.get("data").cloned().unwrap_or_default();
                    if self.book.apply(&data, snapshot).is_err() {
                        self.report.failed += 1;
                        resync = true;
                    }
                }
                if !self.epoch.is_empty() && self.whole && !resync {
                    self.at = Some((self.epoch.clone(), seq));
                }
            }
            Some("gap") => {
                self.report.gaps += 1;
                // A snapshot may follow (the resnapshot policy); if not, the resync brings
                // one. Either way the book is not whole until then.
                resync = true;
            }
            _ => {}
        }
        if !resync {
            return Ok(None);
        }
        self.whole = false;
        self.at = None;
        Ok(Some(
            simd_json::json!({"op": "resync", "id": 2, "topic": self.topic.clone()}).encode(),
        ))
    }
}

/// How `watch --book` runs.
#[derive(Debug, Clone)]
pub struct BookWatch {
    pub url: String,
    /// Sent as `Authorization: Bearer`, when set.
    pub token: Option<String>,
    pub topic: String,
    /// Disconnect and resume (with `since`) this often; `None`: stay connected.
    pub reconnect_every: Option<std::time::Duration>,
    /// Stop after this long; `None`: until the server closes.
    pub duration: Option<std::time::Duration>,
    /// Print a status line each second.
    pub print: bool,
}

/// `corecast watch --book TOPIC`: keeps the topic's order book from its snapshot and deltas
/// ([`BookClient`]), checks the checksum of every message, and, when asked, disconnects and
/// resumes from where it was (`since`), carrying on with the same book when the server
/// recovers the missed messages. Errors: connecting, or the server refusing the subscription.
pub fn run_book(w: &BookWatch) -> anyhow::Result<BookReport> {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let mut client = BookClient::new(&w.topic, crate::demo::BOOK_DEPTH);
    let mut last_print = Instant::now();
    loop {
        let mut ws = connect(&w.url, w.token.as_deref())?;
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
        }
        ws.send(Message::text(client.subscribe_request()))?;
        let connected = Instant::now();
        loop {
            let done = w.duration.is_some_and(|d| started.elapsed() >= d);
            let reconnect = w
                .reconnect_every
                .is_some_and(|every| connected.elapsed() >= every);
            if done || reconnect {
                let _ = ws.close(None);
                let _ = ws.flush();
                if done {
                    return Ok(client.report);
                }
                break;
            }
            if w.print && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let best = |l: Option<&crate::book::Level>| {
                    l.map_or("-".to_string(), |l| format!("{} x {}", l.price, l.size))
                };
                let r = &client.report;
                println!(
                    "{} seq {} | bid {} | ask {} | checked {} ok, {} failed | resumes {} ({} recovered) | gaps {}",
                    w.topic,
                    client.last_seq(),
                    best(client.book.bids().next()),
                    best(client.book.asks().next()),
                    r.checked - r.failed,
                    r.failed,
                    r.resumes,
                    r.recovered,
                    r.gaps
                );
            }
            let text = match ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    eprintln!("closed by server: {frame:?}");
                    return Ok(client.report);
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
                Err(tungstenite::Error::ConnectionClosed) => return Ok(client.report),
                Err(e) => return Err(e.into()),
            };
            if let Some(reply) = client.on_text(&text)? {
                ws.send(Message::text(reply))?;
            }
        }
    }
}
