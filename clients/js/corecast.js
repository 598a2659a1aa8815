/**
 * corecast browser client: one ES module, no dependencies, no build step.
 *
 * # Layout
 * - `CorecastError`: what a refused or failed request rejects with.
 * - `Corecast`: the public client (an `EventTarget`). Its state lives in a `Session`, kept in a
 *   module-private `WeakMap` so that the object's own surface is exactly the documented API.
 * - `Session`: one client's life across sockets, in the order a frame travels: socket
 *   lifecycle (open, welcome, auth, ready, lost, backoff) -> requests (ids, replies, the
 *   offline queue) -> subscriptions (registry, resubscribe, positions) -> frames in
 *   (msg, snapshot, gap) -> stats.
 * - `CorecastStatus`: the `<corecast-status>` element, re-exported from corecast-status.js
 *   (registered when `customElements` exists), so one import brings both.
 *
 * The wire protocol is docs/protocol.md; the client's guide is docs/clients.md.
 * Runs in browsers and in Node 22+ (or Node 20 with `--experimental-websocket`).
 *
 * @module corecast
 */

/** Names per subscribe or unsubscribe request (the server's `shard.max_topics_per_request`). */
const MAX_TOPICS_PER_REQUEST = 100;
/** A connection that stayed `connected` this long (ms) resets the backoff when it ends. */
const STABLE_MS = 5000;
/** Wait (ms) before a request the server refused with `rate_limited` is sent again
 *  (the server allows one `auth` per second per connection). */
const RETRY_RATE_LIMITED_MS = 1100;
/** Message rate window: RATE_BUCKETS buckets of RATE_BUCKET_MS each (5 s). */
const RATE_BUCKET_MS = 250;
const RATE_BUCKETS = 20;

/**
 * The error a request rejects with, and the payload of `error` events.
 * `code` is the server's error code (docs/protocol.md, "Error codes") or one of the client's
 * own: `disconnected` (the socket dropped or `close()` was called before the reply),
 * `queue_full` (pushed out of the offline queue), `rate_limited` (also: the server dropped the
 * request without a reply, as its inbound rate limit does), `token_failed` (the token function
 * threw or returned no string), `admin_key_failed` (the same of the admin key function), `auth_required` (the server requires a token and none is set,
 * or closed with 4003), `bad_url` (the WebSocket constructor refused the URL), `unsubscribed`
 * (a subscription's `ready` when it ended before its first ack).
 */
export class CorecastError extends Error {
  /**
   * @param {string} code machine-readable code
   * @param {string} message human-readable text
   * @param {string} [reason] the refusal's detail, for `unauthorized` (e.g. `expired`)
   * @param {string} [topic] the topic or pattern a refused subscription named
   */
  constructor(code, message, reason, topic) {
    super(message);
    this.name = 'CorecastError';
    /** @type {string} */
    this.code = code;
    if (reason !== undefined) /** @type {string|undefined} */ this.reason = reason;
    if (topic !== undefined) /** @type {string|undefined} */ this.topic = topic;
  }
}

/** Builds an event carrying `detail` (CustomEvent where it exists). */
function makeEvent(type, detail) {
  if (typeof CustomEvent === 'function') return new CustomEvent(type, { detail });
  const ev = new Event(type);
  Object.defineProperty(ev, 'detail', { value: detail });
  return ev;
}

/** Reports an exception thrown by user code without breaking the frame being handled. */
function report(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}

/** Calls a user handler; a throw is reported, never propagated into the client. */
function call(fn, arg) {
  if (typeof fn !== 'function') return;
  try { fn(arg); } catch (err) { report(err); }
}

function errorOf(frame) {
  return new CorecastError(String(frame.code ?? 'error'), String(frame.message ?? ''), frame.reason);
}

/** The `error` event's detail: `{code, message, reason?, topic?}`. */
function detailOf(err, topic) {
  const d = { code: String(err.code ?? 'error'), message: String(err.message ?? '') };
  if (err.reason !== undefined && err.reason !== null) d.reason = err.reason;
  if (topic !== undefined) d.topic = topic;
  return d;
}

/** `prefix` of a `prefix.*` pattern, or null for an exact topic. */
function patternPrefix(name) {
  return name.endsWith('.*') ? name.slice(0, -2) : null;
}

function delay(ms) {
  return Math.max(0, Number.isFinite(ms) ? ms : 0);
}

/** A handle on one `subscribe()` call. Lives until `unsubscribe()` or the server ends it. */
class Subscription {
  constructor(topic, handlers, end) {
    /** The topic or `prefix.*` pattern, as given to subscribe(). */
    this.topic = topic;
    /** @private */ this.handlers = handlers;
    let settle;
    /** Resolves with the first ack entry; rejects with CorecastError if the server refuses
     *  the subscription or it ends first. Never rejects unobserved. */
    this.ready = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    this.ready.catch(() => {});
    Object.defineProperty(this, 'handlers', { enumerable: false });
    handles.set(this, { settle, end, active: true, acked: false });
  }
  /** True until unsubscribe() or the server ends the subscription. */
  get active() { return handles.get(this).active; }
  /** Stops delivery to this handle; the last handle of a topic unsubscribes on the wire. Idempotent. */
  unsubscribe() {
    const s = handles.get(this);
    if (!s.active) return;
    finish(this, new CorecastError('unsubscribed', `unsubscribed from ${this.topic}`, undefined, this.topic));
    s.end(this);
  }
}
/** Subscription -> {settle, end, active, acked}: internal state, off the public object. */
const handles = new WeakMap();
function acked(sub, entry) {
  const s = handles.get(sub);
  if (!s.acked) { s.acked = true; s.settle.resolve(entry); }
}
function finish(sub, err) {
  const s = handles.get(sub);
  s.active = false;
  if (!s.acked) { s.acked = true; s.settle.reject(err); }
}

/**
 * One client's state across its sockets. Not exported: `Corecast` delegates to it.
 * Every field that belongs to one socket is reset in `drop()`.
 */
class Session {
  constructor(target, url, o) {
    this.target = target;
    this.url = String(url);
    this.token = o.token;
    this.adminKey = o.adminKey;
    this.reconnectEnabled = o.reconnect ?? true;
    const b = o.backoff ?? {};
    this.initialMs = delay(b.initialMs ?? 250);
    this.maxMs = delay(b.maxMs ?? 30000);
    this.factor = Math.max(1, b.factor ?? 2);
    this.pingIntervalMs = delay(o.pingIntervalMs ?? 5000);
    this.pongTimeoutMs = delay(o.pongTimeoutMs ?? 10000);
    this.connectTimeoutMs = delay(o.connectTimeoutMs ?? 10000);
    this.maxQueue = Math.max(0, Math.floor(o.maxQueue ?? 256));
    this.WS = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WS !== 'function') {
      throw new TypeError('corecast: no WebSocket implementation; pass options.WebSocket');
    }

    // Lifecycle.
    this.state = 'disconnected';
    this.ws = null;            // the current socket, or null
    this.welcomed = false;     // the current socket's welcome arrived
    this.ready = false;        // welcomed and authenticated: requests go straight out
    this.attempt = 0;          // consecutive failed attempts since a stable connection
    this.connectedAt = 0;      // performance.now() at the last `connected`
    this.connections = 0;      // connections that reached `connected`, ever
    this.backoffTimer = null;  // the wait before the next attempt
    this.connectTimer = null;  // the current socket's welcome-and-auth deadline (in `timers`)
    this.timers = new Set();   // the current socket's timers, cleared in drop()
    this.pingTimer = null;     // interval of app-level pings (current socket)
    this.deadTimer = null;     // armed by a ping, cleared by any frame (current socket)
    this.resubLastId = null;   // id of the last resubscribe request of the current socket
    this.autoPending = false;  // autoConnect's connect() not run yet
    this.onOnline = () => { if (this.backoffTimer !== null) this.retryNow(); };
    this.listening = false;

    // Requests.
    this.nextId = 1;
    this.pending = new Map();  // id -> pending request, in send order (the reply order)
    this.queue = [];           // user requests waiting for a connection
    this.outbox = [];          // subscribe/unsubscribe ops of this task, coalesced at a microtask
    this.outboxScheduled = false;

    // Subscriptions.
    this.subs = new Map();      // topic or pattern as written -> Entry
    this.patterns = new Map();  // prefix of a pattern -> its Entry (routing)
    this.positions = new Map(); // exact topic -> {epoch, seq, snapshotTopic, awaiting}

    // Stats.
    this.latencyMs = null;
    this.received = 0;
    this.lastMessageAt = null;
    this.conn = null;
    this.rateSince = performance.now();
    this.buckets = new Uint32Array(RATE_BUCKETS);
    this.bucketIds = new Float64Array(RATE_BUCKETS).fill(-Infinity);
  }

  emit(type, detail) {
    this.target.dispatchEvent(makeEvent(type, detail));
  }

  setState(next, reason) {
    if (next === this.state) return;
    const previous = this.state;
    this.state = next;
    this.emit('state', { state: next, previous, attempt: this.shownAttempt(), reason });
  }

  shownAttempt() {
    return this.state === 'connected' ? 0 : this.attempt;
  }

  /** A timer that belongs to the current socket: drop() clears it. */
  later(ms, fn) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  // ---- Lifecycle -------------------------------------------------------------------------

  connect() {
    this.autoPending = false;
    if (this.ws !== null || this.backoffTimer !== null) return;
    this.attempt = 0;
    this.listen(true);
    this.setState('connecting', 'connect()');
    this.open();
  }

  close() {
    this.autoPending = false;
    this.cancelBackoff();
    this.drop('client close');
    this.listen(false);
    this.attempt = 0;
    this.setState('disconnected', 'close()');
    this.rejectQueue('close() was called');
  }

  reconnect() {
    this.autoPending = false;
    const fresh = this.state === 'disconnected' || this.state === 'error';
    this.cancelBackoff();
    this.drop('client reconnect');
    this.attempt = 0;
    this.listen(true);
    this.setState(fresh ? 'connecting' : 'reconnecting', 'reconnect()');
    this.open();
  }

  /** Watches the browser's `online` event while the client wants a connection. */
  listen(on) {
    if (on === this.listening || typeof globalThis.addEventListener !== 'function') return;
    this.listening = on;
    if (on) globalThis.addEventListener('online', this.onOnline);
    else globalThis.removeEventListener('online', this.onOnline);
  }

  cancelBackoff() {
    if (this.backoffTimer !== null) clearTimeout(this.backoffTimer);
    this.backoffTimer = null;
  }

  retryNow() {
    this.cancelBackoff();
    this.open();
  }

  /** Opens a socket; the welcome (and auth) must complete within connectTimeoutMs. */
  open() {
    let ws;
    try {
      ws = new this.WS(this.url);
    } catch (err) {
      // A URL the WebSocket constructor refuses will never work: stop here.
      this.fail('bad_url', `cannot open ${this.url}: ${err && err.message}`);
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => { if (this.ws === ws) this.onFrame(ev.data); };
    ws.onclose = (ev) => { if (this.ws === ws) this.onClose(ev.code, ev.reason); };
    // `error` means the connection failed (close code 1006). Browsers follow it with `close`;
    // some implementations (Node 20's) do not, so the socket is given up on here.
    ws.onerror = () => { if (this.ws === ws) this.lost('connection failed (1006)'); };
    if (this.connectTimeoutMs > 0) {
      this.connectTimer = this.later(this.connectTimeoutMs, () =>
        this.lost(`connect timeout: no welcome (or auth ack) within ${this.connectTimeoutMs} ms`));
    }
  }

  /**
   * Forgets the current socket: closes it if open, clears its timers, rejects the user's
   * requests in flight (`disconnected`). Subscribes in flight are not rejected: the
   * registry still holds them and the next connection sends them again.
   */
  drop(why) {
    const ws = this.ws;
    if (ws === null) return;
    this.ws = null;
    this.welcomed = false;
    this.ready = false;
    this.conn = null;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(1000);
    } catch (_) { /* already closing */ }
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.connectTimer = null;
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.deadTimer = null;
    this.resubLastId = null;
    this.outbox = [];
    for (const e of this.subs.values()) { e.queued = false; e.lastAck = null; }
    const pending = [...this.pending.values()];
    this.pending.clear();
    const err = new CorecastError('disconnected', `the connection closed before the reply (${why})`);
    for (const p of pending) if (p.kind === 'user' || p.kind === 'auth') p.reject(err);
  }

  /** The server or the network closed the socket. */
  onClose(code, reason) {
    const why = `closed by the server or network: ${code}${reason ? ` ${reason}` : ''}`;
    if (code === 4003) {
      this.fail('auth_required', `the server requires authentication (${code}${reason ? ` ${reason}` : ''})`);
      return;
    }
    this.lost(why);
  }

  /** The socket is gone or deemed dead: retry with backoff (or stop if reconnect is off). */
  lost(why) {
    const stable = this.state === 'connected' && performance.now() - this.connectedAt >= STABLE_MS;
    this.drop(why);
    if (!this.reconnectEnabled) {
      this.listen(false);
      this.setState('disconnected', why);
      this.rejectQueue(why);
      return;
    }
    if (stable) this.attempt = 0;
    this.attempt += 1;
    const cap = Math.min(this.maxMs, this.initialMs * this.factor ** (this.attempt - 1));
    this.backoffTimer = setTimeout(() => { this.backoffTimer = null; this.open(); }, Math.random() * cap);
    this.setState('reconnecting', why);
  }

  /** Stops in `error`: no retry until connect() or reconnect(). */
  fail(code, message, reason) {
    this.cancelBackoff();
    this.drop(message);
    this.listen(false);
    this.rejectQueue(message);
    this.setState('error', message);
    this.emit('error', detailOf({ code, message, reason }));
  }

  onWelcome(w) {
    if (this.welcomed) return;
    this.welcomed = true;
    this.conn = typeof w.conn === 'string' ? w.conn : null;
    const ws = this.ws;
    this.emit('welcome', w);
    if (this.ws !== ws) return;
    if (w.auth === 'required' && this.token == null && this.adminKey == null) {
      this.fail('auth_required', 'the server requires authentication and no token is set');
      return;
    }
    this.authenticate(ws);
  }

  /**
   * Sends the token's auth, then the admin key's, each awaited (a subscribe must not reach
   * the server before the permissions it needs); then the socket is ready. A refused token
   * stops in `error`; a server without auth (`bad_request`) is told in an `error` event and
   * the connection goes on; anything else (the token function failed, `too_many_connections`)
   * is retried with backoff.
   */
  async authenticate(ws) {
    const steps = [];
    if (this.token != null) steps.push(() => this.sendToken(ws));
    if (this.adminKey != null) steps.push(() => this.sendAdminKey(ws));
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        if (this.ws !== ws) return;
        if (err.code === 'unauthorized' || err.code === 'sub_mismatch') {
          this.fail(err.code, `authentication refused: ${err.message}`, err.reason);
          return;
        }
        this.emit('error', detailOf(err));
        if (this.ws !== ws) return;
        if (err.code === 'bad_request') continue;
        this.lost(`authentication failed: ${err.code}`);
        return;
      }
      if (this.ws !== ws) return;
    }
    this.onReady(ws);
  }

  /**
   * Gets the admin key (calling the function, if it is one: a key that changes, such as the
   * one a server makes at each start) and sends it; resolves with the ack.
   */
  async sendAdminKey(ws) {
    let key;
    try {
      key = typeof this.adminKey === 'function' ? await this.adminKey() : this.adminKey;
    } catch (err) {
      throw new CorecastError('admin_key_failed', `the admin key function failed: ${err && err.message}`);
    }
    if (typeof key !== 'string' || key === '') {
      throw new CorecastError('admin_key_failed', 'the admin key function returned no key');
    }
    if (this.ws !== ws) return null;
    return this.auth({ op: 'auth', admin_key: key }, ws);
  }

  /** Gets a token (calling the token function) and sends it; resolves with the ack. */
  async sendToken(ws) {
    let token;
    try {
      token = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (err) {
      throw new CorecastError('token_failed', `the token function failed: ${err && err.message}`);
    }
    if (typeof token !== 'string' || token === '') {
      throw new CorecastError('token_failed', 'the token function returned no token');
    }
    if (this.ws !== ws) return null;
    return this.auth({ op: 'auth', token }, ws);
  }

  /** One auth request, sent again after `rate_limited` (at most one auth per second). */
  async auth(msg, ws) {
    for (let tries = 0; ; tries++) {
      try {
        return await new Promise((resolve, reject) =>
          this.write({ ...msg }, { kind: 'auth', op: 'auth', resolve, reject }));
      } catch (err) {
        if (err.code !== 'rate_limited' || tries >= 3 || this.ws !== ws) throw err;
        await new Promise((resolve) => this.later(RETRY_RATE_LIMITED_MS, resolve));
        if (this.ws !== ws) throw err;
      }
    }
  }

  onReady(ws) {
    this.ready = true;
    this.connectedAt = performance.now();
    this.connections += 1;
    if (this.connectTimer !== null) {
      clearTimeout(this.connectTimer);
      this.timers.delete(this.connectTimer);
      this.connectTimer = null;
    }
    this.resubscribeAll();
    this.flushQueue();
    if (this.pingIntervalMs > 0) {
      this.pingTimer = setInterval(() => this.heartbeat(), this.pingIntervalMs);
      // The first ping goes after the resubscribes are answered: a subscribe that waits for
      // the server's dispatcher holds back the replies behind it, and would inflate it.
      if (this.resubLastId === null) this.heartbeat();
    }
    if (this.ws === ws) this.setState('connected', 'welcome');
  }

  /** An app-level ping for the latency; arms the dead-socket timer if it is not armed. */
  heartbeat() {
    if (!this.ready) return;
    this.write({ op: 'ping' }, { kind: 'ping', op: 'ping' });
    if (this.deadTimer === null && this.pongTimeoutMs > 0) {
      this.deadTimer = this.later(this.pongTimeoutMs, () => {
        this.deadTimer = null;
        this.lost(`no frame within ${this.pongTimeoutMs} ms of a ping`);
      });
    }
  }

  // ---- Requests --------------------------------------------------------------------------

  /**
   * Writes one request with the next id and remembers it until its reply. Subscribe and
   * unsubscribe ops of the task go out first, so the wire order is the call order.
   * Caller: the socket is ready (or authenticating, for `auth`).
   */
  write(frame, p) {
    if (this.outbox.length) this.flushOutbox();
    const id = this.nextId++;
    const out = { op: frame.op, id };
    for (const k in frame) if (k !== 'op' && k !== 'id') out[k] = frame[k];
    const text = JSON.stringify(out); // may throw (a BigInt, a cycle): nothing is sent then
    p.sentAt = performance.now();
    this.pending.set(id, p);
    this.ws.send(text);
    return id;
  }

  request(msg) {
    if (msg === null || typeof msg !== 'object' || typeof msg.op !== 'string') {
      return Promise.reject(new TypeError('corecast: request() takes an object with an "op" string'));
    }
    return new Promise((resolve, reject) => this.enqueue({ msg, resolve, reject, rtt: false }));
  }

  ping() {
    return new Promise((resolve, reject) =>
      this.enqueue({ msg: { op: 'ping' }, resolve, reject, rtt: true }));
  }

  enqueue(item) {
    if (this.ready) { this.sendUser(item); return; }
    this.queue.push(item);
    if (this.queue.length > this.maxQueue) {
      this.queue.shift().reject(new CorecastError('queue_full',
        `more than ${this.maxQueue} requests waiting for a connection; the oldest was dropped`));
    }
  }

  /** Writes a user request; the caller's object is copied, never changed. */
  sendUser(item) {
    try {
      this.write(item.msg, { kind: 'user', op: item.msg.op, resolve: item.resolve, reject: item.reject, rtt: item.rtt });
    } catch (err) {
      item.reject(err);
    }
  }

  flushQueue() {
    const queue = this.queue;
    this.queue = [];
    for (const item of queue) this.sendUser(item);
  }

  rejectQueue(why) {
    const queue = this.queue;
    this.queue = [];
    const err = new CorecastError('disconnected', `the client stopped: ${why}`);
    for (const item of queue) item.reject(err);
  }

  /**
   * A reply (ack, pong, or error with an id). Replies come in request order, so requests
   * sent before this one and still unanswered were dropped by the server (its inbound rate
   * limit drops a frame and says so without an id): they are settled as `rate_limited`.
   */
  onReply(frame) {
    const p = this.pending.get(frame.id);
    if (p === undefined) {
      if (frame.op === 'error') this.emit('error', detailOf(frame));
      return;
    }
    const ws = this.ws;
    for (const [id, q] of this.pending) {
      if (id === frame.id) break;
      this.pending.delete(id);
      this.settle(id, q, null, new CorecastError('rate_limited', 'no reply: the server dropped the request (inbound rate limit)'));
      if (this.ws !== ws) return; // a listener closed the client
    }
    this.pending.delete(frame.id);
    if (frame.op === 'error') this.settle(frame.id, p, null, errorOf(frame));
    else this.settle(frame.id, p, frame, null);
  }

  settle(id, p, reply, err) {
    if (reply !== null && reply.op === 'pong') {
      const ms = performance.now() - p.sentAt;
      this.latencyMs = ms;
      this.emit('latency', { ms });
      if (p.rtt) { p.resolve(ms); return; }
    }
    switch (p.kind) {
      case 'sub':
        if (err) this.onSubscribeError(p, err); else this.onSubscribeAck(p, reply);
        if (id === this.resubLastId && this.ready) {
          this.resubLastId = null;
          if (this.pingIntervalMs > 0) this.heartbeat();
        }
        return;
      case 'unsub': if (err) this.onUnsubscribeError(p, err); return;
      case 'ping': return;
      case 'auth':
        if (err) { p.reject(err); return; }
        this.emitAuth(reply);
        p.resolve(reply);
        return;
      default: // user
        if (err) { p.reject(err); return; }
        if (p.op === 'auth') this.emitAuth(reply);
        if (p.op === 'resync' && Array.isArray(reply.topics)) {
          for (const entry of reply.topics) this.onAckEntry(entry, this.subs.get(entry.topic));
        }
        p.resolve(reply);
    }
  }

  emitAuth(ack) {
    const { op, id, ...detail } = ack;
    this.emit('auth', detail);
  }

  /** A token refresh asked by the server: a token function is called and its token sent. */
  onRefresh(frame) {
    this.emit('refresh', { expires_at: frame.expires_at });
    if (typeof this.token !== 'function' || !this.ready) return;
    const ws = this.ws;
    this.sendToken(ws).catch((err) => {
      if (this.ws === ws) this.emit('error', detailOf(err));
    });
  }

  // ---- Subscriptions ---------------------------------------------------------------------

  subscribe(topic, handlers, opts) {
    if (typeof topic !== 'string' || topic === '') {
      throw new TypeError('corecast: subscribe() takes a topic or "prefix.*" pattern');
    }
    const sub = new Subscription(topic, handlers ?? {}, (s) => this.endSubscription(s));
    let e = this.subs.get(topic);
    if (e !== undefined) {
      e.handlers.add(sub);
      const ack = e.lastAck;
      if (ack !== null) { // already live: this handle joins from the current point
        queueMicrotask(() => {
          if (!sub.active || e.lastAck !== ack) return;
          acked(sub, ack);
          call(sub.handlers.onAck, ack);
        });
      }
      return sub;
    }
    const prefix = patternPrefix(topic);
    e = { name: topic, prefix, handlers: new Set([sub]), queued: false, lastAck: null };
    this.subs.set(topic, e);
    if (prefix !== null) this.patterns.set(prefix, e);
    const since = opts && opts.since;
    if (prefix === null && since && typeof since.epoch === 'string' && Number.isInteger(since.seq)) {
      const pos = this.positions.get(topic);
      this.positions.set(topic, { epoch: since.epoch, seq: since.seq,
        snapshotTopic: pos ? pos.snapshotTopic : false, awaiting: false });
    }
    if (this.ready) this.queueOp({ kind: 'sub', entry: e });
    return sub;
  }

  endSubscription(sub) {
    const e = this.subs.get(sub.topic);
    if (e === undefined || !e.handlers.delete(sub) || e.handlers.size > 0) return;
    this.removeEntry(e);
    if (!this.ready) return;
    if (e.queued) {
      e.queued = false;
      this.outbox = this.outbox.filter((op) => op.entry !== e);
    } else {
      this.queueOp({ kind: 'unsub', name: e.name });
    }
  }

  /** Takes an entry out of the registry and forgets the positions nothing tracks any more. */
  removeEntry(e) {
    this.subs.delete(e.name);
    if (e.prefix !== null) {
      this.patterns.delete(e.prefix);
      for (const t of this.positions.keys()) if (t.startsWith(`${e.prefix}.`) && !this.tracked(t)) this.positions.delete(t);
    } else if (!this.tracked(e.name)) {
      this.positions.delete(e.name);
    }
  }

  /** The registered pattern covering an exact topic, or undefined. Cost: one lookup per dot. */
  covering(topic) {
    if (this.patterns.size === 0) return undefined;
    for (let i = topic.indexOf('.'); i !== -1; i = topic.indexOf('.', i + 1)) {
      const e = this.patterns.get(topic.slice(0, i));
      if (e !== undefined) return e;
    }
    return undefined;
  }

  tracked(topic) {
    return this.subs.has(topic) || this.covering(topic) !== undefined;
  }

  queueOp(op) {
    if (op.kind === 'sub') op.entry.queued = true;
    this.outbox.push(op);
    if (!this.outboxScheduled) {
      this.outboxScheduled = true;
      queueMicrotask(() => { this.outboxScheduled = false; if (this.ready) this.flushOutbox(); });
    }
  }

  /** Sends the task's subscribe/unsubscribe ops: runs of one kind, at most 100 names a request. */
  flushOutbox() {
    const ops = this.outbox;
    this.outbox = [];
    for (let i = 0; i < ops.length;) {
      const kind = ops[i].kind;
      const run = [];
      while (i < ops.length && ops[i].kind === kind && run.length < MAX_TOPICS_PER_REQUEST) run.push(ops[i++]);
      if (kind === 'sub') {
        for (const op of run) op.entry.queued = false;
        this.sendSubscribe(run.map((op) => op.entry), true);
      } else {
        this.sendUnsubscribe(run.map((op) => op.name));
      }
    }
  }

  /** Every registered subscription on a new connection: exact topics first (resuming with
   *  `since` where a position is held), then patterns, in requests of at most 100 names. */
  resubscribeAll() {
    this.outbox = [];
    const exact = [];
    const patterns = [];
    for (const e of this.subs.values()) {
      e.queued = false;
      (e.prefix === null ? exact : patterns).push(e);
    }
    for (const list of [exact, patterns]) {
      for (let i = 0; i < list.length; i += MAX_TOPICS_PER_REQUEST) {
        this.resubLastId = this.sendSubscribe(list.slice(i, i + MAX_TOPICS_PER_REQUEST), false);
      }
    }
  }

  /**
   * One subscribe request. An exact topic whose position is known (and not waiting for a
   * snapshot) resumes with `since`, unless `live` and a registered pattern delivers it (the
   * server refuses that resume; at resubscribeAll the patterns follow the exact topics).
   */
  sendSubscribe(entries, live, plain = false) {
    if (!this.ready || entries.length === 0) return null;
    const sent = new Map();
    const topics = entries.map((e) => {
      const pos = e.prefix === null && !plain ? this.positions.get(e.name) : undefined;
      const resume = pos !== undefined && pos.epoch !== null && pos.seq !== null && !pos.awaiting
        && !(live && this.covering(e.name) !== undefined);
      sent.set(e.name, { entry: e, since: resume });
      return resume ? { topic: e.name, since: { epoch: pos.epoch, seq: pos.seq } } : e.name;
    });
    return this.write({ op: 'subscribe', topics }, { kind: 'sub', op: 'subscribe', sent });
  }

  sendUnsubscribe(names) {
    if (!this.ready || names.length === 0) return;
    this.write({ op: 'unsubscribe', topics: names }, { kind: 'unsub', op: 'unsubscribe', names });
  }

  onSubscribeAck(p, ack) {
    for (const entry of Array.isArray(ack.topics) ? ack.topics : []) {
      const s = p.sent.get(entry.topic);
      const e = s && this.subs.get(entry.topic);
      if (e === undefined || e !== s.entry) continue; // unsubscribed meanwhile
      this.onAckEntry(entry, e);
    }
  }

  /** Applies an ack entry to the topic's position, then tells the handles and listeners. */
  onAckEntry(entry, e) {
    if (typeof entry.epoch !== 'string') {
      // A pattern: the first msg of each topic it delivers starts the count again.
      const prefix = patternPrefix(entry.topic);
      if (prefix !== null) {
        for (const t of this.positions.keys()) if (t.startsWith(`${prefix}.`) && !this.subs.has(t)) this.positions.delete(t);
      }
    } else {
      const old = this.positions.get(entry.topic);
      const snapshotTopic = entry.start === 'snapshot' || (old ? old.snapshotTopic : false);
      this.positions.set(entry.topic, entry.start === 'snapshot'
        ? { epoch: entry.epoch, seq: null, snapshotTopic: true, awaiting: true }
        : { epoch: entry.epoch, seq: entry.seq, snapshotTopic, awaiting: false });
    }
    if (e !== undefined) {
      e.lastAck = entry;
      for (const sub of e.handlers) { acked(sub, entry); call(sub.handlers.onAck, entry); }
    }
    this.emit('subscribed', entry);
  }

  /**
   * A subscribe refused. A request is all or nothing, so a batch is split in halves until
   * the names refused stand alone (about 2·log2(n) requests for one bad name in n, gentle on
   * the server's inbound rate limit); a resume refused alone is sent again without `since`;
   * a name refused alone is taken out of the registry and its handles' `ready` rejects.
   */
  onSubscribeError(p, err) {
    const live = [...p.sent.values()].filter((s) => this.subs.get(s.entry.name) === s.entry);
    if (live.length === 0) return;
    if (err.code === 'rate_limited') {
      this.later(RETRY_RATE_LIMITED_MS, () => this.sendSubscribe(live.map((s) => s.entry), true));
      return;
    }
    if (err.code === 'auth_required') {
      this.emit('error', detailOf(err));
      return;
    }
    if (live.length > 1) {
      const half = Math.ceil(live.length / 2);
      this.sendSubscribe(live.slice(0, half).map((s) => s.entry), true);
      this.sendSubscribe(live.slice(half).map((s) => s.entry), true);
      return;
    }
    const { entry: e, since } = live[0];
    if (since && err.code === 'bad_request') {
      this.sendSubscribe([e], true, true);
      return;
    }
    this.removeEntry(e);
    const refused = new CorecastError(err.code, err.message, err.reason, e.name);
    for (const sub of e.handlers) finish(sub, refused);
    this.emit('error', detailOf(err, e.name));
  }

  /** An unsubscribe refused (all or nothing): the names still to unsubscribe are sent again
   *  in halves, so that only a name the server does not hold (`not_subscribed`) is left out. */
  onUnsubscribeError(p, err) {
    const names = p.names.filter((n) => !this.subs.has(n));
    if (err.code === 'rate_limited') {
      this.later(RETRY_RATE_LIMITED_MS, () => this.sendUnsubscribe(names));
    } else if (names.length > 1) {
      const half = Math.ceil(names.length / 2);
      this.sendUnsubscribe(names.slice(0, half));
      this.sendUnsubscribe(names.slice(half));
    }
  }

  /** The server ended a subscription (a refreshed token no longer allows it). */
  onUnsubscribed(frame) {
    const e = this.subs.get(frame.topic);
    if (e !== undefined) {
      this.removeEntry(e);
      const err = new CorecastError('unsubscribed', `the server ended ${frame.topic}: ${frame.reason}`, frame.reason, frame.topic);
      for (const sub of e.handlers) finish(sub, err);
    }
    this.emit('unsubscribed', { topic: frame.topic, reason: frame.reason });
  }

  position(topic) {
    const pos = this.positions.get(topic);
    // A snapshot topic waiting for its snapshot holds nothing a resume could continue.
    if (pos === undefined || pos.epoch === null || pos.seq === null || pos.awaiting) return null;
    return { epoch: pos.epoch, seq: pos.seq };
  }

  // ---- Frames in -------------------------------------------------------------------------

  /** One frame of the current socket. Hot path: msg first; no allocation beyond the parse. */
  onFrame(data) {
    if (this.deadTimer !== null) {
      clearTimeout(this.deadTimer);
      this.timers.delete(this.deadTimer);
      this.deadTimer = null;
    }
    if (typeof data !== 'string') {
      try { data = new TextDecoder().decode(data); } catch (_) { return; }
    }
    let m;
    try {
      m = JSON.parse(data);
    } catch (_) {
      this.emit('error', { code: 'invalid_json', message: 'the server sent a frame that is not JSON' });
      return;
    }
    if (m === null || typeof m !== 'object') return;
    switch (m.op) {
      case 'msg': this.onMsg(m); break;
      case 'snapshot': this.onSnapshot(m); break;
      case 'gap': this.onGap(m); break;
      case 'ack': case 'pong': if (m.id != null) this.onReply(m); break;
      case 'error':
        if (m.id != null) this.onReply(m);
        else this.emit('error', detailOf(m));
        break;
      case 'welcome': this.onWelcome(m); break;
      case 'refresh': this.onRefresh(m); break;
      case 'unsubscribed': this.onUnsubscribed(m); break;
      default: break; // unknown ops are ignored: the protocol may add some
    }
  }

  onMsg(m) {
    this.count();
    const pos = this.positions.get(m.topic);
    if (pos === undefined) {
      this.positions.set(m.topic, { epoch: null, seq: m.seq, snapshotTopic: false, awaiting: false });
    } else {
      if (pos.seq !== null && m.seq !== pos.seq + 1) {
        this.gap({ op: 'gap', topic: m.topic, from: pos.seq + 1, to: m.seq - 1, reason: 'client_detected' }, pos);
      }
      pos.seq = m.seq;
    }
    this.deliver(m.topic, 'onMessage', m);
    this.emit('message', m);
  }

  onSnapshot(s) {
    this.count();
    const pos = this.positions.get(s.topic);
    const epoch = typeof s.epoch === 'string' ? s.epoch : (pos ? pos.epoch : null);
    this.positions.set(s.topic, { epoch, seq: s.seq, snapshotTopic: true, awaiting: false });
    this.deliver(s.topic, 'onSnapshot', s);
    this.emit('snapshot', s);
  }

  onGap(g) {
    const pos = this.positions.get(g.topic);
    if (pos !== undefined && (pos.seq === null || g.to > pos.seq)) pos.seq = g.to;
    this.gap(g, pos);
  }

  /** After a gap a snapshot topic's next resume is a plain subscribe: deltas after a hole
   *  cannot be applied, so the client waits for a snapshot. */
  gap(g, pos) {
    if (pos !== undefined && pos.snapshotTopic) pos.awaiting = true;
    this.deliver(g.topic, 'onGap', g);
    this.emit('gap', g);
  }

  /** Calls the handles of the exact topic, then those of each pattern covering it. */
  deliver(topic, key, frame) {
    const e = this.subs.get(topic);
    if (e !== undefined) for (const sub of e.handlers) call(sub.handlers[key], frame);
    if (this.patterns.size === 0) return;
    for (let i = topic.indexOf('.'); i !== -1; i = topic.indexOf('.', i + 1)) {
      const p = this.patterns.get(topic.slice(0, i));
      if (p !== undefined) for (const sub of p.handlers) call(sub.handlers[key], frame);
    }
  }

  // ---- Stats -----------------------------------------------------------------------------

  count() {
    this.received += 1;
    this.lastMessageAt = Date.now();
    const b = Math.floor(performance.now() / RATE_BUCKET_MS);
    const i = b % RATE_BUCKETS;
    if (this.bucketIds[i] !== b) { this.bucketIds[i] = b; this.buckets[i] = 0; }
    this.buckets[i] += 1;
  }

  /** msg and snapshot frames per second over the last 5 s (less while the client is younger). */
  rate() {
    const t = performance.now();
    const b = Math.floor(t / RATE_BUCKET_MS);
    let sum = 0;
    for (let i = 0; i < RATE_BUCKETS; i++) if (this.bucketIds[i] > b - RATE_BUCKETS) sum += this.buckets[i];
    const from = Math.max((b - RATE_BUCKETS + 1) * RATE_BUCKET_MS, this.rateSince);
    return (sum * 1000) / Math.max(t - from, RATE_BUCKET_MS);
  }

  stats() {
    return {
      latencyMs: this.latencyMs,
      msgsPerSec: this.rate(),
      received: this.received,
      reconnects: Math.max(0, this.connections - 1),
      lastMessageAt: this.lastMessageAt,
      conn: this.conn,
      attempt: this.shownAttempt(),
    };
  }
}

/** Corecast -> Session. */
const sessions = new WeakMap();

/**
 * The corecast client: one WebSocket to the server, kept open, with subscriptions that
 * survive reconnects and resume where they left off.
 *
 * Events (CustomEvent, payload in `detail`): `state`, `welcome`, `subscribed`, `message`,
 * `snapshot`, `gap`, `unsubscribed`, `error`, `latency`, `refresh`, `auth` (docs/clients.md).
 * Listener exceptions never disturb the client.
 */
export class Corecast extends EventTarget {
  /**
   * @param {string} url the server's WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`
   * @param {object} [options] see `Options` in corecast.d.ts; every field is optional
   * @throws {TypeError} when no WebSocket implementation is available
   *
   * With `autoConnect` (default true) the connect runs in a microtask, so listeners added
   * right after the constructor see every state change from `connecting` on.
   */
  constructor(url, options = {}) {
    super();
    const s = new Session(this, url, options ?? {});
    sessions.set(this, s);
    if (options?.autoConnect ?? true) {
      s.autoPending = true;
      queueMicrotask(() => { if (s.autoPending) s.connect(); });
    }
  }

  /** The server's WebSocket URL. */
  get url() { return sessions.get(this).url; }

  /** `disconnected` | `connecting` | `connected` | `reconnecting` | `error`. */
  get state() { return sessions.get(this).state; }

  /**
   * A fresh snapshot of the connection's figures:
   * `latencyMs` (last ping round trip, ms, null before the first), `msgsPerSec` (msg and
   * snapshot frames per second over a sliding 5 s window), `received` (msg and snapshot frames
   * since construction), `reconnects` (connections established after the first),
   * `lastMessageAt` (Date.now() of the last msg or snapshot, or null), `conn` (the server's
   * connection id, null when not connected), `attempt` (consecutive failed attempts being
   * retried; 0 when connected).
   */
  get stats() { return sessions.get(this).stats(); }

  /** Connects if not connected or trying already (idempotent). From `error`, starts over
   *  (the token function is called again). */
  connect() { sessions.get(this).connect(); }

  /** Closes the socket and stops: state `disconnected`, every timer cleared, requests in
   *  flight and queued rejected with `disconnected`. Subscriptions stay registered and are
   *  sent again on the next connect(). */
  close() { sessions.get(this).close(); }

  /** Drops the socket and connects now, with the backoff reset (also from `error`). */
  reconnect() { sessions.get(this).reconnect(); }

  /**
   * Subscribes to a topic or a `prefix.*` pattern. The subscription is registered at once
   * and sent when connected (subscribe() calls of one task go in one request of at most 100
   * names); after a reconnect it is sent again, an exact topic resuming from its position.
   * Several subscribe() calls of one topic share one subscription on the wire; a later one
   * joins from the current point (its `ready` resolves with the last ack entry).
   *
   * @param {string} topic a topic (`book.BTCUSD`) or pattern (`trades.*`)
   * @param {{onMessage?: Function, onSnapshot?: Function, onGap?: Function, onAck?: Function}} [handlers]
   *   called for this subscription's frames (a pattern's: every topic it covers)
   * @param {{since?: {epoch: string, seq: number}}} [opts] `since`: the position the caller
   *   already holds (e.g. kept across a page load); the first subscribe resumes after it
   * @returns {Subscription} `{topic, active, ready, unsubscribe()}`
   * @throws {TypeError} when topic is not a non-empty string
   */
  subscribe(topic, handlers, opts) { return sessions.get(this).subscribe(topic, handlers, opts); }

  /**
   * Sends one request (an object with `op`); the client assigns `id`. Resolves with the
   * reply (`ack` or `pong` frame); rejects with CorecastError on an `error` reply, when the
   * connection drops before the reply (`disconnected`), or when pushed out of the offline
   * queue (`queue_full`). While not connected, the request waits in the queue (maxQueue).
   * Use subscribe() for subscriptions: a subscribe sent here is not kept across reconnects.
   * @param {object} msg e.g. `{op: "resync", topic: "book.BTCUSD"}`
   * @returns {Promise<object>}
   */
  request(msg) { return sessions.get(this).request(msg); }

  /** Round trip of an app-level ping, in ms (queued like request() while offline).
   *  @returns {Promise<number>} */
  ping() { return sessions.get(this).ping(); }

  /**
   * The last position held for an exact topic: `{epoch, seq}` of the last msg or snapshot
   * (or the ack, or a gap's `to`), or null when none is known (nothing yet, a snapshot topic
   * waiting for its snapshot after a subscribe or a gap, or the epoch is unknown for a topic
   * only a pattern delivers).
   * @param {string} topic
   * @returns {{epoch: string, seq: number} | null}
   */
  position(topic) { return sessions.get(this).position(topic); }
}

export { CorecastStatus } from './corecast-status.js';
