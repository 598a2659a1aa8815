//! The client's own WebSocket path (RFC 6455), independent of corecast's frame code: the
//! upgrade request, masked client frames, and a reader of the server's unmasked frames.

/// The HTTP upgrade request for `path` on `host`, with a fixed key (the accept is checked).
pub fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The accept value for the fixed key (RFC 6455 section 1.3's worked example).
pub const EXPECTED_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A masked text frame (RFC 6455 5.3: clients must mask). The mask need not be random here.
pub fn client_text(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    client_frame(0x1, payload, mask)
}

/// A masked close frame with a status code and reason.
pub fn client_close(code: u16, reason: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client_frame(0x8, &payload, mask)
}

/// A masked pong answering a server ping.
pub fn client_pong(payload: &[u8]) -> Vec<u8> {
    client_frame(0xA, payload, [0, 0, 0, 0])
}

/// One final, masked frame of `opcode`.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    v.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

/// Largest frame accepted from the server, bytes.
pub const MAX_FRAME: usize = 16 << 20;

/// Opcode given to a frame whose header cannot be right (reserved opcode 0xF).
pub const BROKEN: u8 = 0xF;

/// One server frame found at the start of a buffer.
pub struct ServerFrame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
    /// Bytes the frame takes in the buffer.
    pub len: usize,
}

/// Parses the next whole server frame, `None` if the buffer holds only part of one.
pub fn next_frame(buf: &[u8]) -> Option<ServerFrame<'_>> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (header, len): (usize, usize) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b) as usize)
        }
        n => (2, n as usize),
    };
    // A length no server frame can have (or one that overflows) is a broken stream: report it
    // as a frame the caller rejects (opcode 0xF is reserved) instead of waiting forever.
    let Some(end) = header.checked_add(len).filter(|&e| e <= MAX_FRAME) else {
        return Some(ServerFrame {
            opcode: BROKEN,
            payload: &[],
            len: buf.len(),
        });
    };
    if buf.len() < end {
        return None;
    }
    Some(ServerFrame {
        opcode,
        payload: &buf[header..header + len],
        len: header + len,
    })
}

/// The unsigned integer right after `key` (e.g. `"seq":`), if present and under 2^64.
pub fn u64_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    leading_u64(&hay[at..]).map(|(v, _)| v)
}

/// The unsigned integer `s` starts with (at least one digit, under 2^64) and what follows it.
pub fn leading_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &s[..digits] {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((value, &s[digits..]))
}

/// The string value right after `key` (e.g. `"topic":"`), up to the closing quote.
pub fn str_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(hay, key)? + key.len();
    let end = hay[at..].iter().position(|&b| b == b'"')?;
    Some(&hay[at..at + end])
}

/// Where `needle` first occurs in `hay`. Per call it costs a `memchr` over the candidates
/// for the needle's first byte and a short compare at each: nothing is built first. (A
/// `memmem` searcher built per call cost a quarter of the reader thread's time at 1M
/// messages/s: docs/benchmarks.md, "loadgen's own profile".)
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = memchr::memchr(first, &hay[from..]) {
        let at = from + i;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frame_unmasks_to_the_payload() {
        let f = client_text(b"hello", [1, 2, 3, 4]);
        assert_eq!(&f[..2], &[0x81, 0x85]);
        let p: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(p, b"hello");
    }

    #[test]
    fn server_frames_of_each_length_class() {
        let mut wire = vec![0x81, 3, b'a', b'b', b'c'];
        wire.extend([0x81, 126, 0, 200]);
        wire.extend(vec![b'x'; 200]);
        let f = next_frame(&wire).unwrap();
        assert_eq!((f.opcode, f.payload, f.len), (1, &b"abc"[..], 5));
        let g = next_frame(&wire[5..]).unwrap();
        assert_eq!((g.payload.len(), g.len), (200, 204));
        assert!(next_frame(&wire[5..100]).is_none());
        let huge = [0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            next_frame(&huge).unwrap().opcode,
            BROKEN,
            "overflowing length"
        );
    }

    #[test]
    fn field_extraction() {
        let m = br#"{"op":"msg","topic":"lg.3","seq":42,"ts":1,"data":{"t":99,"p":"x"}}"#;
        assert_eq!(u64_after(m, b"\"seq\":"), Some(42));
        assert_eq!(str_after(m, b"\"topic\":\""), Some(&b"lg.3"[..]));
        assert_eq!(u64_after(m, b"\"t\":"), Some(99));
        assert_eq!(u64_after(m, b"\"nope\":"), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"abc", b""), None);
        assert_eq!(find(b"a\"b\"c", b"\"c"), Some(3));
        assert_eq!(
            u64_after(b"\"n\":18446744073709551616", b"\"n\":"),
            None,
            "over 2^64"
        );
        assert_eq!(
            u64_after(b"\"n\":18446744073709551615", b"\"n\":"),
            Some(u64::MAX)
        );
    }
}
