//! Close codes (RFC 6455 7.4.1 and the IANA "WebSocket Close Code Number Registry";
//! 4000-4999 are private to corecast). docs/protocol.md lists when each is sent. Used by the
//! frame parser (framing faults), the inbound decoder and the connection's close.

/// The client asked to close, or the server closes normally.
pub const NORMAL: u16 = 1000;
/// Server shutting down: reconnect (to this or another node).
pub const GOING_AWAY: u16 = 1001;
/// Unmasked frame, reserved bits or opcodes, bad fragmentation, malformed header, a close
/// code no peer may send.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Binary data frames are not part of the protocol.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A text message that is not valid UTF-8.
pub const INVALID_UTF8: u16 = 1007;
/// The client kept sending past its rate limit.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message over `max_message_bytes`.
pub const TOO_BIG: u16 = 1009;
/// Nothing heard from the client within the heartbeat timeout.
pub const HEARTBEAT_TIMEOUT: u16 = 4000;
/// The client let its control replies (acks, errors, pongs) pile up unread.
pub const CONTROL_BACKLOG: u16 = 4001;
/// The client read too slowly for a topic whose namespace's gap policy is `disconnect`.
pub const SLOW_CONSUMER: u16 = 4002;
/// No valid `auth` within `auth.timeout_ms` on a server without anonymous access.
pub const AUTH_REQUIRED: u16 = 4003;
/// The token expired (`exp` plus `auth.leeway_s`) and no new one came.
pub const TOKEN_EXPIRED: u16 = 4004;

/// True when a peer may put `code` in a close frame, so a received one is accepted and
/// echoed: the codes RFC 6455 7.4.1 defines for sending (1000-1003, 1007-1011), those the
/// IANA registry added since (1012 Service Restart, 1013 Try Again Later, 1014 Bad
/// Gateway), 3000-3999 (registered for libraries and frameworks) and 4000-4999 (private
/// use). Refused with 1002: below 1000, 1004 (reserved), 1005, 1006 and 1015 (RFC 6455
/// 7.4.1: "MUST NOT be set as a status code in a Close control frame"), the unassigned
/// 1016-2999, and 5000 and above.
pub fn may_be_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
