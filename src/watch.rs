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
            Some("msg") => {
                let topic = v["topic"].as_str().unwrap_or_default().to_string();
                let seq = v["seq"].as_u64().unwrap_or(0);
                if let Some(prev) = last.insert(topic.clone(), seq) {
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
