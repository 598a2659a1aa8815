//! The shard's local subscription table: shard-local (`!Send`), no synchronisation.
//!
//! Maps topics and `prefix.*` patterns to the shard's subscribers, tracks which of them the
//! dispatcher already routes here (`Live`), which are waiting for the dispatcher's reply
//! (`Pending`), and the last sequence seen per topic so that frames the shard itself missed
//! are announced as gaps. Subscribe requests complete only when every interest they name is
//! live, so the `ack` always precedes the first `msg` of its topics.
//!
//! Requests name topics; frames carry the dispatcher's [`TopicId`]. Topics sit in slots: a name
//! map serves requests, and an index by topic id, filled from the first frame of each topic
//! (which carries its name), serves routing, so a frame costs an array read, not a string hash.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::ring::{Frame, Interest, RecoverItem, RecoveredItem, TopicId};
use crate::topic::{covering_prefixes, NameIndex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The dispatcher does not route this interest here.
    Idle,
    /// Subscribe sent with this nonce; waiting for the reply.
    Pending(u64),
    /// The dispatcher routes every frame of it here.
    Live,
}

struct Entry<T> {
    state: State,
    subscribers: Vec<Rc<T>>,
    /// Subscribers of a snapshot topic waiting for its next snapshot: they get no frame of
    /// it until a `snapshot` frame comes, then join `subscribers`.
    held: Vec<Held<T>>,
    /// Requests waiting for this interest to become live.
    waiting: u32,
}

/// A subscriber waiting for a snapshot: since when (or its last `no_snapshot` notice), and the
/// first sequence it has not been told about.
struct Held<T> {
    sub: Rc<T>,
    since: std::time::Instant,
    from: u64,
}

impl<T> Entry<T> {
    fn new() -> Self {
        Entry {
            state: State::Idle,
            subscribers: Vec::new(),
            held: Vec::new(),
            waiting: 0,
        }
    }
    fn unused(&self) -> bool {
        self.subscribers.is_empty() && self.held.is_empty() && self.waiting == 0
    }
}

struct TopicEntry<T> {
    name: Arc<str>,
    /// The dispatcher's number for the topic, learnt from its first frame here.
    id: Option<TopicId>,
    exact: Entry<T>,
    /// Last sequence seen on this shard; 0 when unknown (the next frame sets the baseline).
    last_seq: u64,
}

/// A message for the dispatcher that a table change calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDispatcher {
    Subscribe { interest: Interest, nonce: u64 },
    Recover { nonce: u64, items: Vec<RecoverItem> },
    Unsubscribe { interest: Interest },
}

/// A subscribe request that finished: every interest is live; ack with each one's current
/// sequence (`None` for patterns). `recovered`: the dispatcher's answer for each topic that
/// needed history, by topic, in request order.
pub struct Resolved<T> {
    pub sub: Rc<T>,
    pub id: Option<u64>,
    pub topics: Vec<(Interest, Option<u64>)>,
    pub recovered: Vec<(Arc<str>, RecoveredItem)>,
    /// Started by the server (a `resnapshot` gap policy), not by a request: no ack.
    pub quiet: bool,
    /// Gap notices for the topic's other subscribers, `(subscriber, topic, from, to)`: the
    /// shard had not received up to the answer's head (frames lost before it), which the new
    /// subscriber's replay covers; announced now, so the next frame finds no hole.
    pub behind: Vec<(Rc<T>, Arc<str>, u64, u64)>,
}

/// The history part of a request: asked of the dispatcher once every interest of the
/// request is live, so that its answer's place in the ring is where the subscriber joins.
struct Recovery {
    items: Vec<RecoverItem>,
    /// The nonce of the `Recover` sent; `None` until then.
    asked: Option<u64>,
}

struct Request<T> {
    sub: Rc<T>,
    id: Option<u64>,
    /// Each interest, and whether `sub` is to be added to it when the request completes.
    items: Vec<(Interest, bool)>,
    recovery: Option<Recovery>,
    quiet: bool,
}

/// How a frame was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Delivered to this many subscribers.
    Delivered(usize),
    /// Nobody on this shard wants it (a reply race after the last unsubscribe).
    Unrouted,
    /// Older than what the shard already has (left over from an earlier subscription).
    Stale,
}

/// Shard-local subscription table. `T` is the connection type; subscribers are compared by
/// `Rc` identity.
pub struct Table<T> {
    /// Topics the shard tracks (subscribed exactly, waited for, or met through a pattern);
    /// `free` lists the empty slots.
    slots: Vec<Option<TopicEntry<T>>>,
    free: Vec<u32>,
    /// Slot of each topic, by name (requests).
    by_name: HashMap<Arc<str>, u32>,
    /// Slot of each topic, by topic id (frames); [`NO_SLOT`] where none. As long as the
    /// highest topic id met here, 4 bytes each.
    by_id: Vec<u32>,
    /// The names of the topics in order: a pattern's subscribe or release visits the topics
    /// under it, not every topic.
    names: NameIndex,
    /// Patterns by prefix (without `.*`); a frame looks up each prefix covering its topic.
    prefixes: HashMap<Arc<str>, Entry<T>>,
    requests: Vec<Request<T>>,
    next_nonce: u64,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            by_id: Vec::new(),
            names: NameIndex::default(),
            prefixes: HashMap::new(),
            requests: Vec::new(),
            next_nonce: 1,
        }
    }
}

/// An empty entry of [`Table::by_id`].
const NO_SLOT: u32 = u32::MAX;

impl<T> Table<T> {
    fn topic(&self, name: &str) -> Option<&TopicEntry<T>> {
        let slot = *self.by_name.get(name)?;
        self.slots[slot as usize].as_ref()
    }

    fn topic_mut(&mut self, name: &str) -> Option<&mut TopicEntry<T>> {
        let slot = *self.by_name.get(name)?;
        self.slots[slot as usize].as_mut()
    }

    /// Adds a topic the table does not have; returns its slot.
    fn insert_topic(&mut self, name: Arc<str>) -> u32 {
        let entry = TopicEntry {
            name: name.clone(),
            id: None,
            exact: Entry::new(),
            last_seq: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.names.insert(name.clone());
        self.by_name.insert(name, slot);
        slot
    }

    fn remove_topic(&mut self, name: &str) {
        let Some(slot) = self.by_name.remove(name) else {
            return;
        };
        let entry = self.slots[slot as usize]
            .take()
            .expect("a named slot is full");
        if let Some(id) = entry.id {
            self.by_id[id.0 as usize] = NO_SLOT;
        }
        self.names.remove(name);
        self.free.push(slot);
    }

    /// Slot of the frame's topic: by its id, or, on the first frame of the topic here, by the
    /// name it carries (then remembered by id). A topic the table lacks gets a slot only when
    /// a live pattern covers it.
    fn slot_of(&mut self, frame: &Frame) -> Option<u32> {
        let id = frame.topic.0 as usize;
        if let Some(&slot) = self.by_id.get(id) {
            if slot != NO_SLOT {
                return Some(slot);
            }
        }
        let name = frame.name();
        let slot = match self.by_name.get(name) {
            Some(&slot) => slot,
            None if live_pattern_covers(&self.prefixes, name) => self.insert_topic(Arc::from(name)),
            None => return None,
        };
        if self.by_id.len() <= id {
            self.by_id.resize(id + 1, NO_SLOT);
        }
        self.by_id[id] = slot;
        self.slots[slot as usize]
            .as_mut()
            .expect("a named slot is full")
            .id = Some(frame.topic);
        Some(slot)
    }

    /// The table's own copy of `interest` when it already has the topic: connections then
    /// share one name allocation per topic instead of holding one each.
    pub fn intern(&self, interest: Interest) -> Interest {
        match &interest {
            Interest::Topic(t) => match self.by_name.get_key_value(t) {
                Some((key, _)) => Interest::Topic(key.clone()),
                None => interest,
            },
            Interest::Prefix(_) => interest,
        }
    }

    fn entry_mut(&mut self, interest: &Interest) -> &mut Entry<T> {
        match interest {
            Interest::Topic(t) => {
                let slot = match self.by_name.get(t) {
                    Some(&slot) => slot,
                    None => self.insert_topic(t.clone()),
                };
                &mut self.slots[slot as usize]
                    .as_mut()
                    .expect("a named slot is full")
                    .exact
            }
            Interest::Prefix(p) => self.prefixes.entry(p.clone()).or_insert_with(Entry::new),
        }
    }

    fn state(&self, interest: &Interest) -> State {
        match interest {
            Interest::Topic(t) => self.topic(t).map_or(State::Idle, |e| e.exact.state),
            Interest::Prefix(p) => self.prefixes.get(p).map_or(State::Idle, |e| e.state),
        }
    }

    /// The sequence an `ack` reports for a live interest.
    fn ack_seq(&self, interest: &Interest) -> Option<u64> {
        match interest {
            Interest::Topic(t) => Some(self.topic(t).map_or(0, |e| e.last_seq)),
            Interest::Prefix(_) => None,
        }
    }

    /// Starts a subscribe request. `items` pairs each interest with whether `sub` wants to be
    /// added to it when the request completes (an unsubscribe meanwhile turns that off); a
    /// subscriber is never added twice.
    /// Returns the request if it completed at once, and what to tell the dispatcher.
    /// `recover`: topics of the request that need the dispatcher's history (a resume, a
    /// snapshot topic); each must also be among `items`. Such a request completes only with
    /// the dispatcher's [`Table::on_recovered`].
    pub fn subscribe(
        &mut self,
        sub: Rc<T>,
        id: Option<u64>,
        items: Vec<(Interest, bool)>,
        recover: Vec<RecoverItem>,
        out: &mut Vec<ToDispatcher>,
    ) -> Option<Resolved<T>> {
        for (interest, _) in &items {
            let nonce = self.next_nonce;
            let e = self.entry_mut(interest);
            e.waiting += 1;
            if e.state == State::Idle {
                e.state = State::Pending(nonce);
                self.next_nonce += 1;
                out.push(ToDispatcher::Subscribe {
                    interest: interest.clone(),
                    nonce,
                });
            }
        }
        let recovery = (!recover.is_empty()).then_some(Recovery {
            items: recover,
            asked: None,
        });
        self.requests.push(Request {
            sub,
            id,
            items,
            recovery,
            quiet: false,
        });
        let last = self.requests.len() - 1;
        if self.request_ready(&self.requests[last]) {
            if self.ask_recovery(last, out) {
                return None;
            }
            let req = self.requests.swap_remove(last);
            return Some(self.finish(req, Vec::new()));
        }
        None
    }

    /// Starts `sub` over on a topic it subscribes to (a `resync`): it leaves the topic's
    /// subscribers at once (it gets no more of its frames) and rejoins with the dispatcher's
    /// answer to `item`, as a subscribe request would. The table entry stays live meanwhile.
    /// `quiet`: started by the server (the `resnapshot` gap policy), answered without an ack.
    pub fn resync(
        &mut self,
        sub: Rc<T>,
        id: Option<u64>,
        interest: Interest,
        item: RecoverItem,
        quiet: bool,
        out: &mut Vec<ToDispatcher>,
    ) -> Option<Resolved<T>> {
        let e = self.entry_mut(&interest);
        e.subscribers.retain(|s| !Rc::ptr_eq(s, &sub));
        e.held.retain(|h| !Rc::ptr_eq(&h.sub, &sub));
        let before = self.requests.len();
        let done = self.subscribe(sub, id, vec![(interest, true)], vec![item], out);
        // Still waiting, it is the one request `subscribe` added (it pushes at the end).
        if self.requests.len() == before + 1 {
            self.requests[before].quiet = quiet;
        }
        done.map(|mut r| {
            r.quiet = quiet;
            r
        })
    }

    /// The name of the topic numbered `id`, if the table tracks it.
    pub fn name_of(&self, id: TopicId) -> Option<Arc<str>> {
        let slot = *self.by_id.get(id.0 as usize)?;
        if slot == NO_SLOT {
            return None;
        }
        self.slots[slot as usize].as_ref().map(|e| e.name.clone())
    }

    /// Sends the request's `Recover` if it has one not yet sent; true when it now waits for
    /// the answer.
    fn ask_recovery(&mut self, at: usize, out: &mut Vec<ToDispatcher>) -> bool {
        let nonce = self.next_nonce;
        let Some(r) = self.requests[at].recovery.as_mut() else {
            return false;
        };
        if r.asked.is_none() {
            r.asked = Some(nonce);
            self.next_nonce += 1;
            out.push(ToDispatcher::Recover {
                nonce,
                items: r.items.clone(),
            });
        }
        true
    }

    /// Applies the dispatcher's answer to a `Recover`: completes the request that asked it
    /// (`None` when that request was abandoned). Subscribers of a topic whose answer waits
    /// for a snapshot are held until the next `snapshot` frame.
    pub fn on_recovered(&mut self, nonce: u64, answers: Vec<RecoveredItem>) -> Option<Resolved<T>> {
        let at = self
            .requests
            .iter()
            .position(|r| r.recovery.as_ref().is_some_and(|x| x.asked == Some(nonce)))?;
        let req = self.requests.remove(at);
        let topics: Vec<Arc<str>> = req
            .recovery
            .as_ref()
            .map(|r| r.items.iter().map(|i| i.topic.clone()).collect())
            .unwrap_or_default();
        let recovered: Vec<(Arc<str>, RecoveredItem)> = topics.into_iter().zip(answers).collect();
        Some(self.finish(req, recovered))
    }

    fn request_ready(&self, req: &Request<T>) -> bool {
        req.items.iter().all(|(i, _)| self.state(i) == State::Live)
    }

    fn finish(
        &mut self,
        req: Request<T>,
        recovered: Vec<(Arc<str>, RecoveredItem)>,
    ) -> Resolved<T> {
        let mut behind: Vec<(Rc<T>, Arc<str>, u64, u64)> = Vec::new();
        for (name, answer) in &recovered {
            let Some(&slot) = self.by_name.get(&**name) else {
                continue;
            };
            let Table {
                slots, prefixes, ..
            } = &mut *self;
            let Some(e) = slots[slot as usize].as_mut() else {
                continue;
            };
            if answer.head <= e.last_seq {
                continue;
            }
            if e.last_seq != 0 {
                let (from, to) = (e.last_seq + 1, answer.head);
                let patterns = covering_prefixes(&e.name)
                    .filter_map(|p| prefixes.get(p))
                    .filter(|p| p.state == State::Live)
                    .flat_map(|p| p.subscribers.iter());
                for s in e.exact.subscribers.iter().chain(patterns) {
                    if !behind.iter().any(|(b, ..)| Rc::ptr_eq(b, s)) {
                        behind.push((s.clone(), e.name.clone(), from, to));
                    }
                }
            }
            e.last_seq = answer.head;
        }
        let mut topics = Vec::with_capacity(req.items.len());
        for (interest, add) in req.items {
            let answer = match &interest {
                Interest::Topic(t) => recovered.iter().find(|(r, _)| r == t).map(|(_, a)| a),
                Interest::Prefix(_) => None,
            };
            let seq = match answer {
                Some(a) => Some(a.seq),
                None => self.ack_seq(&interest),
            };
            let held = answer.is_some_and(|a| a.waiting);
            let e = self.entry_mut(&interest);
            e.waiting -= 1;
            let known = e
                .subscribers
                .iter()
                .chain(e.held.iter().map(|h| &h.sub))
                .any(|s| Rc::ptr_eq(s, &req.sub));
            if add && !known {
                if held {
                    e.held.push(Held {
                        sub: req.sub.clone(),
                        since: std::time::Instant::now(),
                        from: seq.unwrap_or(0) + 1,
                    });
                } else {
                    e.subscribers.push(req.sub.clone());
                }
            }
            topics.push((interest, seq));
        }
        Resolved {
            sub: req.sub,
            id: req.id,
            topics,
            recovered,
            quiet: req.quiet,
            behind,
        }
    }

    /// Applies the dispatcher's reply (the interest is live from `seq` on). Returns the
    /// requests it completed; a request with history to ask for asks it now (into `out`).
    pub fn on_subscribed(
        &mut self,
        interest: &Interest,
        nonce: u64,
        seq: u64,
        out: &mut Vec<ToDispatcher>,
    ) -> Vec<Resolved<T>> {
        if self.state(interest) != State::Pending(nonce) {
            return Vec::new(); // a reply to a request already abandoned
        }
        match interest {
            Interest::Topic(t) => {
                let e = self.topic_mut(t).expect("pending topic has an entry");
                e.exact.state = State::Live;
                e.last_seq = seq;
            }
            Interest::Prefix(p) => {
                // Topics this shard did not receive until now (neither exactly nor through
                // another live pattern) restart their baseline; the others keep it, so a hole
                // in them is still announced.
                for name in self.names.under(p) {
                    let tracked = live_pattern_covers(&self.prefixes, &name);
                    if let Some(e) = self.topic_mut(&name) {
                        if e.exact.state != State::Live && !tracked {
                            e.last_seq = 0;
                        }
                    }
                }
                self.entry_mut(interest).state = State::Live;
            }
        }
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.requests.len() {
            if self.request_ready(&self.requests[i]) && !self.ask_recovery(i, out) {
                let req = self.requests.remove(i);
                done.push(self.finish(req, Vec::new()));
            } else {
                i += 1;
            }
        }
        done
    }

    /// True when `sub` is a subscriber of `interest` or a request of its still wants it.
    pub fn wants(&self, sub: &Rc<T>, interest: &Interest) -> bool {
        let subscribed = match interest {
            Interest::Topic(t) => self.topic(t).is_some_and(|e| {
                e.exact
                    .subscribers
                    .iter()
                    .chain(e.exact.held.iter().map(|h| &h.sub))
                    .any(|s| Rc::ptr_eq(s, sub))
            }),
            Interest::Prefix(p) => self
                .prefixes
                .get(p)
                .is_some_and(|e| e.subscribers.iter().any(|s| Rc::ptr_eq(s, sub))),
        };
        subscribed
            || self.requests.iter().any(|r| {
                Rc::ptr_eq(&r.sub, sub) && r.items.iter().any(|(i, add)| *add && i == interest)
            })
    }

    /// Current sequence of a subscribed topic (for an unsubscribe ack).
    pub fn last_seq(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|e| e.last_seq)
    }

    /// Last sequence the shard saw of the topic numbered `id`, if it tracks the topic and has
    /// met a frame of it (what routing by id sees; the tests check the index with it).
    #[cfg(test)]
    pub(crate) fn last_seq_of(&self, id: TopicId) -> Option<u64> {
        let slot = *self.by_id.get(id.0 as usize)?;
        if slot == NO_SLOT {
            return None;
        }
        self.slots[slot as usize].as_ref().map(|e| e.last_seq)
    }

    /// Removes `sub` from `interest`; tells the dispatcher when the shard's last one leaves.
    /// Linear in the interest's subscriber count.
    pub fn unsubscribe(&mut self, sub: &Rc<T>, interest: &Interest, out: &mut Vec<ToDispatcher>) {
        // A request of `sub` still waiting must not add it back when it completes.
        for req in self.requests.iter_mut().filter(|r| Rc::ptr_eq(&r.sub, sub)) {
            for (x, add) in req.items.iter_mut() {
                if x == interest {
                    *add = false;
                }
            }
        }
        // A resnapshot the server started for it (quiet) is dropped with the subscription:
        // nothing of the topic may follow the unsubscribe's ack.
        let mut i = 0;
        while i < self.requests.len() {
            let r = &self.requests[i];
            if r.quiet && Rc::ptr_eq(&r.sub, sub) && r.items.iter().any(|(x, _)| x == interest) {
                let req = self.requests.remove(i);
                for (x, _) in &req.items {
                    self.entry_mut(x).waiting -= 1;
                }
            } else {
                i += 1;
            }
        }
        let e = self.entry_mut(interest);
        if let Some(pos) = e.subscribers.iter().position(|s| Rc::ptr_eq(s, sub)) {
            e.subscribers.swap_remove(pos);
        }
        if let Some(pos) = e.held.iter().position(|h| Rc::ptr_eq(&h.sub, sub)) {
            e.held.swap_remove(pos);
        }
        self.release_if_unused(interest, out);
    }

    /// Drops every pending request of `sub` (its connection closed).
    pub fn abandon_requests(&mut self, sub: &Rc<T>, out: &mut Vec<ToDispatcher>) {
        let mut i = 0;
        while i < self.requests.len() {
            if Rc::ptr_eq(&self.requests[i].sub, sub) {
                let req = self.requests.swap_remove(i);
                for (x, _) in &req.items {
                    self.entry_mut(x).waiting -= 1;
                    self.release_if_unused(x, out);
                }
            } else {
                i += 1;
            }
        }
    }

    fn release_if_unused(&mut self, interest: &Interest, out: &mut Vec<ToDispatcher>) {
        let e = self.entry_mut(interest);
        if !e.unused() {
            return;
        }
        if e.state != State::Idle {
            e.state = State::Idle;
            out.push(ToDispatcher::Unsubscribe {
                interest: interest.clone(),
            });
        }
        match interest {
            Interest::Topic(t) => {
                if !live_pattern_covers(&self.prefixes, t) {
                    self.remove_topic(t);
                }
            }
            Interest::Prefix(p) => {
                self.prefixes.remove(p);
                // Only topics under this pattern were kept for it.
                for name in self.names.under(p) {
                    let keep = self
                        .topic(&name)
                        .is_some_and(|e| e.exact.state != State::Idle || !e.exact.unused())
                        || live_pattern_covers(&self.prefixes, &name);
                    if !keep {
                        self.remove_topic(&name);
                    }
                }
            }
        }
    }

    /// Routes one frame: calls `deliver(subscriber, missed)` once per subscriber (a connection
    /// subscribed both exactly and by pattern is called twice; `deliver` deduplicates), where
    /// `missed` is a range of sequences the shard itself never received, to announce first.
    /// Cost: an array read by topic id (a name hash the first time a topic id is met), one
    /// hash lookup per dot in the topic while any pattern is subscribed (never a scan of the
    /// patterns), and O(1) per subscriber.
    /// `deliver` must not touch the table.
    pub fn route(
        &mut self,
        frame: &Frame,
        mut deliver: impl FnMut(&Rc<T>, Option<(u64, u64)>),
    ) -> Routed {
        let Some(slot) = self.slot_of(frame) else {
            return Routed::Unrouted;
        };
        let Table {
            slots,
            prefixes,
            requests,
            ..
        } = self;
        let entry = slots[slot as usize]
            .as_mut()
            .expect("a routed slot is full");
        let exact_live = entry.exact.state == State::Live;
        let by_pattern = live_pattern_covers(prefixes, &entry.name);
        if !exact_live && !by_pattern {
            return Routed::Unrouted;
        }
        if frame.seq <= entry.last_seq {
            return Routed::Stale;
        }
        let missed = (entry.last_seq != 0 && frame.seq > entry.last_seq + 1)
            .then(|| (entry.last_seq + 1, frame.seq - 1));
        entry.last_seq = frame.seq;
        if frame.snapshot && !entry.exact.held.is_empty() {
            let held = std::mem::take(&mut entry.exact.held);
            entry
                .exact
                .subscribers
                .extend(held.into_iter().map(|h| h.sub));
        }
        let mut n = 0;
        if exact_live {
            for s in &entry.exact.subscribers {
                deliver(s, missed);
                n += 1;
            }
        }
        if by_pattern {
            // A connection that also subscribes to the topic exactly and waits there (for a
            // snapshot, or for the answer of a resume or resync) gets nothing of it through a
            // pattern meanwhile: its exact subscription says where its data starts. Free
            // unless someone waits.
            let held = &entry.exact.held;
            let name = &entry.name;
            let waits = |s: &Rc<T>| {
                held.iter().any(|h| Rc::ptr_eq(&h.sub, s))
                    || requests.iter().any(|r| {
                        r.recovery.is_some()
                            && Rc::ptr_eq(&r.sub, s)
                            && r.items
                                .iter()
                                .any(|(i, _)| matches!(i, Interest::Topic(t) if t == name))
                    })
            };
            let anyone_waits = !held.is_empty() || !requests.is_empty();
            for p in covering_prefixes(&entry.name) {
                match prefixes.get(p) {
                    Some(e) if e.state == State::Live => {
                        for s in &e.subscribers {
                            if anyone_waits && waits(s) {
                                continue;
                            }
                            deliver(s, missed);
                            n += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        Routed::Delivered(n)
    }

    /// Topics and patterns with at least one subscriber or waiting request.
    /// Subscribers of each topic (exactly, those waiting for a snapshot included) and of each
    /// pattern (named `prefix.*`) with any; the `/topics` figures.
    pub fn subscriber_counts(&self) -> Vec<(Arc<str>, u32)> {
        let topics = self.slots.iter().flatten().filter_map(|e| {
            let n = e.exact.subscribers.len() + e.exact.held.len();
            (n > 0).then(|| (e.name.clone(), n as u32))
        });
        let patterns = self.prefixes.iter().filter_map(|(p, e)| {
            let n = e.subscribers.len();
            (n > 0).then(|| (Arc::from(format!("{p}.*")), n as u32))
        });
        topics.chain(patterns).collect()
    }

    /// Topics and patterns this shard tracks.
    pub fn interest_count(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|e| !e.exact.unused())
            .count()
            + self.prefixes.values().filter(|p| !p.unused()).count()
    }
}

/// True when a live pattern covers `topic`. Free when no pattern exists; otherwise one hash
/// lookup per dot in the topic.
fn live_pattern_covers<T>(prefixes: &HashMap<Arc<str>, Entry<T>>, topic: &str) -> bool {
    !prefixes.is_empty()
        && covering_prefixes(topic).any(|p| prefixes.get(p).is_some_and(|e| e.state == State::Live))
}

mod waiting;
pub use waiting::SnapshotWaits;

#[cfg(test)]
mod tests;
