// corecast operator dashboard: subscribes to `_sys.stats` (one sample a second) and draws it.
//
// Served by the admin port with /dashboard.json, /corecast.js and /vendor/uplot.js (loaded
// before this module as a classic script: the global `uPlot`). The figures' meanings are in
// docs/operations.md; the sample's shape is `_sys.stats` v1.
//
// Layout of this file: formatting -> sample window -> header and tiles -> charts -> tables ->
// connection (config, admin key, client) -> start.

import { Corecast } from '/corecast.js';

const STATS_TOPIC = '_sys.stats';
const WINDOW_S = 300;              // seconds of samples the charts keep, in this tab only
const BREAK_S = 2.5;               // samples further apart than this are not joined by a line
const ERROR_SHOWN_MS = 10_000;     // how long a passing client error stays on the notice line
const STALE_MS = 3500;             // no sample for this long: greyed out (as <corecast-status stale-after-ms>)
const CHART_HEIGHT = 180;          // px, plot and axes (the legend comes below)
const KEY_STORAGE = 'corecast.dashboard.adminKey';
// Thresholds of docs/operations/corecast-alerts.yml, used to colour tiles and rows.
const LATENCY_ALERT_US = 50_000;   // CorecastLatencyHigh: p99 over 50 ms
const HISTORY_WARN = 0.95;         // CorecastHistoryAtBound: above 95% of the bound
const REPORT_AGE_WARN_S = 3;       // readiness: three report intervals at the default 1 s

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------- formatting

const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const nf1 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const nf2 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const nfCompact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

/** A count, with thousands separators. */
function fmtCount(n) {
  return isNum(n) ? nf0.format(n) : '—';
}

/** A rate: one decimal under 10, whole with separators above, in millions from ten million. */
function fmtRate(n) {
  if (!isNum(n)) return '—';
  if (n === 0) return '0';
  const a = Math.abs(n);
  if (a < 9.95) return nf1.format(n);
  if (a >= 1e7) return `${nf1.format(n / 1e6)} M`;
  return nf0.format(n);
}

/** Three significant digits (for values of 1 and more). */
function sig3(v) {
  return v < 9.995 ? nf2.format(v) : v < 99.95 ? nf1.format(v) : nf0.format(v);
}

/** Microseconds as µs, ms or s. */
function fmtUs(us) {
  if (!isNum(us)) return '—';
  if (us < 9.95) return `${nf1.format(us)} µs`;
  if (us < 999.5) return `${nf0.format(us)} µs`;
  if (us < 999_500) return `${sig3(us / 1e3)} ms`;
  return `${sig3(us / 1e6)} s`;
}

/** A compact axis label for microseconds: 20µs, 1ms, 2.5s. */
function fmtUsAxis(us) {
  if (us < 1000) return `${+us.toPrecision(3)}µs`;
  if (us < 1e6) return `${+(us / 1e3).toPrecision(3)}ms`;
  return `${+(us / 1e6).toPrecision(3)}s`;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** Bytes in binary units. */
function fmtBytes(b) {
  if (!isNum(b)) return '—';
  let v = b;
  let i = 0;
  while (v >= 1023.5 && i < BYTE_UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? nf0.format(v) : sig3(v)} ${BYTE_UNITS[i]}`;
}

/** A duration in seconds: 42 s, 5 m 03 s, 3 h 07 m, 2 d 04 h. */
function fmtDuration(seconds) {
  if (!isNum(seconds) || seconds < 0) return '—';
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const p2 = (n) => String(n).padStart(2, '0');
  if (d) return `${d} d ${p2(h)} h`;
  if (h) return `${h} h ${p2(m)} m`;
  if (m) return `${m} m ${p2(s % 60)} s`;
  return `${s % 60} s`;
}

/** Local wall-clock time of a Unix time in seconds: 14:03:27. */
function fmtClock(t) {
  if (!isNum(t)) return '—';
  return new Date(t * 1000).toLocaleTimeString(undefined, { hour12: false });
}

/** "12.3 ms" -> ["12.3", "ms"], for tiles that show the unit smaller. */
function splitUnit(text) {
  const i = text.lastIndexOf(' ');
  return i < 0 ? [text, ''] : [text.slice(0, i), text.slice(i + 1)];
}

/** A thin space between number and unit, for the tight lines under the tiles. */
const thin = (text) => text.replace(' ', '\u2009');

const sum = (obj) => Object.values(obj ?? {}).reduce((a, v) => a + (isNum(v) ? v : 0), 0);

// ---------------------------------------------------------------- sample window

/**
 * Chart points, oldest first, at most WINDOW_S seconds apart end to end. `t` is the sample's
 * own time (server clock, seconds); a row with `gap` holds no values and breaks the lines
 * where samples were missed (a reconnect, a stalled server).
 */
const win = [];

/** Counters of the previous sample, for the per-second columns derived here. */
let prev = null;

let samplesReceived = 0;
let lastSampleAt = null;          // Date.now() at the latest sample's arrival
let lastEpoch = null;

const positive = (v) => (isNum(v) && v > 0 ? v : null);

function pushSample(s) {
  const t = (isNum(s.ts) ? s.ts : Date.now()) / 1000;
  const last = win[win.length - 1];
  if (last && t <= last.t) win.length = 0;            // the clock went back: start over
  else if (last && t - last.t > BREAK_S) win.push({ t: (last.t + t) / 2, gap: true });
  const lat = s.latency_us ?? {};
  win.push({
    t,
    in: s.msgs_in_per_s,
    out: s.msgs_out_per_s,
    lat: [positive(lat.p50), positive(lat.p90), positive(lat.p99), positive(lat.p999)],
    shards: new Map((s.shards ?? []).map((sh) => [sh.shard, sh.connections])),
  });
  while (win.length && win[0].t < t - WINDOW_S) win.shift();
  while (win.length && win[0].gap) win.shift();
}

/** Per-second rate of a counter from the previous sample; null when unknown or reset. */
function derivedRate(group, key, s) {
  if (!prev || prev.epoch !== s.epoch || !isNum(s.ts) || !isNum(prev.ts)) return null;
  const dt = (s.ts - prev.ts) / 1000;
  const a = prev[group]?.[key];
  const b = s[group]?.[key];
  if (dt <= 0 || !isNum(a) || !isNum(b) || b < a) return null;
  return (b - a) / dt;
}

// ---------------------------------------------------------------- header and tiles

function renderHeader(s) {
  $('#version').textContent = s.version ? `v${s.version}` : '—';
  $('#uptime').textContent = fmtDuration(s.uptime_s);
  const epoch = $('#epoch');
  epoch.textContent = s.epoch ?? '—';
  if (lastEpoch !== null && s.epoch !== lastEpoch) {
    epoch.title = `the server restarted at ${fmtClock(Date.now() / 1000)} (new epoch)`;
  }
  lastEpoch = s.epoch;
  const health = $('#health');
  health.dataset.state = s.ready ? 'ready' : 'degraded';
  health.textContent = s.ready ? 'ready' : 'degraded';
  const samples = $('#samples');
  samples.dataset.value = String(samplesReceived);
  samples.textContent = fmtCount(samplesReceived);
}

/**
 * Sets a figure tile: `data-value` the raw number ('' when there is none), the formatted
 * text (its unit smaller), the line below, and `data-level` (ok, warn, alert) for colour.
 */
function setTile(id, raw, text, sub = '', level = '') {
  const el = document.getElementById(id);
  el.dataset.value = isNum(raw) ? String(raw) : '';
  const value = el.querySelector('.value');
  const [num, unit] = splitUnit(text);
  value.textContent = num;
  if (unit) {
    const u = document.createElement('span');
    u.className = 'unit';
    u.textContent = unit;
    value.append(u);
  }
  const line = el.querySelector('.sub');
  line.textContent = sub || '\u00a0';
  line.title = sub;
  if (level) el.dataset.level = level;
  else delete el.dataset.level;
}

function renderTiles(s) {
  const shards = s.shards ?? [];
  setTile('fig-connections', s.connections, fmtCount(s.connections),
    `${fmtCount(s.subscriptions)} subs · ${shards.length} shard${shards.length === 1 ? '' : 's'}`);

  const fanout = isNum(s.msgs_in_per_s) && s.msgs_in_per_s > 0 && isNum(s.msgs_out_per_s)
    ? `fan-out ×${fmtRate(s.msgs_out_per_s / s.msgs_in_per_s)}` : 'published';
  setTile('fig-msgs-in', s.msgs_in_per_s, fmtRate(s.msgs_in_per_s), fanout);
  setTile('fig-msgs-out', s.msgs_out_per_s, fmtRate(s.msgs_out_per_s),
    `${fmtRate(s.writes_per_s)} writes/s`);

  const lat = s.latency_us ?? {};
  const p99 = isNum(lat.p99) ? lat.p99 : null;
  const latSub = isNum(lat.count) && lat.count > 0
    ? `p50 ${thin(fmtUs(lat.p50))} · max ${thin(fmtUs(lat.max))}`
    : 'nothing delivered';
  setTile('fig-p99', p99, fmtUs(p99), latSub,
    p99 === null ? '' : p99 > LATENCY_ALERT_US ? 'alert' : 'ok');

  // A shard overflowing is the server's problem (a page); slow consumers are the clients' (a ticket).
  const dropsPerS = sum(s.drops_per_s);
  const overflow = s.drops_per_s?.shard_overflow;
  setTile('fig-drops', dropsPerS, fmtRate(dropsPerS), `${fmtCount(sum(s.drops))} since start`,
    isNum(overflow) && overflow > 0 ? 'alert' : dropsPerS > 0 ? 'warn' : 'ok');

  setTile('fig-topics', s.topics, fmtCount(s.topics), 'published topics');

  const hist = document.getElementById('fig-history');
  const max = s.history_max_bytes;
  const frac = isNum(s.history_bytes) && isNum(max) && max > 0 ? s.history_bytes / max : null;
  hist.dataset.max = isNum(max) ? String(max) : '';
  setTile('fig-history', s.history_bytes, fmtBytes(s.history_bytes),
    `of ${fmtBytes(max)}${frac === null ? '' : ` · ${nf1.format(frac * 100)} %`}`,
    frac !== null && frac > HISTORY_WARN ? 'warn' : '');
  hist.querySelector('.fill').style.width = `${Math.min(100, (frac ?? 0) * 100)}%`;
}

// ---------------------------------------------------------------- charts

const AXIS_FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif';
const GRID = { stroke: '#242b33', width: 1 };
const TICKS = { stroke: '#2a323b', width: 1, size: 4 };
const AXIS = { stroke: '#8a96a3', font: AXIS_FONT, grid: GRID, ticks: TICKS, size: 50, space: 28 };
const COLOUR_IN = '#5ab0ff';
const COLOUR_OUT = '#3ecf8e';
const LATENCY_COLOURS = ['#3ecf8e', '#f0b429', '#ff8a65', '#ff5d73'];
const SHARD_COLOURS = ['#5ab0ff', '#3ecf8e', '#f0b429', '#c792ea', '#ff8a65', '#4dd0e1',
  '#ff5d73', '#aed581', '#ffd54f', '#90a4ae', '#f48fb1', '#80cbc4'];
const INT_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5,
  5e5, 1e6, 2e6, 5e6, 1e7];

const charts = { msgs: null, latency: null, shards: null, shardIds: '' };

/** A line series on `scale`, its legend value formatted by `fmt`. */
const line = (label, stroke, fmt, scale = 'y') => ({
  label, stroke, scale, width: 1.5, value: (u, v) => (v == null ? '—' : fmt(v)),
});

/** [0, a little above the largest value], or [0, 1] with nothing to show. */
const zeroBasedRange = (u, min, max) => [0, isNum(max) && max > 0 ? max * 1.08 : 1];

/** Whole decades around the data, at least one. */
function decadeRange(u, min, max) {
  if (!isNum(min) || !isNum(max) || min <= 0) return [1, 1000];
  return [10 ** Math.floor(Math.log10(min)), 10 ** Math.ceil(Math.log10(max) + 1e-9)];
}

/** On a log axis, keeps the ticks at 1, 2 and 5 of each decade (only 1 past two decades). */
function logTicks(u, splits) {
  const { min, max } = u.scales.y;
  const decades = isNum(min) && isNum(max) && min > 0 ? Math.log10(max / min) : 3;
  const keep = decades > 2 ? [1] : [1, 2, 5];
  return splits.map((v) => {
    const mant = Math.round(v / 10 ** Math.floor(Math.log10(v) + 1e-9));
    return keep.includes(mant) ? v : null;
  });
}

const compactValues = (u, splits) => splits.map((v) => (v == null ? '' : nfCompact.format(v)));

/** Time ticks as 14:05, or 14:05:30 when some are not on the minute. */
function clockValues(u, splits) {
  const p2 = (n) => String(n).padStart(2, '0');
  const whole = splits.every((t) => Math.round(t) % 60 === 0);
  return splits.map((t) => {
    const d = new Date(t * 1000);
    const hm = `${p2(d.getHours())}:${p2(d.getMinutes())}`;
    return whole ? hm : `${hm}:${p2(d.getSeconds())}`;
  });
}

/** Off the plot, the legend shows the latest values (uPlot would show dashes). */
function legendAtLatest(u) {
  const n = u.data[0].length;
  if (n && (u.cursor.idx == null || u.cursor.left < 0)) u.setLegend({ idx: n - 1 }, false);
}

/**
 * A uPlot chart in `el`, as wide as `el` (following it on resize), with a sliding time axis
 * (the samples held, at least a minute and at most WINDOW_S) and no zoom. `scales` and `yAxes` are uPlot's, over the defaults above.
 */
function makeChart(el, series, scales, yAxes) {
  el.querySelector('.uplot')?.remove();
  const u = new uPlot({
    width: Math.max(200, el.clientWidth),
    height: CHART_HEIGHT,
    cursor: { drag: { x: false, y: false, setScale: false } },
    legend: { live: true },
    scales: { x: { time: true, range: (self, min, max) => [max - Math.min(WINDOW_S, Math.max(60, max - min)), max] }, ...scales },
    // 70 px between time ticks: an HH:MM:SS label is about 55 px wide.
    axes: [{ ...AXIS, space: 70, values: clockValues }, ...yAxes.map((a) => ({ ...AXIS, ...a }))],
    series: [{ label: 'time', value: (self, t) => (t == null ? '—' : fmtClock(t)) }, ...series],
    hooks: { setCursor: [legendAtLatest], setData: [legendAtLatest] },
  }, [[], ...series.map(() => [])], el);
  const resize = new ResizeObserver(() => {
    const w = Math.max(200, el.clientWidth);
    if (w !== u.width) u.setSize({ width: w, height: CHART_HEIGHT });
  });
  resize.observe(el);
  const destroy = u.destroy.bind(u);
  u.destroy = () => {
    resize.disconnect();
    destroy();
  };
  return u;
}

const column = (f) => win.map((r) => (r.gap ? null : (f(r) ?? null)));

function renderCharts() {
  const xs = win.map((r) => r.t);

  if (!charts.msgs) {
    // In and out differ by the fan-out (often 10-1000x): each has its own axis.
    charts.msgs = makeChart($('#chart-msgs'),
      [line('in', COLOUR_IN, fmtRate, 'in'), line('out', COLOUR_OUT, fmtRate, 'out')],
      { in: { range: zeroBasedRange }, out: { range: zeroBasedRange } },
      [{ scale: 'in', stroke: COLOUR_IN, incrs: INT_INCRS, values: compactValues },
        { scale: 'out', side: 1, stroke: COLOUR_OUT, incrs: INT_INCRS, values: compactValues, grid: { show: false } }]);
    const logFilter = { filter: logTicks };
    charts.latency = makeChart($('#chart-latency'),
      ['p50', 'p90', 'p99', 'p99.9'].map((q, i) => line(q, LATENCY_COLOURS[i], fmtUs)),
      { y: { distr: 3, log: 10, range: decadeRange } },
      [{ filter: logTicks, grid: { ...GRID, ...logFilter }, ticks: { ...TICKS, ...logFilter },
        values: (u, splits) => splits.map((v) => (v == null ? '' : fmtUsAxis(v))) }]);
  }
  charts.msgs.setData([xs, column((r) => r.in), column((r) => r.out)]);
  charts.latency.setData([xs, ...[0, 1, 2, 3].map((i) => column((r) => r.lat[i]))]);

  // One series per shard: rebuilt when the set of shards changes (a restart with another count).
  const ids = [...new Set(win.flatMap((r) => (r.gap ? [] : [...r.shards.keys()])))].sort((a, b) => a - b);
  const key = ids.join(',');
  if (!charts.shards || key !== charts.shardIds) {
    charts.shards?.destroy();
    charts.shardIds = key;
    charts.shards = makeChart($('#chart-shards'),
      ids.map((id, i) => line(`shard ${id}`, SHARD_COLOURS[i % SHARD_COLOURS.length], fmtCount)),
      { y: { range: zeroBasedRange } },
      [{ incrs: INT_INCRS, values: compactValues }]);
  }
  charts.shards.setData([xs, ...ids.map((id) => column((r) => r.shards.get(id)))]);

  for (const id of ['#chart-msgs', '#chart-latency', '#chart-shards']) $(id).classList.add('has-data');
}

// ---------------------------------------------------------------- tables

/**
 * Replaces a table's body. Each row: { attrs: {data-*: value}, cls, cells: [[text, cls]] }.
 * The panel's `.empty` line says `emptyText` when there are no rows.
 */
function fillTable(table, rows, emptyText) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows.map(({ attrs = {}, cls = '', cells }) => {
    const tr = document.createElement('tr');
    for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) tr.setAttribute(k, String(v));
    if (cls) tr.className = cls;
    for (const [text, tdCls] of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      if (tdCls) td.className = tdCls;
      tr.append(td);
    }
    return tr;
  }));
  const panel = table.closest('.panel');
  panel.classList.toggle('has-data', rows.length > 0);
  panel.querySelector('.empty').textContent = emptyText;
}

const attr = (v) => (isNum(v) ? v : null);

function renderTables(s) {
  fillTable($('#busiest'), (s.busiest ?? []).map((b) => ({
    attrs: { 'data-topic': b.topic, 'data-value': attr(b.msgs_per_s), 'data-subscribers': attr(b.subscribers), 'data-out': attr(b.msgs_out_per_s) },
    cells: [[b.topic, 'name'], [fmtRate(b.msgs_out_per_s), 'num'], [fmtRate(b.msgs_per_s), 'num'], [fmtCount(b.subscribers), 'num']],
  })), 'no topic published in the last second');
  for (const td of $('#busiest').querySelectorAll('td.name')) td.title = td.textContent;

  fillTable($('#shards'), (s.shards ?? []).map((sh) => {
    const age = sh.report_age_s;
    const late = !isNum(age) || age < 0 || age > REPORT_AGE_WARN_S;
    return {
      attrs: { 'data-shard': sh.shard, 'data-value': attr(sh.connections), 'data-report-age': attr(age) },
      cls: late ? 'bad' : '',
      cells: [[String(sh.shard), ''], [fmtCount(sh.connections), 'num'], [fmtCount(sh.subscriptions), 'num'],
        [fmtRate(sh.msgs_out_per_s), 'num'],
        [!isNum(age) || age < 0 ? 'never' : `${nf1.format(age)} s`, 'num']],
    };
  }), 'no shard reported');

  const drops = s.drops ?? {};
  const dropsPerS = s.drops_per_s ?? {};
  const gaps = s.gaps ?? {};
  const reasons = [...new Set([...Object.keys(drops), ...Object.keys(dropsPerS), ...Object.keys(gaps)])];
  fillTable($('#drops'), reasons.map((r) => {
    const d = drops[r];
    const ps = dropsPerS[r];
    const g = gaps[r];
    const cell = (v, f) => (isNum(v) ? [f(v), 'num'] : ['—', 'num na']);
    return {
      attrs: { 'data-reason': r, 'data-drops': attr(d), 'data-drops-per-s': attr(ps), 'data-gaps': attr(g) },
      cls: isNum(ps) && ps > 0 ? 'bad' : (d || 0) + (g || 0) === 0 ? 'zero' : '',
      cells: [[r, 'name'], cell(d, fmtCount), cell(ps, fmtRate), cell(g, fmtCount)],
    };
  }), 'no reason reported');

  const counterRows = (group, attrName, zerosLast) => {
    const entries = Object.entries(s[group] ?? {});
    if (zerosLast) entries.sort(([, a], [, b]) => (b > 0) - (a > 0) || (b > 0 ? b - a : 0));
    return entries.map(([k, v]) => {
      const rate = derivedRate(group, k, s);
      return {
        attrs: { [attrName]: k, 'data-value': attr(v), 'data-per-s': attr(rate) },
        cls: !v ? 'zero' : rate > 0 ? 'hot' : '',
        cells: [[k, 'name'], [fmtCount(v), 'num'], [rate === null ? '—' : fmtRate(rate), 'num']],
      };
    });
  };
  fillTable($('#refusals'), counterRows('refusals', 'data-kind', false), 'no kind reported');
  fillTable($('#ingest-errors'), counterRows('ingest_errors', 'data-code', true), 'no code reported');
}

// ---------------------------------------------------------------- notice line

/** What the connection is doing, for the line under the header. */
const conn = {
  url: '',
  state: 'disconnected',   // the client's, from its `state` events
  reason: '',              // the reason given with the latest state change
  subscribed: false,       // `_sys.stats` acked on the current socket
  fatal: null,             // why the dashboard stopped (no config, refused): shown until a new key
  lastError: null,         // {text, until}: a passing `error` event, shown for ERROR_SHOWN_MS
};

function renderNotice() {
  const el = $('#notice');
  const set = (level, text) => {
    el.dataset.level = level;
    el.textContent = text;
  };
  const sinceLast = lastSampleAt === null ? null : Date.now() - lastSampleAt;
  const stale = sinceLast !== null && sinceLast > STALE_MS;
  if (stale) document.body.dataset.stale = '';
  else delete document.body.dataset.stale;

  if (conn.fatal) return set('error', conn.fatal);
  const where = conn.url;
  const stateText = {
    disconnected: `Not connected to ${where}.`,
    connecting: `Connecting to ${where}…`,
    reconnecting: `Reconnecting to ${where}…`,
    error: `Connection to ${where} failed${conn.reason ? `: ${conn.reason}` : ''}.`,
    connected: conn.subscribed
      ? `Connected to ${where}; waiting for the first sample of ${STATS_TOPIC} (one a second).`
      : `Connected to ${where}; subscribing to ${STATS_TOPIC}…`,
  }[conn.state] ?? `${conn.state}: ${where}`;
  if (lastSampleAt === null) return set(conn.state === 'error' ? 'error' : 'info', stateText);
  if (stale) {
    const secs = Math.round(sinceLast / 1000);
    return set('warn', `No sample for ${secs} s: the figures below are from ${fmtClock(lastSampleAt / 1000)}. ${conn.state === 'connected' ? 'The connection is open but the server sends nothing.' : stateText}`);
  }
  if (conn.lastError && conn.lastError.until > Date.now()) return set('warn', conn.lastError.text);
  return set('info', '');
}

function tick() {
  const age = $('#age');
  if (lastSampleAt === null) age.textContent = '—';
  else age.textContent = `${fmtDuration((Date.now() - lastSampleAt) / 1000)} ago`;
  renderNotice();
}

// ---------------------------------------------------------------- samples

function onSample(s) {
  if (!s || typeof s !== 'object') return;
  samplesReceived += 1;
  lastSampleAt = Date.now();
  pushSample(s);
  renderHeader(s);
  renderTiles(s);
  renderTables(s);
  renderCharts();
  prev = { ts: s.ts, epoch: s.epoch, refusals: { ...s.refusals }, ingest_errors: { ...s.ingest_errors } };
  tick();
  if (!document.body.dataset.ready) queueMicrotask(() => { document.body.dataset.ready = '1'; });
}

// ---------------------------------------------------------------- connection

let client = null;
let keyRequired = false;
/** The key the server made at start when it has no `server.admin_key` (from /dashboard.json). */
let madeKey = '';

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage refused (a private window's policy): the key lives as long as this client.
  }
}

let pendingKey = '';

/** Starts (or restarts) the client with the stored admin key, if any. */
function connect() {
  client?.close();
  // Without a configured key the server makes one at each start: read it again at each
  // connect, so a restarted server's new key is the one sent.
  const adminKey = keyRequired ? storedKey() || pendingKey : madeKey && fetchMadeKey;
  const c = new Corecast(conn.url, adminKey ? { adminKey } : {});
  client = c;
  $('#status').client = c;
  $('#key-change').hidden = !keyRequired;
  conn.state = c.state;
  conn.subscribed = false;
  conn.fatal = null;
  const mine = (f) => (e) => { if (client === c) f(e.detail ?? {}); };
  c.addEventListener('state', mine((d) => {
    conn.state = d.state;
    conn.reason = d.reason ? String(d.reason) : '';
    if (d.state !== 'connected') conn.subscribed = false;
    renderNotice();
  }));
  c.addEventListener('subscribed', mine((d) => {
    if (d.topic === STATS_TOPIC) conn.subscribed = true;
    renderNotice();
  }));
  c.addEventListener('error', mine(onClientError));
  c.addEventListener('unsubscribed', mine((d) => {
    if (d.topic === STATS_TOPIC) refused('forbidden', `the server ended the subscription (${d.reason ?? 'no reason given'})`);
  }));
  c.subscribe(STATS_TOPIC, { onMessage: (m) => { if (client === c) onSample(m.data); } });
  renderNotice();
}

function onClientError(d) {
  if (d.code === 'unauthorized' || d.code === 'forbidden') {
    refused(d.code, d.message || d.reason || '');
    return;
  }
  conn.lastError = {
    text: `The client reported ${d.code ?? 'an error'}${d.message ? `: ${d.message}` : ''}.`,
    until: Date.now() + ERROR_SHOWN_MS,
  };
  renderNotice();
}

/** The server refused the key or the topic: stop, forget the key, ask for one. */
function refused(code, detail) {
  client?.close();
  storeKey('');
  pendingKey = '';
  const why = code === 'unauthorized'
    ? 'The server refused this admin key'
    : keyRequired
      ? `The server needs its admin key to stream ${STATS_TOPIC}`
      : `The server refused ${STATS_TOPIC} (forbidden): reload the page to take the key of the running server`;
  conn.fatal = `${why}${detail ? ` (${detail})` : ''}.`;
  renderNotice();
  askKey(`${why}.`, 'error');
}

function askKey(text, level = 'info') {
  const reason = $('#key-reason');
  reason.textContent = text;
  reason.dataset.level = level;
  $('#key-overlay').hidden = false;
  const input = $('#key-input');
  input.value = '';
  input.focus();
}

function onKeySubmit(e) {
  e.preventDefault();
  const key = $('#key-input').value.trim();
  if (!key) return;
  storeKey(key);
  pendingKey = key;
  $('#key-overlay').hidden = true;
  connect();
}

/**
 * ws://<page host>:<ws_port><ws_path>, or ?ws=<url> on the page's own host (another port or
 * path): the admin key goes over this socket, so it never goes to another host.
 */
function wsUrlFor(cfg, params) {
  const override = params.get('ws');
  if (override) {
    let u = null;
    try { u = new URL(override); } catch { /* not a URL */ }
    if (u && (u.protocol === 'ws:' || u.protocol === 'wss:') && u.hostname === location.hostname) return u.href;
    return null;
  }
  if (!cfg || !isNum(cfg.ws_port)) return null;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const path = typeof cfg.ws_path === 'string' && cfg.ws_path.startsWith('/') ? cfg.ws_path : '/ws';
  return `${scheme}//${location.hostname}:${cfg.ws_port}${path}`;
}

/** The key the running server made at start, from /dashboard.json (same origin only). A
 *  server restarted with a configured key hands out none: the page starts over (and asks). */
async function fetchMadeKey() {
  const r = await fetch('/dashboard.json', { cache: 'no-store' });
  if (!r.ok) throw new Error(`/dashboard.json: HTTP ${r.status}`);
  const cfg = await r.json();
  if (cfg.admin_key_required) {
    client?.close();
    location.reload();
  }
  if (typeof cfg.admin_key !== 'string') throw new Error('/dashboard.json has no admin_key');
  return cfg.admin_key;
}

async function start() {
  $('#key-form').addEventListener('submit', onKeySubmit);
  $('#key-change').addEventListener('click', () => askKey('Enter the admin key to use.'));
  setInterval(tick, 1000);

  const params = new URLSearchParams(location.search);
  let cfg = null;
  let cfgError = '';
  try {
    const r = await fetch('/dashboard.json', { cache: 'no-store' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    cfg = await r.json();
  } catch (err) {
    cfgError = err instanceof Error ? err.message : String(err);
  }
  const url = wsUrlFor(cfg, params);
  if (!url) {
    conn.fatal = params.get('ws')
      ? `?ws= must be a ws:// or wss:// URL on this page's host (${location.hostname}): the admin key is never sent to another host.`
      : `Could not read /dashboard.json (${cfgError || 'no ws_port'}): open this page from the admin port, or give the WebSocket with ?ws=ws://${location.hostname}:PORT/ws.`;
    renderNotice();
    return;
  }
  conn.url = url;
  $('#source').textContent = `${STATS_TOPIC} from ${url}`;
  keyRequired = Boolean(cfg?.admin_key_required);
  madeKey = typeof cfg?.admin_key === 'string' ? cfg.admin_key : '';
  if (!keyRequired && !madeKey && typeof cfg?.admin_key_note === 'string') {
    // The server keeps its made key from pages at a host name (DNS rebinding).
    conn.fatal = `No key for ${STATS_TOPIC}: ${cfg.admin_key_note}.`;
    renderNotice();
    return;
  }
  if (keyRequired && !storedKey()) {
    conn.state = 'disconnected';
    renderNotice();
    askKey(`This server needs its admin key to stream ${STATS_TOPIC}.`);
    return;
  }
  connect();
}

start();
