//! Who each connection is, as data: the shard-local map of sessions (a token in force, the
//! connection's places in the process-wide counts) and the clock of their deadlines. The
//! logic that fills them is [`crate::session`]; the shard's context holds them.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::admission::IpKey;
use crate::auth::Grant;

/// At most one `auth` message of each kind (a token, the admin key) per connection per this
/// long (a signature check runs on the shard's core).
pub(crate) const AUTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The `rate_limited` message of an `auth` sent too soon after the last of its kind.
pub(crate) const AUTH_TOO_SOON: &str =
    "at most one auth of each kind (token, admin key) per second per connection";

/// One connection's identity. Kept only while auth or a connection limit is on.
#[derive(Default)]
pub(crate) struct Session {
    /// The verified token in force; `None` for an anonymous connection or one that has not
    /// sent `auth` yet.
    pub(crate) grant: Option<Rc<Grant>>,
    /// When the last `auth` message was taken.
    pub(crate) last_auth: Option<Instant>,
    /// Bumped by every new grant: clock entries of an older one are ignored.
    pub(crate) generation: u32,
    /// What this connection is counted under, released when the session drops.
    pub(crate) counted: Counted,
    /// It sent the right admin key: it may subscribe to the reserved `_sys.` topics.
    pub(crate) operator: bool,
    /// When the last admin-key `auth` was taken (limited apart from token `auth`s).
    pub(crate) last_admin_auth: Option<Instant>,
}

/// A connection's place in the process-wide counts ([`crate::admission`]): released when
/// dropped, whatever ends the connection (a failed 101 write, a handshake timeout, a close).
#[derive(Default)]
pub(crate) struct Counted {
    pub(crate) admission: Option<Arc<crate::admission::Admission>>,
    pub(crate) ip: Option<IpKey>,
    pub(crate) user: Option<Arc<str>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(a) = &self.admission else { return };
        if let Some(k) = self.ip {
            a.release_ip(k);
        }
        if let Some(u) = &self.user {
            a.release_user(u);
        }
    }
}

/// What a clock entry does when due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// Close with 4003 if the connection still has no token.
    AuthTimeout,
    /// Send `refresh`.
    Refresh,
    /// Close with 4004 (the grant of this generation expired).
    Expire,
}

/// A clock entry: when, the connection, the session generation it was made for, and what.
pub(crate) type Entry = (Instant, u64, u32, Due);

/// The shard's sessions and their clock.
#[derive(Default)]
pub(crate) struct Sessions {
    pub(crate) by_conn: RefCell<HashMap<u64, Session>>,
    pub(crate) clock: RefCell<BinaryHeap<Reverse<Entry>>>,
    /// The clock's length at which it is compacted next (0 until the first look).
    pub(crate) compact_at: std::cell::Cell<usize>,
}

impl Sessions {
    /// Takes the connection's turn for an `auth` of one kind (`last` picks its kind's time: a
    /// token's, or the admin key's): `true` with the time noted, `false` when the last one of
    /// that kind was less than [`AUTH_INTERVAL`] ago.
    pub(crate) fn take_turn(
        &self,
        conn_id: u64,
        last: fn(&mut Session) -> &mut Option<Instant>,
    ) -> bool {
        let now = Instant::now();
        let mut by_conn = self.by_conn.borrow_mut();
        let slot = last(by_conn.entry(conn_id).or_default());
        if slot.is_some_and(|t| now.duration_since(t) < AUTH_INTERVAL) {
            return false;
        }
        *slot = Some(now);
        true
    }

    /// The connection ended: its session is dropped and its counts released.
    pub(crate) fn closed(&self, conn_id: u64) {
        let gone = self.by_conn.borrow_mut().remove(&conn_id);
        drop(gone);
    }
}
