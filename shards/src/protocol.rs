//! The client protocol (JSON text frames), documented in docs/protocol.md. Any thread.
//!
//! Client -> server: `subscribe`, `unsubscribe`, `ping`. Server -> client: `welcome`, `ack`,
//! `msg` (encoded here, once per event, by the dispatcher), `gap`, `error`, `pong`.

use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::frame::{encode_header, server_frame, MAX_SERVER_HEADER, OP_TEXT};

/// Error codes of `error` messages; the connection stays open after each of them.
pub mod code {
    pub const INVALID_JSON: &str = "invalid_json";
    pub const UNKNOWN_OP: &str = "unknown_op";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const BAD_TOPIC: &str = "bad_topic";
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    pub const TOO_MANY_PATTERNS: &str = "too_many_patterns";
    pub const RATE_LIMITED: &str = "rate_limited";
    /// `resync` on a topic that is not a snapshot topic.
    pub const NO_SNAPSHOT: &str = "no_snapshot";
    /// A subscribe to a topic the connection's token (or anonymous access) does not allow;
    /// the request is refused as a whole.
    pub const FORBIDDEN: &str = "forbidden";
    /// A request before the `auth` message on a server without anonymous access.
    pub const AUTH_REQUIRED: &str = "auth_required";
    /// An `auth` whose token was refused; the error's `reason` says why (docs/security.md).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// A refresh `auth` with a token for another user; the old token stays in force.
    pub const SUB_MISMATCH: &str = "sub_mismatch";
    /// An `auth` for a user with `limits.connections_per_user` connections open.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
}

/// Where a client's copy of a topic stands: the `since` of a subscribe entry
/// (`{"topic":T,"since":{"epoch":E,"seq":N}}`): it holds every message of epoch E up to N.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// One entry of a subscribe's `topics`: a name (topic or pattern), with `since` to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeEntry {
    pub name: String,
    pub since: Option<Since>,
}

/// A `topics` entry as sent: a string, or an object with `topic` and optional `since`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawEntry {
    Name(String),
    Object { topic: String, since: Option<Since> },
}

/// A client request, as parsed from a text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Subscribe {
        id: Option<u64>,
        topics: Vec<SubscribeEntry>,
    },
    Unsubscribe {
        id: Option<u64>,
        topics: Vec<String>,
    },
    Ping {
        id: Option<u64>,
    },
    /// Start a snapshot topic over: queued frames purged, then the snapshot and its deltas;
    /// `fresh` asks the publisher for a new snapshot.
    Resync {
        id: Option<u64>,
        topic: String,
        fresh: bool,
    },
    /// Authenticate (or refresh) with a JWT; docs/protocol.md, "Authentication".
    Auth {
        id: Option<u64>,
        token: String,
    },
    /// `{"op":"auth","admin_key":…}`: the operator, for the reserved `_sys.` topics;
    /// docs/protocol.md, "Reserved topics".
    AdminAuth {
        id: Option<u64>,
        key: String,
    },
}

/// A request that could not be understood: the `error` message to send back.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub id: Option<u64>,
    pub code: &'static str,
    pub message: String,
}

#[derive(Deserialize)]
struct RawRequest {
    op: Option<String>,
    id: Option<serde_json_id::Id>,
    topics: Option<Vec<RawEntry>>,
    topic: Option<String>,
    fresh: Option<bool>,
    token: Option<String>,
    admin_key: Option<String>,
}

/// `id` is echoed back; anything but an unsigned integer is a `bad_request`.
mod serde_json_id {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Id {
        Num(u64),
        Other(serde::de::IgnoredAny),
    }
}

/// Parses one client text message. `text` is scratch: simd-json parses in place.
pub fn parse_request(text: &mut [u8], max_topics: usize) -> Result<Request, Rejected> {
    let raw: RawRequest = simd_json::serde::from_slice(text).map_err(|e| Rejected {
        id: None,
        code: code::INVALID_JSON,
        message: format!("not a JSON object of the protocol: {e}"),
    })?;
    let id = match raw.id {
        None => None,
        Some(serde_json_id::Id::Num(n)) => Some(n),
        Some(serde_json_id::Id::Other(_)) => {
            return Err(Rejected {
                id: None,
                code: code::BAD_REQUEST,
                message: "\"id\" must be an unsigned integer".into(),
            })
        }
    };
    let reject = |code, message: String| Rejected { id, code, message };
    let op = raw
        .op
        .ok_or_else(|| reject(code::UNKNOWN_OP, "missing \"op\"".into()))?;
    let topics = |raw_topics: Option<Vec<RawEntry>>| match raw_topics {
        None => Err(reject(
            code::BAD_REQUEST,
            format!("\"{op}\" needs \"topics\""),
        )),
        Some(t) if t.is_empty() => Err(reject(code::BAD_REQUEST, "\"topics\" is empty".into())),
        Some(t) if t.len() > max_topics => Err(reject(
            code::BAD_REQUEST,
            format!(
                "{} topics in one request; the limit is {max_topics}",
                t.len()
            ),
        )),
        Some(t) => Ok(t),
    };
    match op.as_str() {
        "subscribe" => Ok(Request::Subscribe {
            id,
            topics: topics(raw.topics)?
                .into_iter()
                .map(|e| match e {
                    RawEntry::Name(name) => SubscribeEntry { name, since: None },
                    RawEntry::Object { topic, since } => SubscribeEntry { name: topic, since },
                })
                .collect(),
        }),
        "unsubscribe" => Ok(Request::Unsubscribe {
            id,
            topics: topics(raw.topics)?
                .into_iter()
                .map(|e| match e {
                    RawEntry::Name(name) => Ok(name),
                    RawEntry::Object { .. } => Err(reject(
                        code::BAD_REQUEST,
                        "unsubscribe takes topic names, not objects".into(),
                    )),
                })
                .collect::<Result<_, _>>()?,
        }),
        "ping" => Ok(Request::Ping { id }),
        "resync" => Ok(Request::Resync {
            id,
            topic: raw
                .topic
                .ok_or_else(|| reject(code::BAD_REQUEST, "\"resync\" needs \"topic\"".into()))?,
            fresh: raw.fresh.unwrap_or(false),
        }),
        "auth" => match (raw.token, raw.admin_key) {
            (Some(token), None) => Ok(Request::Auth { id, token }),
            (None, Some(key)) => Ok(Request::AdminAuth { id, key }),
            (Some(_), Some(_)) => Err(reject(
                code::BAD_REQUEST,
                "\"auth\" takes \"token\" or \"admin_key\", not both".into(),
            )),
            (None, None) => Err(reject(
                code::BAD_REQUEST,
                "\"auth\" needs \"token\" (or \"admin_key\")".into(),
            )),
        },
        other => Err(reject(
            code::UNKNOWN_OP,
            format!("unknown op {other:?}; expected subscribe, unsubscribe, resync, auth or ping"),
        )),
    }
}

/// One topic's line in an `ack`: its current sequence and epoch (`None` for a pattern), and
/// for a subscribe where its data starts (`start`: `"next"` or `"snapshot"`), whether a
/// snapshot is still awaited (`waiting`), and, when `since` was given, whether the messages
/// after it follow (`recovered`). docs/protocol.md, "Recovery".
#[derive(Debug, Serialize, PartialEq, Eq, Default)]
pub struct AckTopic<'a> {
    pub topic: &'a str,
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Out<'a> {
    Welcome {
        conn: &'a str,
        heartbeat_ms: u64,
        timeout_ms: u64,
        max_message_bytes: usize,
        #[serde(flatten)]
        auth: WelcomeAuth<'a>,
    },
    #[serde(rename = "ack")]
    AdminAck {
        id: Option<u64>,
        admin: bool,
    },
    #[serde(rename = "ack")]
    AuthAck {
        id: Option<u64>,
        sub: &'a str,
        expires_at: u64,
    },
    Refresh {
        expires_at: u64,
    },
    Unsubscribed {
        topic: &'a str,
        reason: &'a str,
    },
    Ack {
        id: Option<u64>,
        topics: &'a [AckTopic<'a>],
    },
    Gap {
        topic: &'a str,
        from: u64,
        to: u64,
        reason: &'a str,
    },
    Error {
        id: Option<u64>,
        code: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        message: &'a str,
    },
    Pong {
        id: Option<u64>,
    },
}

fn text_frame(msg: &Out<'_>) -> Vec<u8> {
    // Serialising these small structs cannot fail: no maps with non-string keys, no floats.
    let json = simd_json::serde::to_vec(msg).expect("protocol message serialises");
    server_frame(OP_TEXT, &json)
}

/// `msg` frame, the one frame the dispatcher encodes per published event and every
/// subscriber shares:
/// `{"op":"msg","topic":T,"seq":N,"ts":N,"data":D}`. `topic` needs no escaping (validated
/// charset) and `data` is already JSON. One allocation; the header is written in front of the
/// payload once its length is known.
pub fn msg(topic: &str, seq: u64, ts: u64, data: &[u8]) -> Bytes {
    data_frame(topic, seq, None, ts, data)
}

/// `snapshot` frame: a message published with `"snapshot": true` on a snapshot topic,
/// `{"op":"snapshot","topic":T,"seq":N,"epoch":E,"ts":N,"data":D}`; made like [`msg`].
pub fn snapshot(topic: &str, seq: u64, epoch: &str, ts: u64, data: &[u8]) -> Bytes {
    data_frame(topic, seq, Some(epoch), ts, data)
}

fn data_frame(topic: &str, seq: u64, epoch: Option<&str>, ts: u64, data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + 96 + topic.len() + data.len());
    buf.resize(MAX_SERVER_HEADER, 0);
    buf.extend_from_slice(if epoch.is_some() {
        SNAPSHOT_START
    } else {
        MSG_START
    });
    buf.extend_from_slice(topic.as_bytes());
    // Writing integers into a Vec cannot fail.
    let _ = write!(buf, "\",\"seq\":{seq}");
    if let Some(epoch) = epoch {
        // Epochs are made by the server from [A-Za-z0-9] only: no escaping.
        let _ = write!(buf, ",\"epoch\":\"{epoch}\"");
    }
    let _ = write!(buf, ",\"ts\":{ts},\"data\":");
    buf.extend_from_slice(data);
    buf.push(b'}');
    let len = buf.len() - MAX_SERVER_HEADER;
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_header(OP_TEXT, len, &mut head);
    let start = MAX_SERVER_HEADER - n;
    buf[start..MAX_SERVER_HEADER].copy_from_slice(&head[..n]);
    Bytes::from(buf).slice(start..)
}

const MSG_START: &[u8] = b"{\"op\":\"msg\",\"topic\":\"";
const SNAPSHOT_START: &[u8] = b"{\"op\":\"snapshot\",\"topic\":\"";

/// The topic name inside a frame made by [`msg`] or [`snapshot`]: after the WebSocket header
/// (2, 4 or 10 bytes, RFC 6455 §5.2) and the fixed `{"op":"msg","topic":"` (or `"snapshot"`),
/// up to the next `"` (topic names never need escaping, see `crate::topic`). `None` when
/// `frame` is not one of theirs.
pub fn msg_topic(frame: &[u8]) -> Option<&str> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let body = frame.get(header..)?;
    let rest = body
        .strip_prefix(MSG_START)
        .or_else(|| body.strip_prefix(SNAPSHOT_START))?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Where a new connection stands with authentication, in its `welcome`: nothing when auth
/// is off or it is anonymous; `"auth":"required"` with the deadline when it must send `auth`;
/// its `sub` and `expires_at` when its upgrade carried a valid token.
#[derive(Debug, Default, Serialize)]
pub struct WelcomeAuth<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'static str>,
    /// How long the client has to send `auth`, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    /// The token's `exp`, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `welcome` frame, sent once after the handshake.
pub fn welcome(
    conn: &str,
    heartbeat_ms: u64,
    timeout_ms: u64,
    max_message_bytes: usize,
    auth: WelcomeAuth<'_>,
) -> Vec<u8> {
    text_frame(&Out::Welcome {
        conn,
        heartbeat_ms,
        timeout_ms,
        max_message_bytes,
        auth,
    })
}

/// `ack` of an `auth`: `{"op":"ack","id":N,"sub":S,"expires_at":T}` (Unix seconds).
pub fn auth_ack(id: Option<u64>, sub: &str, expires_at: u64) -> Vec<u8> {
    text_frame(&Out::AuthAck {
        id,
        sub,
        expires_at,
    })
}

/// `ack` of an `auth` with the right admin key: `{"op":"ack","id":N,"admin":true}`.
pub fn admin_ack(id: Option<u64>) -> Vec<u8> {
    text_frame(&Out::AdminAck { id, admin: true })
}

/// `refresh`: the token ends at `expires_at` (Unix seconds); send a new `auth` before then.
pub fn refresh(expires_at: u64) -> Vec<u8> {
    text_frame(&Out::Refresh { expires_at })
}

/// `unsubscribed`: the server ended a subscription (`reason`: `forbidden` after a refresh
/// with fewer permissions).
pub fn unsubscribed(topic: &str, reason: &str) -> Vec<u8> {
    text_frame(&Out::Unsubscribed { topic, reason })
}

/// `error` frame with a `reason` (an `unauthorized` token's reason).
pub fn error_with_reason(id: Option<u64>, code: &str, reason: &str, message: &str) -> Vec<u8> {
    text_frame(&Out::Error {
        id,
        code,
        reason: Some(reason),
        message,
    })
}

/// `ack` frame for a subscribe or unsubscribe.
pub fn ack(id: Option<u64>, topics: &[AckTopic<'_>]) -> Vec<u8> {
    text_frame(&Out::Ack { id, topics })
}

/// `gap` frame: messages `from..=to` of `topic` will never reach this client.
pub fn gap(topic: &str, from: u64, to: u64, reason: &str) -> Vec<u8> {
    text_frame(&Out::Gap {
        topic,
        from,
        to,
        reason,
    })
}

/// `error` frame; the connection stays open.
pub fn error(id: Option<u64>, code: &str, message: &str) -> Vec<u8> {
    text_frame(&Out::Error {
        id,
        code,
        reason: None,
        message,
    })
}

/// `pong` frame answering an application-level `ping`.
pub fn pong(id: Option<u64>) -> Vec<u8> {
    text_frame(&Out::Pong { id })
}

/// Gap reasons.
pub mod reason {
    /// The client read too slowly; its queue dropped the oldest frames.
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    /// The shard itself fell behind the dispatcher and frames were dropped before it.
    pub const SHARD_OVERFLOW: &str = "shard_overflow";
    /// A subscriber of a snapshot topic waited `snapshot_wait_ms` and no snapshot came; it
    /// keeps waiting.
    pub const NO_SNAPSHOT: &str = "no_snapshot";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_takes_a_token_or_an_admin_key_never_both() {
        let parse = |t: &str| parse_request(&mut t.as_bytes().to_vec(), 100);
        assert_eq!(
            parse(r#"{"op":"auth","id":1,"admin_key":"k"}"#),
            Ok(Request::AdminAuth {
                id: Some(1),
                key: "k".into()
            })
        );
        assert_eq!(
            parse(r#"{"op":"auth","token":"t"}"#),
            Ok(Request::Auth {
                id: None,
                token: "t".into()
            })
        );
        for bad in [
            r#"{"op":"auth","id":2,"admin_key":"k","token":"t"}"#,
            r#"{"op":"auth","id":2}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.id, e.code), (Some(2), code::BAD_REQUEST), "{bad}");
        }
        let ack = admin_ack(Some(5));
        assert_eq!(&ack[2..], br#"{"op":"ack","id":5,"admin":true}"#);
    }

    #[test]
    fn msg_frame_is_a_text_frame_of_the_documented_json() {
        let f = msg(
            "book.BTCUSD",
            42,
            1_700_000_000_000_000,
            br#"{"b":[["1","2"]]}"#,
        );
        let json = br#"{"op":"msg","topic":"book.BTCUSD","seq":42,"ts":1700000000000000,"data":{"b":[["1","2"]]}}"#;
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1] as usize, json.len());
        assert_eq!(&f[2..], &json[..]);
    }

    #[test]
    fn long_payload_gets_extended_length() {
        let data = format!("\"{}\"", "x".repeat(300));
        let f = msg("t", 1, 2, data.as_bytes());
        assert_eq!(f[1], 126);
        let len = u16::from_be_bytes([f[2], f[3]]) as usize;
        assert_eq!(len, f.len() - 4);
    }

    #[test]
    fn the_topic_is_read_back_from_a_msg_frame_of_every_header_length() {
        // Payload length codes: the length itself (2-byte header), 126 (4), 127 (10).
        for (len, code) in [(10usize, None), (300, Some(126u8)), (70_000, Some(127))] {
            let data = format!("\"{}\"", "x".repeat(len));
            let f = msg("book.ETH-USD:perp", 7, 1, data.as_bytes());
            assert_eq!(f[1] >= 126, code.is_some());
            if let Some(code) = code {
                assert_eq!(f[1], code);
            }
            assert_eq!(msg_topic(&f), Some("book.ETH-USD:perp"));
        }
        assert_eq!(msg_topic(&gap("t", 1, 2, "x")), None, "not a msg frame");
        assert_eq!(msg_topic(b"\x81"), None, "truncated");
    }

    fn parse(s: &str) -> Result<Request, Rejected> {
        parse_request(&mut s.as_bytes().to_vec(), 4)
    }

    fn named(name: &str) -> SubscribeEntry {
        SubscribeEntry {
            name: name.into(),
            since: None,
        }
    }

    #[test]
    fn parses_the_ops() {
        assert_eq!(
            parse(r#"{"op":"subscribe","id":1,"topics":["a.b","c.*"]}"#),
            Ok(Request::Subscribe {
                id: Some(1),
                topics: vec![named("a.b"), named("c.*")]
            })
        );
        assert_eq!(
            parse(
                r#"{"op":"subscribe","topics":["a",{"topic":"b"},{"topic":"c","since":{"epoch":"e","seq":7}}]}"#
            ),
            Ok(Request::Subscribe {
                id: None,
                topics: vec![
                    named("a"),
                    named("b"),
                    SubscribeEntry {
                        name: "c".into(),
                        since: Some(Since {
                            epoch: "e".into(),
                            seq: 7
                        })
                    }
                ]
            })
        );
        for bad in [
            r#"{"op":"subscribe","topics":[{"since":{"epoch":"e","seq":7}}]}"#,
            r#"{"op":"subscribe","topics":[{"topic":"c","since":{"epoch":"e"}}]}"#,
            r#"{"op":"subscribe","topics":[{"topic":"c","since":{"epoch":"e","seq":-1}}]}"#,
            r#"{"op":"subscribe","topics":[7]}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, code::INVALID_JSON, "{bad}");
        }
        assert_eq!(
            parse(r#"{"op":"unsubscribe","topics":[{"topic":"a"}]}"#)
                .unwrap_err()
                .code,
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(r#"{"op":"resync","id":7,"topic":"book.A","fresh":true}"#),
            Ok(Request::Resync {
                id: Some(7),
                topic: "book.A".into(),
                fresh: true
            })
        );
        assert_eq!(
            parse(r#"{"op":"resync","id":7}"#).unwrap_err().code,
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(r#"{"op":"unsubscribe","topics":["a"]}"#),
            Ok(Request::Unsubscribe {
                id: None,
                topics: vec!["a".into()]
            })
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":3}"#),
            Ok(Request::Ping { id: Some(3) })
        );
    }

    #[test]
    fn rejects_with_codes() {
        assert_eq!(parse("{nope").unwrap_err().code, code::INVALID_JSON);
        assert_eq!(parse("[1,2]").unwrap_err().code, code::INVALID_JSON);
        assert_eq!(parse(r#"{"id":1}"#).unwrap_err().code, code::UNKNOWN_OP);
        let e = parse(r#"{"op":"dance","id":9}"#).unwrap_err();
        assert_eq!((e.code, e.id), (code::UNKNOWN_OP, Some(9)));
        assert_eq!(
            parse(r#"{"op":"subscribe","id":1}"#).unwrap_err().code,
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(r#"{"op":"subscribe","topics":[]}"#).unwrap_err().code,
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(r#"{"op":"subscribe","topics":["a","b","c","d","e"]}"#)
                .unwrap_err()
                .code,
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":"x"}"#).unwrap_err().code,
            code::BAD_REQUEST
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":-1}"#).unwrap_err().code,
            code::BAD_REQUEST
        );
    }

    #[test]
    fn server_messages_are_text_frames_of_json() {
        let f = ack(
            Some(1),
            &[
                AckTopic {
                    topic: "a",
                    seq: Some(5),
                    epoch: Some("e1"),
                    recovered: Some(true),
                    start: Some("next"),
                    waiting: false,
                },
                AckTopic {
                    topic: "c",
                    seq: Some(0),
                    epoch: Some("e1"),
                    start: Some("snapshot"),
                    waiting: true,
                    ..Default::default()
                },
                AckTopic {
                    topic: "b.*",
                    seq: None,
                    ..Default::default()
                },
            ],
        );
        assert_eq!(f[0], 0x81);
        // Over 125 bytes: a 16-bit length follows (RFC 6455 §5.2).
        assert_eq!(f[1], 126);
        let body = std::str::from_utf8(&f[4..]).unwrap();
        assert_eq!(
            body,
            r#"{"op":"ack","id":1,"topics":[{"topic":"a","seq":5,"epoch":"e1","recovered":true,"start":"next"},{"topic":"c","seq":0,"epoch":"e1","start":"snapshot","waiting":true},{"topic":"b.*","seq":null}]}"#
        );
        let g = gap("t", 3, 9, reason::SLOW_CONSUMER);
        assert_eq!(
            std::str::from_utf8(&g[2..]).unwrap(),
            r#"{"op":"gap","topic":"t","from":3,"to":9,"reason":"slow_consumer"}"#
        );
    }
}
