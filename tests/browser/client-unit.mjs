// The JavaScript client's logic against a scripted server (a fake WebSocket), in node: what a
// real server rarely or never does on cue. Run by tests/browser.rs beside the chromium tests
// (needs node only). Each case builds a client with `WebSocket: Fake`, plays the server's
// frames, and checks the requests the client sent and what it told the application.

import assert from 'node:assert/strict';
import { Corecast, CorecastError } from '../../clients/js/corecast.js';

/** A WebSocket whose server side the test plays: `frames` the client sent, `serve()` a frame. */
class Fake {
  static sockets = [];
  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.frames = [];
    this.closed = null;
    Fake.sockets.push(this);
  }
  send(text) { this.frames.push(JSON.parse(text)); }
  close(code) { this.closed = code ?? 1005; this.readyState = 3; }
  serve(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '' }); }
  last(op) { return this.frames.filter((f) => f.op === op).at(-1); }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
const EPOCH = '9f3c2a7d41e0b5c8';
const welcome = { op: 'welcome', conn: '0-1', heartbeat_ms: 15000, timeout_ms: 45000, max_message_bytes: 65536 };

/** A connected client (welcome served) and its socket. */
async function connected(options = {}) {
  Fake.sockets = [];
  const c = new Corecast('ws://test/ws', { WebSocket: Fake, pingIntervalMs: 0, ...options });
  await tick();
  const ws = Fake.sockets.at(-1);
  ws.serve(welcome);
  await tick();
  assert.equal(c.state, 'connected');
  return { c, ws };
}

/** Records every event of `types` the client emits, in order. */
function record(c, types) {
  const seen = [];
  for (const t of types) c.addEventListener(t, (e) => seen.push({ type: t, ...e.detail }));
  return seen;
}

const cases = {
  async 'a seq jump without a notice is a client_detected gap, then accepted'() {
    const { c, ws } = await connected();
    const seen = record(c, ['gap', 'message']);
    c.subscribe('trades.X');
    await tick();
    const sub = ws.last('subscribe');
    ws.serve({ op: 'ack', id: sub.id, topics: [{ topic: 'trades.X', seq: 10, epoch: EPOCH, start: 'next' }] });
    ws.serve({ op: 'msg', topic: 'trades.X', seq: 11, ts: 1, data: {} });
    ws.serve({ op: 'msg', topic: 'trades.X', seq: 14, ts: 1, data: {} });
    ws.serve({ op: 'msg', topic: 'trades.X', seq: 15, ts: 1, data: {} });
    const gaps = seen.filter((e) => e.type === 'gap');
    assert.deepEqual(gaps.map((g) => [g.from, g.to, g.reason]), [[12, 13, 'client_detected']]);
    assert.equal(seen.filter((e) => e.type === 'message').length, 3);
    assert.deepEqual(c.position('trades.X'), { epoch: EPOCH, seq: 15 });
    c.close();
  },

  async 'a reconnect resumes exact topics with since and patterns plainly, exact ones first'() {
    const { c, ws } = await connected({ backoff: { initialMs: 1, maxMs: 1 } });
    c.subscribe('ticker.*');
    c.subscribe('book.X');
    await tick();
    const sub = ws.last('subscribe');
    ws.serve({ op: 'ack', id: sub.id, topics: [{ topic: 'ticker.*', seq: null }, { topic: 'book.X', seq: 40, epoch: EPOCH, start: 'next' }] });
    ws.serve({ op: 'msg', topic: 'book.X', seq: 41, ts: 1, data: {} });
    ws.serve({ op: 'msg', topic: 'ticker.A', seq: 7, ts: 1, data: {} });
    ws.drop(1006);
    assert.equal(c.state, 'reconnecting');
    await tick(20);
    const next = Fake.sockets.at(-1);
    assert.notEqual(next, ws, 'a new socket');
    next.serve(welcome);
    await tick();
    const resub = next.frames.filter((f) => f.op === 'subscribe').flatMap((f) => f.topics);
    assert.deepEqual(resub, [{ topic: 'book.X', since: { epoch: EPOCH, seq: 41 } }, 'ticker.*'],
      'the exact topic resumes from what it holds; the pattern (and what only it delivered) does not');
    c.close();
  },

  async 'a gap on a snapshot topic leaves no position to resume from until the next snapshot'() {
    const { c, ws } = await connected();
    c.subscribe('book.X');
    await tick();
    ws.serve({ op: 'ack', id: ws.last('subscribe').id, topics: [{ topic: 'book.X', seq: 5, epoch: EPOCH, start: 'snapshot' }] });
    ws.serve({ op: 'snapshot', topic: 'book.X', seq: 5, epoch: EPOCH, ts: 1, data: {} });
    ws.serve({ op: 'msg', topic: 'book.X', seq: 6, ts: 1, data: {} });
    assert.deepEqual(c.position('book.X'), { epoch: EPOCH, seq: 6 });
    ws.serve({ op: 'gap', topic: 'book.X', from: 7, to: 9, reason: 'slow_consumer' });
    assert.equal(c.position('book.X'), null, 'waiting for a snapshot');
    ws.serve({ op: 'snapshot', topic: 'book.X', seq: 12, epoch: EPOCH, ts: 1, data: {} });
    assert.deepEqual(c.position('book.X'), { epoch: EPOCH, seq: 12 });
    c.close();
  },

  async 'requests made offline wait in a bounded queue; the oldest is refused with queue_full'() {
    Fake.sockets = [];
    const c = new Corecast('ws://test/ws', { WebSocket: Fake, pingIntervalMs: 0, maxQueue: 2, autoConnect: false });
    const outcomes = [1, 2, 3].map((n) => c.request({ op: 'ping', n }).then((r) => r.op, (e) => e.code));
    c.connect();
    await tick();
    const ws = Fake.sockets.at(-1);
    ws.serve(welcome);
    await tick();
    const pings = ws.frames.filter((f) => f.op === 'ping');
    assert.deepEqual(pings.map((p) => p.n), [2, 3], 'the two newest went out, in order');
    for (const p of pings) ws.serve({ op: 'pong', id: p.id });
    assert.deepEqual(await Promise.all(outcomes), ['queue_full', 'pong', 'pong']);
    c.close();
  },

  async 'an error reply rejects its request with a CorecastError; later replies still match'() {
    const { c, ws } = await connected();
    const bad = c.request({ op: 'resync', topic: 'trades.X' });
    const good = c.ping();
    await tick();
    const [r1, r2] = ws.frames.slice(-2);
    ws.serve({ op: 'error', id: r1.id, code: 'not_subscribed', message: 'no' });
    ws.serve({ op: 'pong', id: r2.id });
    await assert.rejects(bad, (e) => e instanceof CorecastError && e.code === 'not_subscribed');
    assert.equal(typeof (await good), 'number');
    c.close();
  },

  async 'backoff is full jitter under the cap, and 4003 stops in error without a retry'() {
    const { c, ws } = await connected({ backoff: { initialMs: 50, maxMs: 50 } });
    const states = record(c, ['state']);
    const before = Fake.sockets.length;
    ws.drop(1006);
    assert.equal(c.state, 'reconnecting');
    await tick(80);
    assert.equal(Fake.sockets.length, before + 1, 'one new socket within the 50 ms cap');
    Fake.sockets.at(-1).drop(4003);
    await tick(120);
    assert.equal(c.state, 'error');
    assert.equal(Fake.sockets.length, before + 1, 'no retry after 4003');
    assert.deepEqual(states.map((s) => s.state), ['reconnecting', 'error']);
    c.close();
  },

  async 'an adminKey function is called at each connect; a refused key stops in error'() {
    let asked = 0;
    Fake.sockets = [];
    const c = new Corecast('ws://test/ws', {
      WebSocket: Fake, pingIntervalMs: 0, adminKey: () => `k${++asked}`, backoff: { initialMs: 1, maxMs: 1 },
    });
    await tick();
    const ws = Fake.sockets.at(-1);
    ws.serve(welcome);
    await tick();
    assert.equal(c.state, 'connecting', 'not ready before the key is acked');
    const first = ws.last('auth');
    assert.equal(first.admin_key, 'k1');
    ws.serve({ op: 'ack', id: first.id, admin: true });
    await tick();
    assert.equal(c.state, 'connected');
    ws.drop(1001);
    await tick(20);
    const next = Fake.sockets.at(-1);
    next.serve(welcome);
    await tick();
    const second = next.last('auth');
    assert.equal(second.admin_key, 'k2', 'asked again for the new socket');
    next.serve({ op: 'error', id: second.id, code: 'unauthorized', reason: 'bad_admin_key', message: 'wrong admin key' });
    await tick(20);
    assert.equal(c.state, 'error');
    assert.equal(Fake.sockets.length, 2, 'no retry with a refused key');
    c.close();
  },

  async 'the token function answers every refresh on the same socket'() {
    let minted = 0;
    Fake.sockets = [];
    const c = new Corecast('ws://test/ws', { WebSocket: Fake, pingIntervalMs: 0, token: () => `t${++minted}` });
    await tick();
    const ws = Fake.sockets.at(-1);
    ws.serve(welcome);
    await tick();
    const first = ws.last('auth');
    assert.equal(first.token, 't1');
    ws.serve({ op: 'ack', id: first.id, sub: 'alice', expires_at: 100 });
    await tick();
    assert.equal(c.state, 'connected');
    ws.serve({ op: 'refresh', expires_at: 100 });
    await tick();
    assert.equal(ws.last('auth').token, 't2');
    assert.equal(Fake.sockets.length, 1, 'no new socket for a refresh');
    c.close();
  },
};

let failed = 0;
for (const [name, run] of Object.entries(cases)) {
  try {
    await run();
    console.log(`[client-unit] ok: ${name}`);
  } catch (e) {
    failed += 1;
    console.error(`[client-unit] FAILED: ${name}\n${e.stack ?? e}`);
  }
}
console.log(failed ? `[client-unit] ${failed} failed` : '[client-unit] all passed');
process.exit(failed ? 1 : 0);
