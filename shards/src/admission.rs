//! Who may open a connection at all: the Origin allow-list, the client's address (behind
//! trusted proxies), and the per-address and per-user connection limits (`[limits]`,
//! docs/security.md). Shared by every shard (`Arc`): the counts are process-wide, so a user or
//! an address is limited whichever shard its connections land on. The one lock is taken once
//! when a connection is admitted and once when it ends, never on the fan-out path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;

/// `[limits]`: connection limits and the Origin allow-list. Every count is 0 = unlimited.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections per user (token `sub`), across every shard; past it the upgrade is
    /// answered 429 (or an `auth` message refused with `too_many_connections`). Default 64.
    pub connections_per_user: u32,
    /// Open connections per client address (IPv6 counted per /64). Default 0: behind a proxy
    /// or NAT many users share one address, and load tests open thousands from 127.0.0.1.
    pub connections_per_ip: u32,
    /// New connections per client address per second (a token bucket with that rate and
    /// burst); past it 429 with `Retry-After: 1`. Default 0.
    pub connects_per_ip_per_sec: u32,
    /// Addresses or CIDR blocks (`10.0.0.0/8`, `::1`) of proxies whose `X-Forwarded-For` is
    /// believed: the client is the rightmost address of that header that is not one of
    /// them. Default none (the socket's peer is the client).
    pub trusted_proxies: Vec<String>,
    /// Origins (`https://app.example.com`, compared exactly) whose pages may connect; a
    /// request without `Origin` (not a browser) is allowed, `Origin: null` is not. Empty:
    /// any Origin. Default empty.
    pub allowed_origins: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connections_per_user: 64,
            connections_per_ip: 0,
            connects_per_ip_per_sec: 0,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// A CIDR block.
#[derive(Debug, Clone, Copy)]
struct Block {
    addr: IpAddr,
    bits: u8,
}

impl Block {
    fn parse(text: &str) -> Result<Block, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("limits.trusted_proxies: {text:?} is not an address or CIDR block")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
                format!("limits.trusted_proxies: {text:?} has a bad prefix length")
            })?,
        };
        // An IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps.
        let (addr, bits) = match (addr, canonical(addr)) {
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if bits >= 96 => (v4, bits - 96),
            (IpAddr::V6(_), IpAddr::V4(_)) => {
                return Err(format!(
                    "limits.trusted_proxies: {text:?} is an IPv4-mapped block shorter than /96; \
                     write the IPv4 block itself"
                ))
            }
            _ => (addr, bits),
        };
        Ok(Block { addr, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), self.bits),
            (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let whole = usize::from(bits / 8);
    let rest = bits % 8;
    a[..whole] == b[..whole] && (rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0)
}

/// An IPv4-mapped IPv6 address is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What an address is counted as: an IPv4 address, or an IPv6 /64 (one subscriber's usual
/// allocation, so rotating addresses within it does not escape the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

impl IpKey {
    /// The key `ip` is counted under: an IPv4 address as its IPv4-mapped IPv6 form (low 64
    /// bits not zero), an IPv6 address as its /64 (low 64 bits zero), so the two never meet.
    pub fn of(ip: IpAddr) -> IpKey {
        match canonical(ip) {
            IpAddr::V4(v4) => IpKey(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => IpKey(u128::from(v6) & !((1u128 << 64) - 1)),
        }
    }
}

/// One address's connections and its connect-rate bucket.
struct PerIp {
    open: u32,
    tokens: f64,
    at: Instant,
}

/// An upgrade refused before the WebSocket opens: HTTP status, reason phrase and the JSON
/// `error` of the body (`{"error":…,"message":…}`), with `Retry-After` seconds for 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// The per-address table, and the size at which it is pruned next.
#[derive(Default)]
struct Addresses {
    map: HashMap<IpKey, PerIp>,
    prune_at: usize,
}

/// The process-wide admission state. See the module docs.
pub struct Admission {
    config: LimitsConfig,
    trusted: Vec<Block>,
    per_ip: Mutex<Addresses>,
    per_user: Mutex<HashMap<Arc<str>, u32>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Admission {
    /// The default `[limits]`: no address limits, any Origin.
    fn default() -> Self {
        Admission::new(&LimitsConfig::default()).expect("the defaults are valid")
    }
}

impl Admission {
    /// Checks the configuration; errors name the field.
    pub fn new(config: &LimitsConfig) -> Result<Admission, String> {
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|t| Block::parse(t))
            .collect::<Result<_, _>>()?;
        if let Some(o) = config
            .allowed_origins
            .iter()
            .find(|o| o.is_empty() || *o == "null" || o.ends_with('/'))
        {
            return Err(format!(
                "limits.allowed_origins: {o:?} is not an origin (scheme://host[:port], no path)"
            ));
        }
        Ok(Admission {
            config: config.clone(),
            trusted,
            per_ip: Mutex::default(),
            per_user: Mutex::default(),
        })
    }

    /// True when `ip` is one of `limits.trusted_proxies`.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|b| b.contains(ip))
    }

    /// True when addresses are counted (a per-address limit is set).
    pub fn counts_ips(&self) -> bool {
        self.config.connections_per_ip > 0 || self.config.connects_per_ip_per_sec > 0
    }

    /// True when users are counted.
    pub fn counts_users(&self) -> bool {
        self.config.connections_per_user > 0
    }

    /// The Origin rule: 403 for an Origin not on a non-empty allow-list (`null` included).
    pub fn check_origin(&self, origin: Option<&[u8]>) -> Result<(), Refusal> {
        let (Some(origin), false) = (origin, self.config.allowed_origins.is_empty()) else {
            return Ok(());
        };
        if self
            .config
            .allowed_origins
            .iter()
            .any(|o| o.as_bytes() == origin)
        {
            return Ok(());
        }
        Err(Refusal {
            status: 403,
            error: "origin_not_allowed",
            message: "this Origin is not on the server's allow-list".into(),
            retry_after: None,
        })
    }

    /// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` entry that is not a trusted proxy (entries that are not
    /// addresses end the walk: the last trusted hop is then the client).
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&[u8]>) -> IpAddr {
        let trusted = |ip: IpAddr| self.is_trusted(ip);
        if !trusted(peer) {
            return peer;
        }
        let Some(list) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) else {
            return peer;
        };
        let mut client = peer;
        for entry in list.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !trusted(ip) {
                break;
            }
        }
        client
    }

    /// Counts a new connection from `ip` against `connects_per_ip_per_sec` and
    /// `connections_per_ip`: `Ok(Some(key))` to release when it ends, `Ok(None)` when
    /// addresses are not counted, 429 past a limit.
    pub fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<Option<IpKey>, Refusal> {
        if !self.counts_ips() {
            return Ok(None);
        }
        let key = IpKey::of(ip);
        let c = &self.config;
        let mut table = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if table.map.len() >= table.prune_at {
            // An address with nothing open whose bucket has refilled (a second after its last
            // connect) holds nothing worth keeping. Pruned when the table has doubled since
            // the last pruning: amortised O(1) per admission.
            table
                .map
                .retain(|_, e| e.open > 0 || now.duration_since(e.at).as_secs_f64() < 1.0);
            table.prune_at = (2 * table.map.len()).max(4096);
        }
        let rate = f64::from(c.connects_per_ip_per_sec);
        let e = table.map.entry(key).or_insert(PerIp {
            open: 0,
            tokens: rate,
            at: now,
        });
        if rate > 0.0 {
            let elapsed = now.duration_since(e.at).as_secs_f64();
            e.tokens = (e.tokens + elapsed * rate).min(rate);
            e.at = now;
            if e.tokens < 1.0 {
                return Err(too_many(
                    "connect_rate",
                    format!(
                        "more than {} new connections per second from this address",
                        c.connects_per_ip_per_sec
                    ),
                ));
            }
        }
        if c.connections_per_ip > 0 && e.open >= c.connections_per_ip {
            return Err(too_many(
                "connections_per_ip",
                format!("{} connections are open from this address", e.open),
            ));
        }
        if rate > 0.0 {
            e.tokens -= 1.0;
        }
        e.open += 1;
        Ok(Some(key))
    }

    /// A connection counted by [`Admission::admit_ip`] ended. An address with nothing open
    /// and no connect rate to remember leaves the table at once.
    pub fn release_ip(&self, key: IpKey) {
        let mut table = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.map.get_mut(&key) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && self.config.connects_per_ip_per_sec == 0 {
                table.map.remove(&key);
            }
        }
    }

    /// Counts a connection of user `sub`: 429 past `connections_per_user`. Returns whether
    /// it was counted (release it with [`Admission::release_user`]).
    pub fn admit_user(&self, sub: &Arc<str>) -> Result<bool, Refusal> {
        let limit = self.config.connections_per_user;
        if limit == 0 {
            return Ok(false);
        }
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(sub.clone()).or_insert(0);
        if *n >= limit {
            return Err(too_many(
                "connections_per_user",
                format!("{n} connections of this user are open (the limit is {limit})"),
            ));
        }
        *n += 1;
        Ok(true)
    }

    /// A connection counted by [`Admission::admit_user`] ended.
    pub fn release_user(&self, sub: &str) {
        let mut map = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(sub) {
            *n -= 1;
            if *n == 0 {
                map.remove(sub);
            }
        }
    }
}

fn too_many(error: &'static str, message: String) -> Refusal {
    Refusal {
        status: 429,
        error,
        message,
        retry_after: Some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(f: impl FnOnce(&mut LimitsConfig)) -> Admission {
        let mut c = LimitsConfig::default();
        f(&mut c);
        Admission::new(&c).unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let a = admission(|c| c.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = Some(&b"1.2.3.4, 5.6.7.8, 10.1.1.1"[..]);
        assert_eq!(a.client_ip(ip("10.0.0.1"), xff), ip("5.6.7.8"));
        assert_eq!(
            a.client_ip(ip("9.9.9.9"), xff),
            ip("9.9.9.9"),
            "peer not trusted"
        );
        assert_eq!(
            a.client_ip(ip("::1"), Some(b"2001:db8::1")),
            ip("2001:db8::1")
        );
        assert_eq!(a.client_ip(ip("10.0.0.1"), None), ip("10.0.0.1"));
        assert_eq!(
            a.client_ip(ip("10.0.0.1"), Some(b"junk, 10.2.2.2")),
            ip("10.2.2.2")
        );
        assert_eq!(
            a.client_ip(ip("::ffff:10.0.0.1"), Some(b"7.7.7.7")),
            ip("7.7.7.7")
        );
        let mapped = admission(|c| c.trusted_proxies = vec!["::ffff:10.0.0.0/104".into()]);
        assert!(mapped.is_trusted(ip("10.9.9.9")) && !mapped.is_trusted(ip("11.0.0.1")));
        assert!(Admission::new(&LimitsConfig {
            trusted_proxies: vec!["::ffff:10.0.0.0/8".into()],
            ..LimitsConfig::default()
        })
        .is_err());
        assert!(Admission::new(&LimitsConfig {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            ..LimitsConfig::default()
        })
        .is_err());
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let ip = |s: &str| IpKey::of(s.parse().unwrap());
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:1.2.3.4"), ip("1.2.3.4"));
        assert_ne!(ip("::"), ip("0.0.0.0"));
        assert_ne!(ip("::1"), ip("0.0.0.1"));
    }

    #[test]
    fn limits_refuse_past_the_count_and_release() {
        let a = admission(|c| {
            c.connections_per_ip = 2;
            c.connections_per_user = 1;
        });
        let now = Instant::now();
        let ip = "1.2.3.4".parse().unwrap();
        let k = a.admit_ip(ip, now).unwrap().unwrap();
        a.admit_ip(ip, now).unwrap();
        assert_eq!(a.admit_ip(ip, now).unwrap_err().status, 429);
        a.release_ip(k);
        assert!(a.admit_ip(ip, now).is_ok());
        let alice: Arc<str> = "alice".into();
        assert!(a.admit_user(&alice).unwrap());
        assert_eq!(
            a.admit_user(&alice).unwrap_err().error,
            "connections_per_user"
        );
        a.release_user(&alice);
        assert!(a.admit_user(&alice).is_ok());
    }

    #[test]
    fn the_connect_rate_refills() {
        let a = admission(|c| c.connects_per_ip_per_sec = 2);
        let t0 = Instant::now();
        let ip = "1.2.3.4".parse().unwrap();
        assert!(a.admit_ip(ip, t0).is_ok());
        assert!(a.admit_ip(ip, t0).is_ok());
        let r = a.admit_ip(ip, t0).unwrap_err();
        assert_eq!((r.status, r.retry_after), (429, Some(1)));
        assert!(a
            .admit_ip(ip, t0 + std::time::Duration::from_millis(600))
            .is_ok());
    }

    #[test]
    fn origins_are_matched_exactly() {
        let a = admission(|c| c.allowed_origins = vec!["https://app.example.com".into()]);
        assert!(a.check_origin(None).is_ok());
        assert!(a.check_origin(Some(b"https://app.example.com")).is_ok());
        assert_eq!(a.check_origin(Some(b"null")).unwrap_err().status, 403);
        assert!(a
            .check_origin(Some(b"https://app.example.com.evil"))
            .is_err());
        assert!(admission(|_| {}).check_origin(Some(b"null")).is_ok());
    }
}
