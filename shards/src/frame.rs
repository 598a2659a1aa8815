//! WebSocket framing (RFC 6455 section 5): the server-side encoder used once per published
//! message, and the inbound frame reader's checks. Pure functions, any thread.

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
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
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
    /// Header length in bytes (2 to 14).
    pub header_len: usize,
    /// Payload length in bytes, as the header declares it (not yet checked against any limit).
    pub payload_len: u64,
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
    /// RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length", and
    /// the most significant bit of a 64-bit length MUST be 0.
    #[error("payload length not in its minimal encoding, or over 2^63-1")]
    BadLength,
    /// The frame (or message so far) is longer than the configured limit.
    #[error("message of {0} bytes is over the limit of {1} bytes")]
    TooBig(u64, usize),
}

impl FrameError {
    /// The close code for this error (RFC 6455 7.4.1): 1009 for a message over the limit,
    /// 1002 for every violation of the framing rules.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooBig(..) => crate::close::TOO_BIG,
            _ => crate::close::PROTOCOL_ERROR,
        }
    }
}

/// Parses and checks the client frame header at the start of `buf` (RFC 6455 5.2): reserved
/// bits and opcodes, the length's encoding, masking, and the control-frame rules of 5.5.
/// `Ok(None)` means more bytes are needed; every violation is found as soon as the bytes that
/// show it are in. Size limits are the caller's (they depend on the message so far), applied
/// after these checks, so a frame that breaks the rules is refused as such (1002) even when
/// it is also too big.
pub fn parse_inbound(buf: &[u8]) -> Result<Option<Inbound>, FrameError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let kind = match b0 & 0x0F {
        0x0 => Kind::Continuation,
        0x1 => Kind::Text,
        0x2 => Kind::Binary,
        0x8 => Kind::Close,
        0x9 => Kind::Ping,
        0xA => Kind::Pong,
        op => return Err(FrameError::ReservedOpcode(op)),
    };
    let control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if control && !fin {
        return Err(FrameError::BadControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, len_bytes) = match b1 & 0x7F {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
            if len < 126 {
                return Err(FrameError::BadLength);
            }
            (len, 2)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(ext.try_into().expect("8 bytes"));
            if len >> 63 != 0 || len <= u64::from(u16::MAX) {
                return Err(FrameError::BadLength);
            }
            (len, 8)
        }
        n => (u64::from(n), 0),
    };
    if control && len > 125 {
        return Err(FrameError::BadControl);
    }
    let header_len = 2 + len_bytes + 4;
    let Some(mask) = buf.get(header_len - 4..header_len) else {
        return Ok(None);
    };
    Ok(Some(Inbound {
        kind,
        fin,
        mask: mask.try_into().expect("4 bytes"),
        header_len,
        payload_len: len,
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
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;

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
        let f = parse_inbound(&wire).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.fin, f.header_len, f.payload_len),
            (Kind::Text, true, 6, 5)
        );
        let mut p = wire[6..].to_vec();
        unmask(&mut p, f.mask);
        assert_eq!(p, b"hello");
    }

    #[test]
    fn parses_what_a_real_client_masks_at_every_length_class() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let mut wire = Vec::new();
            let frame = tungstenite::protocol::frame::Frame::message(
                vec![b'x'; len],
                OpCode::Data(Data::Text),
                true,
            );
            let mut frame = frame;
            frame.header_mut().mask = Some([5, 6, 7, 8]);
            frame.format(&mut wire).unwrap();
            let f = parse_inbound(&wire).unwrap().unwrap();
            assert_eq!(
                (f.payload_len, f.header_len + len),
                (len as u64, wire.len())
            );
        }
    }

    #[test]
    fn needs_more_bytes_for_partial_header() {
        assert!(parse_inbound(&[]).unwrap().is_none());
        assert!(parse_inbound(&[0x81]).unwrap().is_none());
        assert!(parse_inbound(&[0x81, 0xFE, 0x01]).unwrap().is_none());
        assert!(parse_inbound(&[0x81, 0x85, 1, 2, 3]).unwrap().is_none());
    }

    #[test]
    fn refuses_protocol_violations_as_soon_as_they_show() {
        assert_eq!(
            parse_inbound(&[0x81, 0x05, b'h']).unwrap_err(),
            FrameError::Unmasked
        );
        assert_eq!(
            parse_inbound(&[0xC1]).unwrap_err(),
            FrameError::ReservedBits
        );
        assert_eq!(
            parse_inbound(&[0x83]).unwrap_err(),
            FrameError::ReservedOpcode(3)
        );
        assert_eq!(
            parse_inbound(&[0x8B]).unwrap_err(),
            FrameError::ReservedOpcode(0xB)
        );
        assert_eq!(parse_inbound(&[0x09]).unwrap_err(), FrameError::BadControl);
        assert_eq!(
            parse_inbound(&[0x89, 0xFE, 0, 126]).unwrap_err(),
            FrameError::BadControl
        );
        // Length not in its shortest form, and a 64-bit length with the top bit set.
        assert_eq!(
            parse_inbound(&[0x81, 0xFE, 0, 5]).unwrap_err(),
            FrameError::BadLength
        );
        assert_eq!(
            parse_inbound(&[0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]).unwrap_err(),
            FrameError::BadLength
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_inbound(&huge).unwrap_err(), FrameError::BadLength);
        assert_eq!(FrameError::BadLength.close_code(), 1002);
        assert_eq!(FrameError::TooBig(50, 10).close_code(), 1009);
    }

    #[test]
    fn close_frame_carries_code_and_cut_reason() {
        let f = close_frame(1001, "going away");
        assert_eq!(&f[..4], &[0x88, 12, 0x03, 0xE9]);
        assert_eq!(&f[4..], b"going away");
        assert_eq!(close_frame(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
    }
}
