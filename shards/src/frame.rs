//! WebSocket framing (RFC 6455 section 5): the server-side encoder used once per published
//! message, and the inbound frame reader's checks. Pure functions, any thread.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest header a server frame can have: 2 bytes + 8-byte extended length (RFC 6455 5.2).
pub const MAX_SERVER_HEADER: usize = 10;

/// Writes the header of an unmasked, final frame with `opcode` and a payload of `len` bytes
/// into the end of `out` (RFC 6455 5.2: servers never mask). Returns the header length.
#[inline]
pub fn encode_header(opcode: u8, len: usize, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    out[0] = 0x80 | opcode; // FIN + opcode
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Opcode of a text frame (RFC 6455 5.2).
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Builds a complete server frame (header + payload) in a fresh buffer.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_header(opcode, payload.len(), &mut head);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&head[..n]);
    v.extend_from_slice(payload);
    v
}

/// A close frame with a status code and reason (RFC 6455 5.5.1); the reason is cut to fit 123 bytes.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut reason = &reason.as_bytes()[..reason.len().min(123)];
    while std::str::from_utf8(reason).is_err() {
        reason = &reason[..reason.len() - 1];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    server_frame(OP_CLOSE, &payload)
}

/// The kind of an inbound frame once its header passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Continuation,
    Close,
    Ping,
    Pong,
}

/// An inbound frame header that passed the protocol checks.
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    pub kind: Kind,
    pub fin: bool,
    pub mask: [u8; 4],
    /// Header length in bytes.
    pub header_len: usize,
    /// Payload length in bytes.
    pub payload_len: usize,
}

/// Why an inbound frame ends the connection, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RFC 6455 5.1: "a client MUST mask all frames that it sends to the server".
    #[error("client frame is not masked")]
    Unmasked,
    /// RFC 6455 5.2: RSV bits must be 0 unless an extension was negotiated (none is).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// RFC 6455 5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RFC 6455 5.5: control frames carry at most 125 bytes and are never fragmented.
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    /// The frame (or message so far) is longer than the configured limit.
    #[error("message of {0} bytes is over the limit of {1} bytes")]
    TooBig(u64, usize),
    /// The header could not be parsed at all.
    #[error("malformed frame header")]
    Malformed,
}

impl FrameError {
    /// The close code for this error (RFC 6455 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig(..) => crate::protocol::close::TOO_BIG,
            _ => crate::protocol::close::PROTOCOL_ERROR,
        }
    }
}

/// Parses and checks the header at the start of `buf`. `Ok(None)` means more bytes are needed.
/// Uses tungstenite's header parser; the policy (masking, limits) is ours.
pub fn parse_inbound(buf: &[u8], max_payload: usize) -> Result<Option<Inbound>, FrameError> {
    if let Some(&first) = buf.first() {
        let op = first & 0x0F;
        if matches!(op, 0x3..=0x7 | 0xB..=0xF) {
            return Err(FrameError::ReservedOpcode(op));
        }
    }
    let mut cursor = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::Malformed),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::ReservedBits);
    }
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Binary) => Kind::Binary,
        OpCode::Data(Data::Continue) => Kind::Continuation,
        OpCode::Control(Control::Close) => Kind::Close,
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
            return Err(FrameError::ReservedOpcode(op))
        }
    };
    let control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if control && (!header.is_final || len > 125) {
        return Err(FrameError::BadControl);
    }
    let mask = header.mask.ok_or(FrameError::Unmasked)?;
    if len > max_payload as u64 {
        return Err(FrameError::TooBig(len, max_payload));
    }
    Ok(Some(Inbound {
        kind,
        fin: header.is_final,
        mask,
        header_len: cursor.position() as usize,
        payload_len: len as usize,
    }))
}

/// Unmasks a client payload in place (RFC 6455 5.3). Linear in its length.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tungstenite_header(len: usize) -> Vec<u8> {
        let h = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        h.format(len as u64, &mut out).unwrap();
        out
    }

    #[test]
    fn header_matches_tungstenite_at_every_length_class() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            let mut head = [0u8; MAX_SERVER_HEADER];
            let n = encode_header(OP_TEXT, len, &mut head);
            assert_eq!(&head[..n], tungstenite_header(len).as_slice(), "len {len}");
        }
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut v = vec![first, 0x80 | payload.len() as u8];
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn parses_masked_text_and_unmasks() {
        let wire = masked(0x81, b"hello");
        let f = parse_inbound(&wire, 100).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.fin, f.header_len, f.payload_len),
            (Kind::Text, true, 6, 5)
        );
        let mut p = wire[6..].to_vec();
        unmask(&mut p, f.mask);
        assert_eq!(p, b"hello");
    }

    #[test]
    fn needs_more_bytes_for_partial_header() {
        assert!(parse_inbound(&[0x81], 100).unwrap().is_none());
        assert!(parse_inbound(&[0x81, 0xFE, 0x01], 100).unwrap().is_none());
    }

    #[test]
    fn refuses_protocol_violations() {
        assert_eq!(
            parse_inbound(&[0x81, 0x05, b'h'], 100).unwrap_err(),
            FrameError::Unmasked
        );
        assert_eq!(
            parse_inbound(&masked(0xC1, b"x"), 100).unwrap_err(),
            FrameError::ReservedBits
        );
        assert_eq!(
            parse_inbound(&masked(0x83, b"x"), 100).unwrap_err(),
            FrameError::ReservedOpcode(3)
        );
        assert_eq!(
            parse_inbound(&masked(0x09, b"x"), 100).unwrap_err(),
            FrameError::BadControl
        );
        let e = parse_inbound(&masked(0x81, &[b'a'; 50]), 10).unwrap_err();
        assert_eq!(e, FrameError::TooBig(50, 10));
        assert_eq!(e.close_code(), 1009);
    }

    #[test]
    fn close_frame_carries_code_and_cut_reason() {
        let f = close_frame(1001, "going away");
        assert_eq!(&f[..4], &[0x88, 12, 0x03, 0xE9]);
        assert_eq!(&f[4..], b"going away");
        assert_eq!(close_frame(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
    }
}
