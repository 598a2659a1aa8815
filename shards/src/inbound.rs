//! Reassembles client frames into messages (RFC 6455 sections 5.4-5.6). Shard-local state of
//! one connection; pure logic, no I/O. Holds no heap memory while no partial frame is pending.

use crate::frame::{parse_inbound, unmask, FrameError, Kind};
use crate::protocol::close;

/// One complete inbound event.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message, UTF-8 checked.
    Text(Vec<u8>),
    /// A binary message (not part of the protocol).
    Binary,
    /// A ping with its payload, to be answered with a pong.
    Ping(Vec<u8>),
    /// A pong (answers a server ping).
    Pong,
    /// The client's close frame, with its status code if it sent one.
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

/// Inbound reassembly state of one connection.
#[derive(Default)]
pub struct Reassembler {
    /// Received bytes not yet parsed into a whole frame.
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    start: usize,
    /// A fragmented text message in progress.
    // Boxed: one pointer instead of a `Vec`'s three words in every connection; the extra
    // allocation happens only while the state is in use.
    #[allow(clippy::box_collection)]
    fragment: Option<Box<Vec<u8>>>,
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

    /// The next complete event, `Ok(None)` when more bytes are needed.
    /// `max` is the largest message accepted, in bytes.
    pub fn next_event(&mut self, max: usize) -> Result<Option<Event>, Fatal> {
        loop {
            let avail = &self.buf[self.start..];
            let Some(h) = parse_inbound(avail, max)? else {
                self.compact();
                return Ok(None);
            };
            let total = h.header_len + h.payload_len;
            if avail.len() < total {
                self.compact();
                return Ok(None);
            }
            let mut payload = avail[h.header_len..total].to_vec();
            self.start += total;
            unmask(&mut payload, h.mask);
            let event = match h.kind {
                Kind::Text if self.fragment.is_some() => {
                    return Err(fatal(
                        close::PROTOCOL_ERROR,
                        "new message inside a fragmented one",
                    ))
                }
                Kind::Text if h.fin => Some(Event::Text(utf8(payload)?)),
                Kind::Text => {
                    self.fragment = Some(Box::new(payload));
                    None
                }
                Kind::Continuation => {
                    let Some(mut so_far) = self.fragment.take() else {
                        return Err(fatal(
                            close::PROTOCOL_ERROR,
                            "continuation without a message",
                        ));
                    };
                    if so_far.len() + payload.len() > max {
                        return Err(
                            FrameError::TooBig((so_far.len() + payload.len()) as u64, max).into(),
                        );
                    }
                    so_far.extend_from_slice(&payload);
                    if h.fin {
                        Some(Event::Text(utf8(*so_far)?))
                    } else {
                        self.fragment = Some(so_far);
                        None
                    }
                }
                Kind::Binary => Some(Event::Binary),
                Kind::Ping => Some(Event::Ping(payload)),
                Kind::Pong => Some(Event::Pong),
                Kind::Close => Some(Event::Close(close_code(&payload)?)),
            };
            if let Some(e) = event {
                if self.start == self.buf.len() {
                    self.buf = Vec::new();
                    self.start = 0;
                }
                return Ok(Some(e));
            }
        }
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

fn utf8(payload: Vec<u8>) -> Result<Vec<u8>, Fatal> {
    match std::str::from_utf8(&payload) {
        Ok(_) => Ok(payload),
        Err(_) => Err(fatal(
            close::INVALID_UTF8,
            "text message is not valid UTF-8",
        )),
    }
}

/// RFC 6455 5.5.1 and 7.4: an empty body, or a valid code and a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, Fatal> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(fatal(
            close::PROTOCOL_ERROR,
            "close frame with a 1-byte body",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
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
    }

    #[test]
    fn close_binary_and_pong_events() {
        let mut r = Reassembler::default();
        let mut wire = client_frame(0x82, b"\x00\x01");
        wire.extend(client_frame(0x8A, b""));
        wire.extend(client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']));
        r.feed(&wire);
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Binary));
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Pong));
        assert_eq!(r.next_event(100).unwrap(), Some(Event::Close(Some(1000))));
    }
}
