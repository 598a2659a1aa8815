/**
 * `<corecast-status>`: a custom element showing a corecast client's connection at a glance
 * (state with colour and label, latency, msgs/s, reconnects, age of the last message, a
 * Reconnect button). It uses only the client's public API (`state`, `stats`, its `state`
 * event and `reconnect()`), so it imports nothing; corecast.js re-exports it. Registered as
 * `corecast-status` when `customElements` exists. docs/clients.md.
 *
 * @module corecast-status
 */

const STYLE = `
:host { --_c: var(--corecast-offline, #6b7280); display: inline-block; box-sizing: border-box;
  font: var(--corecast-font, 12px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif);
  color: var(--corecast-fg, inherit); }
:host([hidden]) { display: none; }
:host([state="connected"]) { --_c: var(--corecast-live, #16a34a); }
:host([state="connected"][stale]) { --_c: var(--corecast-stale, #ea580c); }
:host([state="connecting"]), :host([state="reconnecting"]) { --_c: var(--corecast-connecting, #d97706); }
:host([state="error"]) { --_c: var(--corecast-error, #dc2626); }
.root { display: inline-flex; align-items: center; gap: .6em; white-space: nowrap; }
.dot { flex: none; width: .65em; height: .65em; border-radius: 50%; background: var(--_c);
  forced-color-adjust: none; }
:host([state="connecting"]) .dot, :host([state="reconnecting"]) .dot { animation: pulse 1s ease-in-out infinite; }
@keyframes pulse { 50% { opacity: .35; } }
@media (prefers-reduced-motion: reduce) { .dot { animation: none !important; } }
.label { font-weight: 600; color: var(--_c); }
dl { display: contents; margin: 0; }
.item { display: inline-flex; gap: .3em; }
dt { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
dd { margin: 0; font-variant-numeric: tabular-nums; color: var(--corecast-muted, inherit); text-align: end; }
.latency dd { min-width: 5.5ch; } .rate dd { min-width: 7ch; } .age dd { min-width: 5ch; }
:host(:not([variant="card"])) .reconnects dd::before { content: "\\21bb\\a0"; }
.received, .conn, .reason { display: none; }
button { font: inherit; padding: .1em .6em; border: 1px solid var(--corecast-border, currentColor);
  border-radius: .3em; background: transparent; color: inherit; cursor: pointer; }
button:disabled { cursor: default; opacity: .5; }
:host(:not([variant="card"])[state="connected"]:not([stale])) button { display: none; }
:host(:not([variant="card"])) button { order: 1; } /* last: its coming and going moves nothing */
:host([variant="card"]) { display: block; }
:host([variant="card"]) .root { display: grid; grid-template-columns: auto 1fr auto; gap: .5em .6em;
  align-content: start; box-sizing: border-box; height: 100%;
  padding: .8em 1em; border: 1px solid var(--corecast-border, rgba(128, 128, 128, .35));
  border-radius: var(--corecast-radius, .5em); background: var(--corecast-bg, transparent); }
:host([variant="card"]) .label { font-size: 1.15em; }
:host([variant="card"]) dl { display: grid; grid-column: 1 / -1; grid-template-columns: auto 1fr; gap: .2em 1.2em; }
:host([variant="card"]) .item { display: contents; }
:host([variant="card"]) dt { position: static; width: auto; height: auto; overflow: visible; clip-path: none;
  color: var(--corecast-muted, inherit); opacity: .75; }
:host([variant="card"]) .received, :host([variant="card"]) .conn { display: contents; }
:host([variant="card"]) .reason:not(:empty) { display: block; grid-column: 1 / -1; margin: 0;
  color: var(--corecast-muted, inherit); white-space: normal; overflow-wrap: anywhere; }
`;

/** One stylesheet shared by every element of the document (constructable stylesheets are
 *  not subject to a CSP's style-src); a <style> where they are not available. */
let sharedSheet = null;
function styleFor(root, doc) {
  if ('adoptedStyleSheets' in root && typeof CSSStyleSheet === 'function') {
    try {
      if (sharedSheet === null) {
        const sheet = new CSSStyleSheet();
        sheet.replaceSync(STYLE);
        sharedSheet = sheet;
      }
      root.adoptedStyleSheets = [sharedSheet];
      return null;
    } catch (_) { /* another document's element, or no replaceSync: use a <style> */ }
  }
  const style = doc.createElement('style');
  style.textContent = STYLE;
  return style;
}

/** [class and part, label, tooltip] of the figures, in display order. */
const FIELDS = [
  ['latency', 'Latency', 'Round trip of the last ping'],
  ['rate', 'Messages/s', 'Messages and snapshots per second, last 5 s'],
  ['age', 'Last message', 'Time since the last message or snapshot'],
  ['reconnects', 'Reconnects', 'Connections made again after the first'],
  ['received', 'Received', 'Messages and snapshots received'],
  ['conn', 'Connection', 'The server\'s connection id'],
];

const LABELS = { connected: 'Live', connecting: 'Connecting', reconnecting: 'Reconnecting',
  disconnected: 'Offline', error: 'Error' };

let numberFormats = null;
function fmt(n, digits) {
  if (numberFormats === null) numberFormats = [0, 1].map((d) => new Intl.NumberFormat(undefined, { minimumFractionDigits: d, maximumFractionDigits: d }));
  return numberFormats[digits].format(n);
}
function fmtMs(ms) { return ms === null ? '–' : `${fmt(ms, ms < 10 ? 1 : 0)} ms`; }
function fmtRate(r) { return `${fmt(r, r < 10 ? 1 : 0)}/s`; }
function fmtAge(ms) {
  if (ms === null) return '–';
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${fmt(s, 1)} s`;
  if (s < 90) return `${fmt(s, 0)} s`;
  if (s < 5400) return `${fmt(s / 60, 0)} min`;
  return `${fmt(s / 3600, 0)} h`;
}

/** The element's internal state, off its public surface. */
class StatusView {
  constructor(host) {
    this.host = host;
    this.client = null;
    this.bound = false;
    this.timer = null;
    this.liveSince = 0;   // Date.now() when the client was last seen reaching `connected`
    this.reason = null;   // the last state change's reason
    this.nodes = null;
    this.onState = (ev) => {
      if (ev.detail.state === 'connected') this.liveSince = Date.now();
      this.reason = ev.detail.reason ?? null;
      this.render();
    };
  }

  build() {
    const root = this.host.shadowRoot ?? this.host.attachShadow({ mode: 'open' });
    const doc = this.host.ownerDocument;
    const el = (tag, cls, text) => {
      const n = doc.createElement(tag);
      if (cls) { n.className = cls; n.setAttribute('part', cls); }
      if (text) n.textContent = text;
      return n;
    };
    const style = styleFor(root, doc);
    const box = el('div', 'root');
    const dot = el('span', 'dot');
    dot.setAttribute('part', 'indicator');
    dot.setAttribute('aria-hidden', 'true');
    const label = el('span', 'label', 'Offline');
    label.setAttribute('role', 'status');
    label.setAttribute('aria-live', 'polite');
    label.setAttribute('aria-atomic', 'true');
    const button = el('button', 'button', 'Reconnect');
    button.type = 'button';
    button.title = 'Drop the connection and connect again now';
    button.addEventListener('click', () => { if (this.client) this.client.reconnect(); });
    const dl = el('dl', 'details');
    const values = {};
    for (const [key, name, tip] of FIELDS) {
      const item = el('div', `item ${key}`);
      item.removeAttribute('part');
      item.title = tip;
      const dd = el('dd', '');
      dd.setAttribute('part', `value ${key}`);
      const dt = el('dt', '', name);
      dt.setAttribute('part', 'name');
      item.append(dt, dd);
      dl.append(item);
      values[key] = dd;
    }
    const reason = el('p', 'reason');
    box.append(dot, label, button, dl, reason);
    if (style !== null) root.replaceChildren(style, box);
    else root.replaceChildren(box);
    this.nodes = { label, button, reason, ...values };
  }

  bind() {
    if (this.bound || this.client === null) return;
    this.client.addEventListener('state', this.onState);
    this.bound = true;
    if (this.client.state === 'connected') this.liveSince = Date.now();
  }

  unbind() {
    if (!this.bound) return;
    this.client.removeEventListener('state', this.onState);
    this.bound = false;
  }

  start() {
    if (this.nodes === null) this.build();
    this.bind();
    if (this.timer === null) this.timer = setInterval(() => this.render(), 250);
    this.render();
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.unbind();
  }

  setClient(client) {
    if (client === this.client) return;
    this.unbind();
    this.client = client ?? null;
    this.reason = null;
    this.liveSince = Date.now();
    if (this.host.isConnected) this.bind();
    this.render();
  }

  staleAfterMs() {
    const v = Number(this.host.getAttribute('stale-after-ms'));
    return this.host.hasAttribute('stale-after-ms') && Number.isFinite(v) && v >= 0 ? v : 5000;
  }

  /** Writes the figures; a node is touched only when its text changes. */
  render() {
    if (this.nodes === null) return;
    const c = this.client;
    const state = c ? c.state : 'disconnected';
    const st = c ? c.stats : null;
    const now = Date.now();
    const limit = this.staleAfterMs();
    const last = Math.max(st && st.lastMessageAt !== null ? st.lastMessageAt : 0, this.liveSince);
    // Stale: data stopped flowing. A client that never received anything (no subscription
    // yet, or quiet topics) has nothing to be stale about.
    const stale = state === 'connected' && limit > 0 && st !== null && st.lastMessageAt !== null
      && now - last > limit;
    let label = stale ? 'Stale' : LABELS[state] ?? state;
    if (state === 'reconnecting' && st && st.attempt > 0) label += ` (${st.attempt})`;
    const card = this.host.getAttribute('variant') === 'card';
    const age = st && st.lastMessageAt !== null ? fmtAge(now - st.lastMessageAt) : '–';
    const text = {
      label,
      latency: st && state === 'connected' ? fmtMs(st.latencyMs) : '–', // an old socket's means nothing
      rate: st ? fmtRate(st.msgsPerSec) : '–',
      age: card && age !== '–' ? `${age} ago` : age,
      reconnects: st ? fmt(st.reconnects, 0) : '–',
      received: st ? fmt(st.received, 0) : '–',
      conn: st && st.conn ? st.conn : '–',
      reason: state === 'connected' || !this.reason ? '' : this.reason,
    };
    for (const key in text) if (this.nodes[key].textContent !== text[key]) this.nodes[key].textContent = text[key];
    if (this.nodes.button.disabled !== (c === null)) this.nodes.button.disabled = c === null;
    if (this.host.getAttribute('state') !== state) this.host.setAttribute('state', state);
    if (this.host.hasAttribute('stale') !== stale) this.host.toggleAttribute('stale', stale);
  }
}

const views = new WeakMap();
const ElementBase = globalThis.HTMLElement ?? class {};

/**
 * `<corecast-status>`: the connection's state at a glance, with a Reconnect button.
 * Attributes: `variant` (`compact`, the default: one line for a header bar; `card`: a detailed
 * card), `stale-after-ms` (default 5000; 0 never stale). Reflects `state` and `stale` on the
 * host. Property: `client` (a Corecast; setting another unbinds the previous one). Refreshes
 * 4 times a second while in the document. Styling: `::part()` and `--corecast-*` variables
 * (docs/clients.md).
 */
export class CorecastStatus extends ElementBase {
  static get observedAttributes() { return ['variant', 'stale-after-ms']; }

  constructor() {
    super();
    views.set(this, new StatusView(this));
  }

  /** The Corecast instance shown, or null. */
  get client() { return views.get(this).client; }
  set client(client) { views.get(this).setClient(client); }

  connectedCallback() {
    // A `client` set on the element before it was upgraded shadows the accessor: take it.
    if (Object.prototype.hasOwnProperty.call(this, 'client')) {
      const client = this.client;
      delete this.client;
      this.client = client;
    }
    views.get(this).start();
  }

  disconnectedCallback() { views.get(this).stop(); }

  attributeChangedCallback() { views.get(this).render(); }
}

if (globalThis.customElements && !globalThis.customElements.get('corecast-status')) {
  globalThis.customElements.define('corecast-status', CorecastStatus);
}
