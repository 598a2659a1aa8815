//! The opening handshake (RFC 6455 section 4.2): parse the HTTP upgrade request, answer
//! `101 Switching Protocols` or a plain HTTP error. Pure functions, any thread.
//!
//! Header rules (docs/protocol.md, "The upgrade request"), checked in this order:
//! 1. Request framing (RFC 9112): a parse error, an obsolete line fold or a space before the
//!    colon is 400; a head over [`MAX_REQUEST_HEAD`] bytes or [`MAX_HEADERS`] fields is 431.
//! 2. Singleton fields (`Host`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`, `Content-Length`):
//!    a second field line is 400 before any value is looked at. `Host` must be present and a
//!    valid `uri-host [":" port]` (RFC 9112 §3.2). An upgrade request carries no body: a
//!    `Transfer-Encoding` or a non-zero `Content-Length` is 400.
//! 3. Method (`GET`, else 405), version (HTTP/1.1, else 400), request target (origin form
//!    `/ws?query` or absolute form `http://host/ws`, RFC 9112 §3.2.1-3.2.2; else 400; another
//!    path is 404).
//! 4. List fields (`Connection`, `Upgrade`, `Sec-WebSocket-Protocol`, `Sec-WebSocket-Extensions`):
//!    every field line is combined into one comma-separated list (RFC 9110 §5.3) before its
//!    tokens are looked at.
//! 5. The WebSocket fields (RFC 6455 §4.2.1): `Upgrade` names `websocket` (else 426),
//!    `Connection` names `Upgrade` (else 400), version 13 (else 426), a valid key (else 400).

/// Most bytes of request head accepted before answering 431.
pub const MAX_REQUEST_HEAD: usize = 8192;

/// Most header fields in a request head before answering 431.
pub const MAX_HEADERS: usize = 64;

/// Result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A valid upgrade: the 101 response to send, how many request bytes it consumed, and
    /// what admission looks at (Origin, credentials, forwarding) before sending it.
    Upgrade {
        response: Vec<u8>,
        consumed: usize,
        head: Head,
    },
    /// Not a valid upgrade: the HTTP response to send before closing.
    Reject(Rejection),
}

/// The fields of a valid upgrade request that admission reads (docs/security.md): the
/// `Origin`, the token (`Authorization: Bearer …` or the `token` query parameter, percent-
/// decoded), and `X-Forwarded-For`. Values are raw bytes as received (trimmed).
#[derive(Default, PartialEq, Eq)]
pub struct Head {
    pub origin: Option<Vec<u8>>,
    /// `Some` when the request carries a token in either place; `Err` text when the
    /// `Authorization` field is not a Bearer token, or both places hold one.
    pub token: Option<Result<String, &'static str>>,
    pub forwarded_for: Option<Vec<u8>>,
}

impl std::fmt::Debug for Head {
    /// The token is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field(
                "origin",
                &self.origin.as_deref().map(String::from_utf8_lossy),
            )
            .field(
                "token",
                &self
                    .token
                    .as_ref()
                    .map(|t| t.as_ref().map(|_| "<redacted>")),
            )
            .field(
                "forwarded_for",
                &self.forwarded_for.as_deref().map(String::from_utf8_lossy),
            )
            .finish()
    }
}

/// An HTTP refusal of the handshake: status code, reason phrase and a one-line explanation
/// sent as the `text/plain` body, or a JSON body (`{"error":…,"reason":…,"message":…}`)
/// for the refusals of admission (401, 403, 429; docs/security.md).
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
    /// The JSON body's `error` and `reason` (for a token refusal), when the body is JSON.
    pub json: Option<(&'static str, Option<&'static str>)>,
    /// `Retry-After`, seconds (429).
    pub retry_after: Option<u64>,
}

impl Rejection {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status,
            reason,
            message: message.into(),
            json: None,
            retry_after: None,
        }
    }

    /// A refusal with a JSON body: `error` names the rule, `reason` (for a token) why.
    pub fn json(
        status: u16,
        error: &'static str,
        reason: Option<&'static str>,
        message: impl Into<String>,
        retry_after: Option<u64>,
    ) -> Self {
        let phrase = match status {
            401 => "Unauthorized",
            403 => "Forbidden",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Bad Request",
        };
        Rejection {
            json: Some((error, reason)),
            retry_after,
            ..Rejection::new(status, phrase, message)
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Rejection::new(400, "Bad Request", message)
    }

    /// The full HTTP/1.1 response. 426 names the protocol and version to upgrade to (RFC 6455
    /// 4.4); 401 carries `WWW-Authenticate: Bearer` (RFC 6750 3); 429 `Retry-After`.
    pub fn response(&self) -> Vec<u8> {
        let mut extra = String::new();
        if self.status == 426 {
            extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        }
        if self.status == 401 {
            extra.push_str("WWW-Authenticate: Bearer\r\n");
        }
        if let Some(s) = self.retry_after {
            extra.push_str(&format!("Retry-After: {s}\r\n"));
        }
        let (kind, body) = match self.json {
            None => ("text/plain; charset=utf-8", format!("{}\n", self.message)),
            Some((error, reason)) => {
                let mut body = serde_json::json!({
                    "error": error,
                    "message": self.message,
                });
                if let Some(reason) = reason {
                    body["reason"] = reason.into();
                }
                let mut body = body.to_string();
                body.push('\n');
                ("application/json", body)
            }
        };
        format!(
            "HTTP/1.1 {} {}\r\n{extra}Content-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            self.reason,
            body.len(),
        )
        .into_bytes()
    }
}

/// How the upgrade treats each header field it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// At most one field line; a second is 400.
    Singleton,
    /// Field lines are combined into one comma-separated list (RFC 9110 §5.3).
    List,
}

/// Every header field the upgrade reads; any other field is ignored.
const FIELDS: [(&str, Field); 12] = [
    ("origin", Field::Singleton),
    ("authorization", Field::Singleton),
    ("x-forwarded-for", Field::List),
    ("host", Field::Singleton),
    ("sec-websocket-key", Field::Singleton),
    ("sec-websocket-version", Field::Singleton),
    ("content-length", Field::Singleton),
    ("transfer-encoding", Field::List),
    ("connection", Field::List),
    ("upgrade", Field::List),
    ("sec-websocket-protocol", Field::List),
    ("sec-websocket-extensions", Field::List),
];

/// The fields of [`FIELDS`] present in a request: singletons as their one value, lists as
/// the combined value of every line (in order, joined with `,`).
struct Fields<'a> {
    values: [Option<std::borrow::Cow<'a, [u8]>>; FIELDS.len()],
}

impl<'a> Fields<'a> {
    /// Collects the fields; a second line of a singleton is an error naming it.
    fn collect(headers: &[httparse::Header<'a>]) -> Result<Self, Rejection> {
        let mut values: [Option<std::borrow::Cow<'a, [u8]>>; FIELDS.len()] = Default::default();
        for h in headers {
            let Some(i) = FIELDS
                .iter()
                .position(|(name, _)| h.name.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            let value = h.value.trim_ascii();
            values[i] = Some(match (values[i].take(), FIELDS[i].1) {
                (None, _) => std::borrow::Cow::Borrowed(value),
                (Some(_), Field::Singleton) => {
                    return Err(Rejection::bad(format!(
                        "more than one {} header field",
                        h.name
                    )))
                }
                (Some(so_far), Field::List) => {
                    let mut joined = so_far.into_owned();
                    joined.push(b',');
                    joined.extend_from_slice(value);
                    std::borrow::Cow::Owned(joined)
                }
            });
        }
        Ok(Fields { values })
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        let i = FIELDS.iter().position(|(n, _)| *n == name)?;
        self.values[i].as_deref()
    }

    /// True when the list field `name` holds `token` (case-insensitive, RFC 9110 §5.6.1:
    /// empty list elements are ignored).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.get(name).is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// RFC 6455 4.1: the key is a base64-encoded 16-byte value: 22 base64 characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// RFC 3986 §2.3 unreserved characters.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §2.2 sub-delims.
fn sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// RFC 9112 §3.2 / RFC 3986 §3.2.2: `uri-host [ ":" port ]`, where `uri-host` is an IP literal
/// in brackets or a reg-name (which covers IPv4 addresses), not empty.
fn valid_authority(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal.iter().all(|&b| {
                b.is_ascii_hexdigit() || matches!(b, b':' | b'.') || unreserved(b) || sub_delim(b)
            })
        {
            return false;
        }
        (&v[..end + 2], &rest[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &v[v.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let host_ok = !host.is_empty()
        && (host.starts_with(b"[") || pct_encoded_ok(host, |b| unreserved(b) || sub_delim(b)));
    host_ok && port_ok
}

/// True when every byte of `s` passes `allowed` or is part of a valid `%HH` escape.
fn pct_encoded_ok(s: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if i + 2 >= s.len() || !(s[i + 1].is_ascii_hexdigit() && s[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else if allowed(s[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The path of a request target, normalised for comparison: origin form (`/path?query`) or
/// absolute form (`http://authority/path?query`, also `https`, `ws`, `wss`; RFC 9112 §3.2.2,
/// an empty path is `/`). The query is ignored. Percent-encoded unreserved characters are
/// decoded (RFC 3986 §6.2.2.2: `/w%73` is `/ws`); other escapes stay as they are (`%2F` is not
/// `/`). Dot segments are not removed. Errors name what is wrong with the target.
pub fn target_path(target: &str) -> Result<String, String> {
    let bytes = target.as_bytes();
    // Errors quote the target without its query: a query may hold a token.
    let shown = match target.find('?') {
        Some(q) => format!("{}?…", &target[..q]),
        None => target.to_string(),
    };
    let path_and_query: &[u8] = if bytes.starts_with(b"/") {
        bytes
    } else {
        let Some(sep) = target
            .find("://")
            .filter(|&sep| !target[..sep].contains('?'))
        else {
            return Err(format!(
                "request target {shown:?} is neither a path (/ws) nor an absolute URI"
            ));
        };
        let scheme = &target[..sep];
        if !["http", "https", "ws", "wss"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Err(format!(
                "request target scheme {scheme:?} is not http(s) or ws(s)"
            ));
        }
        let rest = &bytes[sep + 3..];
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.contains(&b'@') || !valid_authority(authority) {
            return Err(format!(
                "request target {shown:?} has no valid host (userinfo is not allowed)"
            ));
        }
        match &rest[end..] {
            [] => b"/",
            [b'?', ..] => b"/",
            p => p,
        }
    };
    let path = match path_and_query.iter().position(|&b| b == b'?') {
        Some(q) => &path_and_query[..q],
        None => path_and_query,
    };
    if path.contains(&b'#') || bytes.contains(&b'#') {
        return Err("a request target has no fragment ('#')".into());
    }
    let pchar = |b: u8| unreserved(b) || sub_delim(b) || matches!(b, b':' | b'@' | b'/');
    if !pct_encoded_ok(path, pchar) {
        return Err(format!(
            "request target path {:?} has an invalid character or escape",
            String::from_utf8_lossy(path)
        ));
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let b = hex(path[i + 1]) << 4 | hex(path[i + 2]);
            if unreserved(b) {
                out.push(b);
            } else {
                out.push(b'%');
                out.push(path[i + 1].to_ascii_uppercase());
                out.push(path[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    // Only ASCII was pushed.
    Ok(String::from_utf8(out).expect("ASCII path"))
}

impl Parsed {
    /// True for [`Parsed::Upgrade`].
    pub fn is_upgrade(&self) -> bool {
        matches!(self, Parsed::Upgrade { .. })
    }
}

/// Looks at the request head received so far. `path` is the WebSocket endpoint (`/ws`);
/// `"*"` upgrades any path. The rules are listed in the module documentation.
pub fn parse(buf: &[u8], path: &str) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
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
                format!("more than {MAX_HEADERS} request header fields"),
            ))
        }
        Err(e) => return Parsed::Reject(Rejection::bad(format!("malformed HTTP request: {e}"))),
    };
    if consumed > MAX_REQUEST_HEAD {
        return Parsed::Reject(Rejection::new(
            431,
            "Request Header Fields Too Large",
            format!("request head is over {MAX_REQUEST_HEAD} bytes"),
        ));
    }
    match check(&req, path) {
        Ok((key, head)) => {
            let accept = tungstenite::handshake::derive_accept_key(&key);
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            Parsed::Upgrade {
                response,
                consumed,
                head,
            }
        }
        Err(r) => Parsed::Reject(r),
    }
}

/// Applies the rules to a complete head; `Ok` carries the key and the admission fields.
fn check(req: &httparse::Request<'_, '_>, path: &str) -> Result<(Vec<u8>, Head), Rejection> {
    let fields = Fields::collect(req.headers)?;
    match fields.get("host") {
        None => {
            return Err(Rejection::bad(
                "the Host header field is required (RFC 9112 3.2)",
            ))
        }
        Some(h) if !valid_authority(h) => {
            return Err(Rejection::bad(format!(
                "Host {:?} is not a valid host[:port]",
                String::from_utf8_lossy(h)
            )))
        }
        Some(_) => {}
    }
    if fields.get("transfer-encoding").is_some()
        || fields.get("content-length").is_some_and(|v| v != b"0")
    {
        return Err(Rejection::bad("an upgrade request has no body"));
    }
    if req.method != Some("GET") {
        return Err(Rejection::new(
            405,
            "Method Not Allowed",
            "only GET upgrades to a WebSocket",
        ));
    }
    if req.version != Some(1) {
        return Err(Rejection::bad("HTTP/1.1 is required"));
    }
    let request_path = target_path(req.path.unwrap_or("")).map_err(Rejection::bad)?;
    if path != "*" && request_path != path {
        return Err(Rejection::new(
            404,
            "Not Found",
            format!("the WebSocket endpoint is {path}"),
        ));
    }
    if !fields.has_token("upgrade", "websocket") {
        return Err(Rejection::new(
            426,
            "Upgrade Required",
            "this endpoint speaks WebSocket only: send an Upgrade: websocket request",
        ));
    }
    if !fields.has_token("connection", "upgrade") {
        return Err(Rejection::bad("Connection header must include Upgrade"));
    }
    if fields.get("sec-websocket-version") != Some(b"13") {
        return Err(Rejection::new(
            426,
            "Upgrade Required",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = match fields.get("sec-websocket-key") {
        Some(k) if valid_key(k) => k.to_vec(),
        _ => {
            return Err(Rejection::bad(
                "Sec-WebSocket-Key must be a base64-encoded 16-byte value",
            ))
        }
    };
    // `Authorization` of another scheme (Basic, added by a proxy) is not a token: ignored.
    let bearer = fields.get("authorization").and_then(|v| {
        let v = std::str::from_utf8(v).ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let token = match (bearer, query_token(req.path.unwrap_or(""))) {
        (Some(_), Some(_)) => Some(Err("a token in both Authorization and the query")),
        (Some(b), None) => Some(Ok(b)),
        (None, q) => q,
    };
    let head = Head {
        origin: fields.get("origin").map(<[u8]>::to_vec),
        token,
        forwarded_for: fields.get("x-forwarded-for").map(<[u8]>::to_vec),
    };
    Ok((key, head))
}

/// The `token` parameter of a request target's query, percent-decoded (`+` is not a space:
/// a JWT never holds one); `Err` when the query names it twice.
fn query_token(target: &str) -> Option<Result<String, &'static str>> {
    let query = target.split_once('?')?.1.split('#').next()?;
    let mut found = query.split('&').filter_map(|kv| kv.strip_prefix("token="));
    let raw = found.next()?;
    if found.next().is_some() {
        return Some(Err("the query names token twice"));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            out.push(hex(bytes[i + 1]) << 4 | hex(bytes[i + 2]));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(Ok(String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests;
