//! The opening handshake (RFC 6455 section 4.2): parse the HTTP upgrade request, answer
//! `101 Switching Protocols` or a plain HTTP error. Pure functions, any thread.

/// Most bytes of request head accepted before answering 431.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// Result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A valid upgrade: the 101 response to send and how many request bytes it consumed.
    Upgrade { response: Vec<u8>, consumed: usize },
    /// Not a valid upgrade: the HTTP response to send before closing.
    Reject(Rejection),
}

/// An HTTP refusal of the handshake.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status,
            reason,
            message: message.into(),
        }
    }

    /// The full HTTP/1.1 response. 426 names the protocol and version to upgrade to (RFC 6455 4.4).
    pub fn response(&self) -> Vec<u8> {
        let extra = if self.status == 426 {
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}\n",
            self.status,
            self.reason,
            self.message.len() + 1,
            self.message
        )
        .into_bytes()
    }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// RFC 6455 4.1: the key is a base64-encoded 16-byte value: 22 base64 characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Looks at the request head received so far; `path` is the WebSocket endpoint (`/ws`).
pub fn parse(buf: &[u8], path: &str) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return Parsed::Reject(Rejection::new(
                431,
                "Request Header Fields Too Large",
                format!("request head is over {MAX_REQUEST_HEAD} bytes"),
            ))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(Rejection::new(
                431,
                "Request Header Fields Too Large",
                "more than 32 request headers",
            ))
        }
        Err(e) => {
            return Parsed::Reject(Rejection::new(
                400,
                "Bad Request",
                format!("malformed HTTP request: {e}"),
            ))
        }
    };
    match check(&req, path) {
        Ok(key) => {
            let accept = tungstenite::handshake::derive_accept_key(key);
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            Parsed::Upgrade { response, consumed }
        }
        Err(r) => Parsed::Reject(r),
    }
}

fn check<'a>(req: &'a httparse::Request<'_, '_>, path: &str) -> Result<&'a [u8], Rejection> {
    if req.method != Some("GET") {
        return Err(Rejection::new(
            405,
            "Method Not Allowed",
            "only GET upgrades to a WebSocket",
        ));
    }
    if req.version != Some(1) {
        return Err(Rejection::new(400, "Bad Request", "HTTP/1.1 is required"));
    }
    let target = req.path.unwrap_or("");
    let request_path = target.split('?').next().unwrap_or("");
    if request_path != path {
        return Err(Rejection::new(
            404,
            "Not Found",
            format!("the WebSocket endpoint is {path}"),
        ));
    }
    match header(req, "upgrade") {
        Some(v) if has_token(v, "websocket") => {}
        _ => {
            return Err(Rejection::new(
                426,
                "Upgrade Required",
                "this endpoint speaks WebSocket only: send an Upgrade: websocket request",
            ))
        }
    }
    if !header(req, "connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(Rejection::new(
            400,
            "Bad Request",
            "Connection header must include Upgrade",
        ));
    }
    if header(req, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Rejection::new(
            426,
            "Upgrade Required",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    match header(req, "sec-websocket-key") {
        Some(k) if valid_key(k) => Ok(k.trim_ascii()),
        _ => Err(Rejection::new(
            400,
            "Bad Request",
            "Sec-WebSocket-Key must be a base64-encoded 16-byte value",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws?token=x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn status(req: &str) -> u16 {
        match parse(req.as_bytes(), "/ws") {
            Parsed::Reject(r) => r.status,
            Parsed::Upgrade { .. } => 101,
            Parsed::Partial => 0,
        }
    }

    #[test]
    fn upgrades_with_rfc_sample_accept_key() {
        let Parsed::Upgrade { response, consumed } = parse(GOOD.as_bytes(), "/ws") else {
            panic!("expected an upgrade")
        };
        assert_eq!(consumed, GOOD.len());
        let text = String::from_utf8(response).unwrap();
        // RFC 6455 section 1.3's worked example.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        assert_eq!(status("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n"), 426);
        assert_eq!(status(&GOOD.replace("GET /ws", "POST /ws")), 405);
        assert_eq!(status(&GOOD.replace("GET /ws", "GET /other")), 404);
        assert_eq!(status(&GOOD.replace("keep-alive, Upgrade", "close")), 400);
        assert_eq!(status(&GOOD.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            400
        );
        assert_eq!(status("\x16\x03\x01garbage\r\n\r\n"), 400);
        assert_eq!(status("GET /ws HTTP/1.1\r\nHost: a\r\n"), 0);
        let long = format!(
            "GET /ws HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert_eq!(status(&long), 431);
    }

    #[test]
    fn rejection_response_is_plain_http() {
        let r = Rejection::new(426, "Upgrade Required", "hi").response();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Upgrade: websocket\r\n"));
        assert!(text.ends_with("\r\n\r\nhi\n"));
    }
}
