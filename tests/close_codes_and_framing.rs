//! Close codes (RFC 6455 §7.4 and the IANA registry) and frame violations (§5.2, §5.4):
//! every registered code a client may send is accepted and echoed, every other one is
//! answered 1002, and a frame that breaks the framing rules is a 1002 even when it is also
//! too big or of a kind the protocol does not use. A bystander loses nothing.

mod common;

use std::io::Write;

use common::*;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Sends `bytes` on a fresh upgraded connection and returns the server's close code
/// (`None` for an empty close frame).
fn close_after(server: &TestServer, bytes: &[u8]) -> Option<u16> {
    let mut s = upgraded(server);
    s.write_all(bytes).unwrap();
    let payload = close_payload_on_wire(&mut s);
    (!payload.is_empty()).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

fn close_frame_with(code: u16) -> Vec<u8> {
    masked_frame(OpCode::Control(Control::Close), true, &code.to_be_bytes())
}

#[test]
fn registered_close_codes_are_accepted_and_echoed() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        assert_eq!(
            close_after(&server, &close_frame_with(code)),
            Some(code),
            "{code}"
        );
    }
    // With a reason: the code is echoed.
    let mut body = 1012u16.to_be_bytes().to_vec();
    body.extend_from_slice("service restart".as_bytes());
    let with_reason = masked_frame(OpCode::Control(Control::Close), true, &body);
    assert_eq!(close_after(&server, &with_reason), Some(1012));
    // An empty close is answered with an empty close (RFC 6455 5.5.1).
    let empty = masked_frame(OpCode::Control(Control::Close), true, b"");
    assert_eq!(close_after(&server, &empty), None);
    peer.check(&server, 100);
}

#[test]
fn codes_no_peer_may_send_are_answered_1002() {
    let server = start(|_| {});
    let mut peer = Bystander::new(&server, "by.stander");
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_eq!(
            close_after(&server, &close_frame_with(code)),
            Some(1002),
            "{code}"
        );
    }
    let one_byte = masked_frame(OpCode::Control(Control::Close), true, &[3]);
    assert_eq!(close_after(&server, &one_byte), Some(1002));
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xff, 0xfe]);
    let bad_reason = masked_frame(OpCode::Control(Control::Close), true, &bad_reason);
    assert_eq!(close_after(&server, &bad_reason), Some(1007));
    peer.check(&server, 100);
}

/// A masked header by hand (tungstenite's encoder always writes the minimal length): the
/// first byte, the 7-bit length code and the extended length bytes, then the mask.
fn header(first: u8, len7: u8, ext: &[u8]) -> Vec<u8> {
    let mut v = vec![first, 0x80 | len7];
    v.extend_from_slice(ext);
    v.extend_from_slice(&[1, 2, 3, 4]);
    v
}

#[test]
fn framing_violations_are_1002_even_when_too_big_or_of_an_unused_kind() {
    let server = start(|c| c.shard.max_message_bytes = 1024);
    let mut peer = Bystander::new(&server, "by.stander");
    let big = vec![b'a'; 4096];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "continuation without a message, too big",
            masked_frame(OpCode::Data(Data::Continue), true, &big),
        ),
        ("text inside a fragmented message, too big", {
            let mut v = masked_frame(OpCode::Data(Data::Text), false, b"{");
            v.extend(masked_frame(OpCode::Data(Data::Text), true, &big));
            v
        }),
        ("binary inside a fragmented text message", {
            let mut v = masked_frame(OpCode::Data(Data::Text), false, b"{");
            v.extend(masked_frame(OpCode::Data(Data::Binary), true, b"x"));
            v
        }),
        ("binary with RSV1, no extension", {
            let mut v = masked_frame(OpCode::Data(Data::Binary), true, b"x");
            v[0] |= 0x40;
            v
        }),
        ("text with RSV3, too big", {
            let mut v = masked_frame(OpCode::Data(Data::Text), true, &big);
            v[0] |= 0x10;
            v
        }),
        (
            "reserved opcode 0x3 with a huge length",
            header(0x83, 127, &(1u64 << 40).to_be_bytes()),
        ),
        (
            "reserved control opcode 0xB",
            masked_frame(OpCode::Control(Control::Reserved(0xB)), true, b""),
        ),
        ("length 5 in the 16-bit form", header(0x81, 126, &[0, 5])),
        (
            "length 200 in the 64-bit form",
            header(0x82, 127, &200u64.to_be_bytes()),
        ),
        (
            "64-bit length with the top bit set",
            header(0x82, 127, &u64::MAX.to_be_bytes()),
        ),
        (
            "fragmented ping",
            masked_frame(OpCode::Control(Control::Ping), false, b""),
        ),
        ("ping of 126 bytes", header(0x89, 126, &[0, 126])),
        ("unmasked, too big", {
            let mut v = vec![0x81, 126, 0x10, 0x00];
            v.extend_from_slice(&big);
            v
        }),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_after(&server, &bytes), Some(1002), "{what}");
    }
    // Without a framing fault, size and kind decide.
    assert_eq!(
        close_after(&server, &masked_frame(OpCode::Data(Data::Text), true, &big)),
        Some(1009)
    );
    assert_eq!(
        close_after(
            &server,
            &masked_frame(OpCode::Data(Data::Binary), true, &big)
        ),
        Some(1009)
    );
    assert_eq!(
        close_after(
            &server,
            &masked_frame(OpCode::Data(Data::Binary), false, b"x")
        ),
        Some(1003)
    );
    peer.check(&server, 100);
}
