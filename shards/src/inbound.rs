//! Reassembles client frames into messages (RFC 6455 sections 5.4-5.6). Shard-local state of
//! one connection; pure logic, no I/O. Holds no heap memory while no partial frame is pending.
//!
//! Every frame yields exactly one event, so whatever the caller promises per inbound frame
//! (the rate limit) holds for continuation frames too: a frame that does not finish its
//! message is an [`Event::Fragment`].

use crate::close;
use crate::frame::{parse_inbound, unmask, FrameError, Kind};

/// The kind of a data message (RFC 6455 5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// What one inbound frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message, UTF-8 checked.
    Text(Vec<u8>),
    /// A whole binary message.
    Binary(Vec<u8>),
    /// A data frame that does not finish its message (the first of a fragmented message, or
    /// a continuation without FIN), of a message of this kind. Its bytes are kept until the
    /// message is whole.
    Fragment(MessageKind),
    /// A ping with its payload, to be answered with a pong.
    Ping(Vec<u8>),
    /// A pong (answers a server ping).
    Pong,
    /// The client's close frame, with its status code if it sent one (RFC 6455 5.5.1).
    Close(Option<u16>),
}

/// A violation that ends the connection: the close code and a reason for the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    pub code: u16,
    pub reason: String,
}

impl From<FrameError> for Fatal {
    fn from(e: FrameError) -> Self {
        Fatal {
            code: e.close_code(),
            reason: e.to_string(),
        }
    }
}

fn fatal(code: u16, reason: &str) -> Fatal {
    Fatal {
        code,
        reason: reason.into(),
    }
}

/// A fragmented message in progress.
struct Partial {
    kind: MessageKind,
    bytes: Vec<u8>,
    /// For text: how many leading bytes are known to be valid UTF-8 (the rest is at most an
    /// unfinished character), so invalid text fails on the frame that carries it.
    valid_to: usize,
}

/// Inbound reassembly state of one connection.
#[derive(Default)]
pub struct Reassembler {
    /// Received bytes not yet parsed into a whole frame.
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    start: usize,
    /// A fragmented message in progress. Boxed: one pointer instead of the state in every
    /// connection; the allocation exists only while a fragmented message is open.
    fragment: Option<Box<Partial>>,
}

impl Reassembler {
    /// Appends bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet consumed.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The event of the next complete frame, `Ok(None)` when more bytes are needed.
    /// `max` is the largest message accepted, in bytes (1009 past it). Checks, in order:
    /// the header's framing rules (1002), the order of fragments (RFC 6455 5.4; 1002), the
    /// size (1009), then UTF-8 of text (1007, as soon as an invalid byte arrives) and the
    /// close frame's body.
    pub fn next_event(&mut self, max: usize) -> Result<Option<Event>, Fatal> {
        let avail = &self.buf[self.start..];
        let Some(h) = parse_inbound(avail)? else {
            self.compact();
            return Ok(None);
        };
        let so_far = self.fragment.as_ref().map_or(0, |f| f.bytes.len());
        match (h.kind, &self.fragment) {
            (Kind::Continuation, None) => {
                return Err(fatal(
                    close::PROTOCOL_ERROR,
                    "continuation without a message",
                ))
            }
            (Kind::Text | Kind::Binary, Some(_)) => {
                return Err(fatal(
                    close::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                ))
            }
            _ => {}
        }
        let data = matches!(h.kind, Kind::Text | Kind::Binary | Kind::Continuation);
        if data && h.payload_len.saturating_add(so_far as u64) > max as u64 {
            return Err(
                FrameError::TooBig(h.payload_len.saturating_add(so_far as u64), max).into(),
            );
        }
        // Control payloads are at most 125 bytes and data payloads at most `max`: this fits.
        let total = h.header_len + h.payload_len as usize;
        if avail.len() < total {
            self.compact();
            return Ok(None);
        }
        let mut payload = avail[h.header_len..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
        unmask(&mut payload, h.mask);
        let event = match h.kind {
            Kind::Text if h.fin => Event::Text(utf8(payload)?),
            Kind::Binary if h.fin => Event::Binary(payload),
            Kind::Text | Kind::Binary => {
                let kind = if h.kind == Kind::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                let mut partial = Box::new(Partial {
                    kind,
                    bytes: payload,
                    valid_to: 0,
                });
                partial.check_utf8()?;
                self.fragment = Some(partial);
                Event::Fragment(kind)
            }
            Kind::Continuation => {
                let mut partial = self.fragment.take().expect("checked above");
                partial.bytes.extend_from_slice(&payload);
                partial.check_utf8()?;
                match (h.fin, partial.kind) {
                    (false, kind) => {
                        self.fragment = Some(partial);
                        Event::Fragment(kind)
                    }
                    (true, MessageKind::Text) if partial.valid_to != partial.bytes.len() => {
                        return Err(invalid_text())
                    }
                    (true, MessageKind::Text) => Event::Text(partial.bytes),
                    (true, MessageKind::Binary) => Event::Binary(partial.bytes),
                }
            }
            Kind::Ping => Event::Ping(payload),
            Kind::Pong => Event::Pong,
            Kind::Close => Event::Close(close_code(&payload)?),
        };
        Ok(Some(event))
    }

    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

impl Partial {
    /// Advances `valid_to` over the text received so far; an invalid sequence (not merely an
    /// unfinished one) is a 1007 now. Linear in the bytes added since the last call.
    fn check_utf8(&mut self) -> Result<(), Fatal> {
        if self.kind != MessageKind::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.bytes[self.valid_to..]) {
            Ok(_) => self.valid_to = self.bytes.len(),
            Err(e) if e.error_len().is_some() => return Err(invalid_text()),
            Err(e) => self.valid_to += e.valid_up_to(),
        }
        Ok(())
    }
}

fn invalid_text() -> Fatal {
    fatal(close::INVALID_UTF8, "text message is not valid UTF-8")
}

fn utf8(payload: Vec<u8>) -> Result<Vec<u8>, Fatal> {
    match std::str::from_utf8(&payload) {
        Ok(_) => Ok(payload),
        Err(_) => Err(invalid_text()),
    }
}

/// RFC 6455 5.5.1 and 7.4: an empty body, or a code a peer may send and a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, Fatal> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(fatal(
            close::PROTOCOL_ERROR,
            "close frame with a 1-byte body",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close::may_be_received(code) {
                return Err(fatal(close::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(fatal(
                    close::INVALID_UTF8,
                    "close reason is not valid UTF-8",
                ));
            }
            Ok(Some(code))
        }
    }
}

/// Feeds `chunks` one after another (the way TCP might split them) and collects every event
/// until more bytes are needed or a violation ends the stream. The outcome never depends on
/// how the bytes were split; the fuzz target and the corpus test hold it to that.
pub fn events_of(chunks: &[&[u8]], max: usize) -> (Vec<Event>, Option<Fatal>) {
    let mut r = Reassembler::default();
    let mut events = Vec::new();
    for chunk in chunks {
        r.feed(chunk);
        loop {
            match r.next_event(max) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(f) => return (events, Some(f)),
            }
        }
    }
    (events, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut v = vec![first];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn byte_by_byte_feeding_yields_the_message_once() {
        let wire = client_frame(0x81, b"{\"op\":\"ping\"}");
        let mut r = Reassembler::default();
        for (i, b) in wire.iter().enumerate() {
            r.feed(&[*b]);
            let e = r.next_event(1000).unwrap();
            if i + 1 < wire.len() {
                assert_eq!(e, None);
            } else {
                assert_eq!(e, Some(Event::Text(b"{\"op\":\"ping\"}".to_vec())));
            }
        }
        assert_eq!(r.pending(), 0);
        assert_eq!(r.buf.capacity(), 0, "no memory held when idle");
    }

    #[test]
    fn fragments_are_joined_and_controls_may_interleave() {
        let mut wire = client_frame(0x01, b"hel");
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(0x80, b"lo"));
        let mut r = Reassembler::default();
        r.feed(&wire);
        assert_eq!(
            r.next_event(100).unwrap(),
            Some(Event::Fragment(MessageKind::Text))
        );
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Ping(b"p".to_vec())));
        assert_eq!(
            r.next_event(100).unwrap(),
            Some(Event::Text(b"hello".to_vec()))
        );
        assert_eq!(r.next_event(100).unwrap(), None);
    }

    #[test]
    fn violations_map_to_close_codes() {
        let code = |wire: Vec<u8>, max| {
            let mut r = Reassembler::default();
            r.feed(&wire);
            loop {
                match r.next_event(max) {
                    Err(f) => return f.code,
                    Ok(None) => return 0,
                    Ok(Some(_)) => {}
                }
            }
        };
        assert_eq!(code(client_frame(0x81, &[0xff, 0xfe]), 100), 1007);
        assert_eq!(code(client_frame(0x81, &[b'a'; 200]), 100), 1009);
        assert_eq!(code(client_frame(0x80, b"x"), 100), 1002);
        let mut two = client_frame(0x01, b"a");
        two.extend(client_frame(0x81, b"b"));
        assert_eq!(code(two, 100), 1002);
        let mut big = client_frame(0x01, &[b'a'; 60]);
        big.extend(client_frame(0x80, &[b'a'; 60]));
        assert_eq!(code(big, 100), 1009);
        assert_eq!(code(client_frame(0x88, &[0x03]), 100), 1002);
        assert_eq!(code(client_frame(0x88, &[0x03, 0xED]), 100), 1002); // 1005 is never sent
        assert_eq!(code(vec![0x81, 0x01, b'a'], 100), 1002); // unmasked
                                                             // A sequence violation is reported as such even when the frame is also too big.
        let mut big_continuation = client_frame(0x00, &[b'a'; 200]);
        assert_eq!(code(big_continuation.clone(), 100), 1002);
        big_continuation = client_frame(0x01, b"a");
        big_continuation.extend(client_frame(0x81, &[b'a'; 200]));
        assert_eq!(code(big_continuation, 100), 1002);
        // Invalid UTF-8 fails on the fragment that carries it, before the message ends.
        let mut early = client_frame(0x01, b"ok");
        early.extend(client_frame(0x00, &[0xC0, 0xAF]));
        assert_eq!(code(early, 100), 1007);
        // A character split across fragments is fine.
        let mut split = client_frame(0x01, &[0xC3]);
        split.extend(client_frame(0x80, &[0xA9]));
        assert_eq!(
            events_of(&[&split], 100).0.last(),
            Some(&Event::Text("é".as_bytes().to_vec()))
        );
        let mut unfinished = client_frame(0x01, b"a");
        unfinished.extend(client_frame(0x80, &[0xC3]));
        assert_eq!(code(unfinished, 100), 1007);
    }

    #[test]
    fn close_codes_follow_the_registry() {
        let received = |c: u16| {
            let (events, fatal) = events_of(&[&client_frame(0x88, &c.to_be_bytes())], 100);
            match (events.as_slice(), fatal) {
                ([Event::Close(Some(got))], None) => {
                    assert_eq!(*got, c);
                    true
                }
                ([], Some(f)) => {
                    assert_eq!(f.code, 1002, "code {c}");
                    false
                }
                other => panic!("{other:?}"),
            }
        };
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(received(ok), "{ok} is accepted");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!received(bad), "{bad} is refused");
        }
    }

    #[test]
    fn every_frame_is_one_event_continuations_included() {
        let mut wire = client_frame(0x01, b"a");
        for _ in 0..1000 {
            wire.extend(client_frame(0x00, b""));
        }
        let (events, fatal) = events_of(&[&wire], 100);
        assert_eq!(fatal, None);
        assert_eq!(events.len(), 1001);
        assert!(events
            .iter()
            .all(|e| *e == Event::Fragment(MessageKind::Text)));
    }

    #[test]
    fn fragmented_binary_is_reassembled() {
        let mut wire = client_frame(0x02, &[1]);
        wire.extend(client_frame(0x80, &[2]));
        let (events, _) = events_of(&[&wire], 100);
        assert_eq!(
            events,
            vec![
                Event::Fragment(MessageKind::Binary),
                Event::Binary(vec![1, 2])
            ]
        );
    }

    #[test]
    fn close_binary_and_pong_events() {
        let mut r = Reassembler::default();
        let mut wire = client_frame(0x82, b"\x00\x01");
        wire.extend(client_frame(0x8A, b""));
        wire.extend(client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']));
        r.feed(&wire);
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Binary(vec![0, 1])));
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Pong));
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Close(Some(1000))));
    }
}
