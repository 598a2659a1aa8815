// Browser tests of the JavaScript client, <corecast-status> and the dashboard, in Debian's
// chromium driven by playwright-core. Run by tests/browser.rs (`cargo test`), which passes the
// server binary in CORECAST_BIN and where to put screenshots in SCREENSHOTS.
//
// The test owns everything between the browser and the server: a TCP proxy in front of the
// client port (a browser's offline switch leaves open WebSockets alone) that can pass, cut
// (close every connection and refuse new ones) or hold (accept and forward nothing); a TCP
// publisher; and restarts of the server on the same ports. Everything is on 127.0.0.1, and
// every wait is bounded.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.CORECAST_BIN;
const SHOTS = process.env.SCREENSHOTS ?? path.join(here, '..', '..', 'target', 'browser-screenshots');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
if (!BIN) throw new Error('CORECAST_BIN must name the corecast binary');
mkdirSync(SHOTS, { recursive: true });

const deadline = setTimeout(() => {
  console.error('browser tests: over their 240 s budget');
  process.exit(2);
}, 240_000);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log('[browser]', ...a);

/** Polls `check` (async, truthy when done) every 50 ms for at most `ms`; throws with `what`. */
async function until(what, check, ms = 15_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await check();
    if (last) return last;
    await sleep(50);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

function assert(ok, message) {
  if (!ok) throw new Error(`assertion failed: ${message}`);
}

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// ---------------------------------------------------------------------------------------------
// The server, on fixed ports so a restart comes back where the proxy and publisher look.

const SECRET = 'browser-tests-secret-0123456789abcdef';
const dir = mkdtempSync(path.join(os.tmpdir(), 'corecast-browser-'));
const ports = { client: await freePort(), ingest: await freePort(), admin: await freePort() };
const config = path.join(dir, 'corecast.toml');
writeFileSync(config, `
[server]
listen = "127.0.0.1:${ports.client}"
ingest = "127.0.0.1:${ports.ingest}"
admin = "127.0.0.1:${ports.admin}"
shards = 1
pin_cores = false

[dispatcher]
summary_interval_ms = 0

[shard]
report_interval_ms = 500

[auth]
hmac_secret = "${SECRET}"
anonymous_topics = ["*"]

[[namespaces]]
prefix = "book."
snapshots = true
`);

let server = null;
let serverLog = '';

async function startServer() {
  serverLog = '';
  const child = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', (d) => { serverLog += d; });
  await until('the server to start', () => /admin on http/.test(serverLog) || child.exitCode !== null, 20_000);
  if (child.exitCode !== null) throw new Error(`corecast exited at start:\n${serverLog}`);
  server = child;
}

async function stopServer() {
  const child = server;
  server = null;
  child.kill('SIGTERM');
  await until('the server to stop', () => child.exitCode !== null || child.signalCode !== null, 15_000);
}

async function adminJson(p) {
  const r = await fetch(`http://127.0.0.1:${ports.admin}${p}`);
  return r.json();
}

// ---------------------------------------------------------------------------------------------
// The proxy between the browser and the client port.

const proxy = { mode: 'pass', pairs: new Set(), accepted: 0 };
const proxyServer = net.createServer((down) => {
  proxy.accepted += 1;
  if (proxy.mode === 'cut') return down.destroy();
  const pair = { down, up: null };
  proxy.pairs.add(pair);
  down.on('error', () => {});
  down.on('close', () => { pair.up?.destroy(); proxy.pairs.delete(pair); });
  if (proxy.mode === 'hold') { down.pause(); return; }
  const up = net.connect(ports.client, '127.0.0.1');
  pair.up = up;
  up.on('error', () => down.destroy());
  up.on('close', () => down.destroy());
  down.pipe(up);
  up.pipe(down);
});
await new Promise((r) => proxyServer.listen(0, '127.0.0.1', r));
const proxyPort = proxyServer.address().port;
/**
 * Stops forwarding on every open connection without closing it (a dead network path: no FIN,
 * no RST); new connections pass.
 */
function freezeAll() {
  for (const p of proxy.pairs) {
    p.down.unpipe(p.up); p.up?.unpipe(p.down);
    p.down.pause(); p.up?.pause();
  }
  proxy.pairs.clear();
}

/** Closes every connection through the proxy at once, and refuses new ones while `mode` says. */
function cutAll(mode) {
  proxy.mode = mode;
  for (const p of proxy.pairs) { p.down.destroy(); p.up?.destroy(); }
  proxy.pairs.clear();
}

// ---------------------------------------------------------------------------------------------
// The publisher: a tick every 10 ms on a stream topic; a book (snapshot topic) with a snapshot
// at each connect and on request, and a delta every 50 ms. Reconnects while it runs.

const publisher = { running: true, ticking: true, sock: null, lines: 0, connects: 0 };
function publisherLoop() {
  if (!publisher.running) return;
  const sock = net.connect(ports.ingest, '127.0.0.1');
  let timer = null;
  sock.on('connect', () => {
    publisher.sock = sock;
    publisher.connects += 1;
    let n = 0;
    const snapshot = () => sock.write(`{"topic":"book.test","data":{"bids":[[100,${n}]],"asks":[[101,1]]},"snapshot":true}\n`);
    snapshot();
    let buf = '';
    sock.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (line.op === 'snapshot_request') snapshot();
        else if (line.op === 'error') console.error('[publisher] error line', line);
      }
    });
    timer = setInterval(() => {
      n += 1;
      if (publisher.ticking) sock.write(`{"topic":"ticks.test","data":{"n":${n}}}\n`);
      if (n % 5 === 0) sock.write(`{"topic":"book.test","data":{"bids":[[100,${n}]]}}\n`);
    }, 10);
  });
  const again = () => {
    clearInterval(timer);
    if (publisher.sock === sock) publisher.sock = null;
    if (publisher.running) setTimeout(publisherLoop, 100);
  };
  sock.on('error', () => {});
  sock.on('close', again);
}

// ---------------------------------------------------------------------------------------------
// The test page's own origin (the client module comes from the admin port, cross-origin).

const pageHtml = readFileSync(path.join(here, 'page.html'));
const pages = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(pageHtml);
});
await new Promise((r) => pages.listen(0, '127.0.0.1', r));
const pageUrl = `http://127.0.0.1:${pages.address().port}/?` + new URLSearchParams({
  client: `http://127.0.0.1:${ports.admin}/corecast.js`,
  ws: `ws://127.0.0.1:${proxyPort}/ws`,
});

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const consoleErrors = [];
async function newPage(width, height) {
  const page = await browser.newPage({ viewport: { width, height }, deviceScaleFactor: 1 });
  page.on('pageerror', (e) => consoleErrors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`${page.url()}: ${m.text()}`); });
  return page;
}

async function dashboard() {
  log('dashboard: figures move while a publisher runs');
  const page = await newPage(1440, 900);
  await page.goto(`http://127.0.0.1:${ports.admin}/`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 15_000 });
  const value = (id) => page.$eval(id, (e) => Number(e.dataset.value));
  const first = await until('msgs/s in and out above zero on the dashboard', async () => {
    const v = { samples: await value('#samples'), in: await value('#fig-msgs-in'), out: await value('#fig-msgs-out'),
      conns: await value('#fig-connections'), topics: await value('#fig-topics') };
    return v.in > 50 && v.out > 50 && v.conns >= 2 ? v : null;
  });
  assert(first.topics === 2, `two topics published (the reserved one left out): ${JSON.stringify(first)}`);
  await until('the busiest topics table to name the stream', () =>
    page.$('#busiest tbody tr[data-topic="ticks.test"]'));
  await until('a p99 latency', async () => (await value('#fig-p99')) > 0);
  const later = await until('more samples', async () => ((await value('#samples')) >= first.samples + 2 ? value('#samples') : null));
  log(`dashboard: ${JSON.stringify(first)}, samples ${first.samples} -> ${later}`);
  // Let the charts fill a little before the picture.
  await sleep(6_000);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-1440x900.png') });
  await page.setViewportSize({ width: 1366, height: 768 });
  await sleep(1_500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(overflow <= 0, `no horizontal scrolling at 1366 px (over by ${overflow})`);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-1366x768.png') });
  return page;
}

async function statusShot(page, name) {
  await sleep(300); // the element refreshes at 4 Hz
  await page.locator('#shots').screenshot({ path: path.join(SHOTS, `status-${name}.png`) });
}

async function stateOf(page, id = 'card') {
  return page.$eval(`#${id}`, (e) => e.getAttribute('state'));
}

async function clientConnects() {
  log('client: disconnected, connecting, connected');
  const page = await newPage(900, 420);
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.pageReady === true, null, { timeout: 15_000 });
  const tally = () => page.evaluate(() => JSON.parse(JSON.stringify(window.tally)));

  assert((await stateOf(page)) === 'disconnected', 'a client not yet connected shows disconnected');
  await statusShot(page, 'disconnected');

  // Connecting: the proxy accepts and forwards nothing.
  proxy.mode = 'hold';
  await page.evaluate(() => window.client.connect());
  await until('connecting', async () => (await stateOf(page)) === 'connecting');
  await statusShot(page, 'connecting');
  cutAll('pass');

  await until('connected, and ticks flowing', async () =>
    (await stateOf(page)) === 'connected' && (await tally()).ticks.received > 50, 20_000);
  await until('the book snapshot', async () => (await tally()).book.snapshots >= 1);
  await statusShot(page, 'connected');
  return page;
}

async function clientRecovers(page) {
  log('client: a cut with the server up, a restart, a refused token');
  const tally = () => page.evaluate(() => JSON.parse(JSON.stringify(window.tally)));

  // The cut, with the server up: the client reconnects by itself and resumes.
  const before = await tally();
  cutAll('cut');
  await until('reconnecting', async () => (await stateOf(page)) === 'reconnecting');
  // A request made while offline waits in the client's queue and is answered after.
  await page.evaluate(() => { window.queued = window.client.request({ op: 'ping' }).then((r) => r.op, (e) => `rejected ${e.code}`); });
  await sleep(1_000); // ~100 ticks published meanwhile, which the page must still get
  await statusShot(page, 'reconnecting');
  const reconnectsBefore = await page.evaluate(() => window.client.stats.reconnects);
  cutAll('pass');
  const resumed = await until('both topics resumed with recovered: true', async () => {
    const t = await tally();
    const recovered = t.acks.slice(before.acks.length).filter((a) => a.recovered === true).map((a) => a.topic);
    return recovered.includes('ticks.test') && recovered.includes('book.test') ? t : null;
  });
  assert(resumed.acks.slice(before.acks.length).every((a) => a.recovered === true),
    `every resume after the cut recovered: ${JSON.stringify(resumed.acks)}`);
  assert((await page.evaluate(() => window.client.stats.reconnects)) > reconnectsBefore, 'the reconnect was counted');
  assert((await page.evaluate(() => window.queued)) === 'pong', 'the request queued while offline was answered');

  // A dead path (no FIN, no RST): the client's heartbeat finds it (pongTimeoutMs 3 s) and
  // resumes the same way.
  const frozenAt = (await tally()).acks.length;
  assert(proxy.pairs.size === 1, `one connection to freeze: ${proxy.pairs.size}`);
  freezeAll();
  const frozeAt = Date.now();
  await until('the dead socket noticed', async () => (await stateOf(page)) !== 'connected', 15_000);
  log(`client: a dead path noticed in ${Date.now() - frozeAt} ms (pongTimeoutMs 3000, pings every 500)`);
  await until('both topics resumed after the dead path', async () => {
    const t = await tally();
    const recovered = t.acks.slice(frozenAt).filter((a) => a.recovered === true).map((a) => a.topic);
    return recovered.includes('ticks.test') && recovered.includes('book.test');
  });

  // No message lost: stop ticking, and the page's tally must end at the server's seq (as
  // /topics reports it: rows taken at each shard report, so polled until they agree).
  publisher.ticking = false;
  let head = null;
  const settled = await until('the page and the server to agree on the last tick', async () => {
    head = (await adminJson('/topics?prefix=ticks.')).topics.find((t) => t.topic === 'ticks.test');
    const t = await tally();
    return head && t.ticks.last === head.seq ? t : null;
  });
  assert(settled.ticks.holes.length === 0, `no holes: ${JSON.stringify(settled.ticks.holes)}`);
  assert(settled.gaps.length === 0, `no gap notices: ${JSON.stringify(settled.gaps)}`);
  assert(settled.ticks.received === head.seq - settled.ticks.first + 1,
    `every tick from the first to ${head.seq} received once: ${JSON.stringify(settled.ticks)}`);
  assert(settled.book.rejected === 0, 'no delta arrived without its snapshot');
  log(`client: cut survived, ${settled.ticks.received} ticks, last ${head.seq}, none lost`);
  publisher.ticking = true;

  // A restart: a new epoch, so nothing can be resumed; the book takes the snapshot path.
  const snapshotsBefore = settled.book.snapshots;
  const acksBefore = settled.acks.length;
  await stopServer();
  await until('reconnecting after the server went away', async () => (await stateOf(page)) === 'reconnecting');
  await startServer();
  const after = await until('both topics answered recovered: false', async () => {
    const t = await tally();
    const fresh = t.acks.slice(acksBefore).filter((a) => a.recovered === false).map((a) => a.topic);
    return fresh.includes('ticks.test') && fresh.includes('book.test') ? t : null;
  }, 20_000);
  const bookAck = after.acks.slice(acksBefore).find((a) => a.topic === 'book.test');
  assert(bookAck.start === 'snapshot', `the book starts from a snapshot: ${JSON.stringify(bookAck)}`);
  const healed = await until('a new snapshot applied, then deltas', async () => {
    const t = await tally();
    return t.book.snapshots > snapshotsBefore && t.book.appliedSince !== null && t.book.deltas > settled.book.deltas ? t : null;
  });
  assert(healed.book.rejected === 0, `no delta applied without its snapshot: ${JSON.stringify(healed.book)}`);
  assert((await stateOf(page)) === 'connected', 'connected again');
  await statusShot(page, 'restarted');
  log(`client: restart surfaced recovered:false; book snapshots ${snapshotsBefore} -> ${healed.book.snapshots}`);

  // A token the server refuses: `error`, and no retry loop.
  await page.evaluate(() => window.startRefused());
  await until('error', async () => (await stateOf(page, 'refused')) === 'error');
  const accepted = proxy.accepted;
  await sleep(1_500);
  assert((await stateOf(page, 'refused')) === 'error', 'it stays in error');
  assert(proxy.accepted === accepted, `no retry loop: ${proxy.accepted - accepted} connections after the refusal`);
  await page.locator('#refused').screenshot({ path: path.join(SHOTS, 'status-error.png') });
  log(`client: refused token -> error (connections through the proxy meanwhile: ${proxy.accepted - accepted})`);

  // The token-refresh hook: a token function answering every `refresh` on the same connection.
  await page.evaluate((secret) => window.startRefreshing(secret), SECRET);
  const refreshed = await until('two refreshes answered on one connection', async () => {
    const t = await page.evaluate(() => window.refreshing.tally);
    return t.auths >= 3 && t.refreshes >= 2 ? t : null;
  }, 20_000);
  assert(JSON.stringify(refreshed.states) === '["connecting","connected"]',
    `one connection throughout the refreshes: ${JSON.stringify(refreshed)}`);
  assert(refreshed.received > 100 && refreshed.holes === 0, `ticks flowed on: ${JSON.stringify(refreshed)}`);
  log(`client: token refreshed ${refreshed.refreshes} times on one connection, ${refreshed.received} ticks`);

  // The manual reconnect button.
  const reconnects = await page.evaluate(() => window.client.stats.reconnects);
  await page.locator('#card').locator('button').click();
  await until('the button reconnected', async () =>
    (await page.evaluate(() => window.client.stats.reconnects)) > reconnects && (await stateOf(page)) === 'connected');
}

/** A second server with `server.admin_key`: the dashboard asks for it, refuses a wrong one,
 *  streams with the right one, and keeps it across a reload (the tab's session storage). */
async function keyedDashboard() {
  log('dashboard with server.admin_key: the key form');
  const key = 'browser-tests-admin-key-0123456789';
  const p = { client: await freePort(), ingest: await freePort(), admin: await freePort() };
  const file = path.join(dir, 'keyed.toml');
  writeFileSync(file, `[server]\nlisten = "127.0.0.1:${p.client}"\ningest = "127.0.0.1:${p.ingest}"\n` +
    `admin = "127.0.0.1:${p.admin}"\nadmin_key = "${key}"\nshards = 1\npin_cores = false\n` +
    '[dispatcher]\nsummary_interval_ms = 0\n[shard]\nreport_interval_ms = 500\n');
  let out = '';
  const child = spawn(BIN, ['serve', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', (d) => { out += d; });
  try {
    await until('the keyed server to start', () => /admin on http/.test(out) || child.exitCode !== null, 20_000);
    assert(child.exitCode === null, `the keyed server started:\n${out}`);
    const page = await newPage(1366, 768);
    await page.goto(`http://127.0.0.1:${p.admin}/`);
    await page.waitForSelector('#key-overlay:not([hidden])', { timeout: 10_000 });
    assert((await page.$('body[data-ready="1"]')) === null, 'no figures before the key');
    await page.fill('#key-input', 'a-wrong-key-of-enough-length');
    await page.press('#key-input', 'Enter');
    await until('the wrong key refused and asked again', async () =>
      (await page.$('#key-overlay:not([hidden])')) !== null
      && (await page.$eval('#key-reason', (e) => e.dataset.level)) === 'error');
    await page.screenshot({ path: path.join(SHOTS, 'dashboard-key-refused.png') });
    await page.fill('#key-input', key);
    await page.press('#key-input', 'Enter');
    await page.waitForSelector('body[data-ready="1"]', { timeout: 15_000 });
    assert((await page.$eval('#fig-connections', (e) => Number(e.dataset.value))) >= 1, 'figures with the right key');
    await page.reload();
    await page.waitForSelector('body[data-ready="1"]', { timeout: 15_000 });
    assert((await page.$('#key-overlay:not([hidden])')) === null, 'a reload keeps the key');
    await page.close();
  } finally {
    child.kill('SIGTERM');
    await until('the keyed server to stop', () => child.exitCode !== null || child.signalCode !== null, 15_000);
  }
}

let failed = null;
try {
  await startServer();
  publisherLoop();
  const page = await clientConnects();
  const dash = await dashboard();
  await clientRecovers(page);
  // The dashboard went on through the restart: it reconnected to the new server by itself.
  await until('the dashboard reconnected to the restarted server', () =>
    dash.$eval('body', () => document.querySelector('corecast-status')?.getAttribute('state') === 'connected'), 20_000);
  const samples = await dash.$eval('#samples', (e) => Number(e.dataset.value));
  await until('new samples from the restarted server', async () =>
    (await dash.$eval('#samples', (e) => Number(e.dataset.value))) >= samples + 2, 10_000);
  await keyedDashboard();
  assert(consoleErrors.filter((e) => !/WebSocket|ERR_CONNECTION|net::/.test(e)).length === 0,
    `no page errors: ${consoleErrors.join('\n')}`);
  log('all browser tests passed; screenshots in', SHOTS);
} catch (e) {
  failed = e;
  console.error('[browser] FAILED:', e.stack ?? e);
  console.error('[browser] server log tail:\n' + serverLog.split('\n').slice(-30).join('\n'));
  if (consoleErrors.length) console.error('[browser] page errors:\n' + consoleErrors.join('\n'));
} finally {
  publisher.running = false;
  publisher.sock?.destroy();
  await browser.close().catch(() => {});
  if (server) await stopServer().catch(() => {});
  proxyServer.close();
  pages.close();
  clearTimeout(deadline);
}
process.exit(failed ? 1 : 0);
