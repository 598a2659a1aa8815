// Type declarations of corecast.js, the corecast browser client (docs/clients.md).
// The wire shapes follow docs/protocol.md.

/** The client's connection state. */
export type State = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'error';

/** Where a client stands in a topic: it holds every message of `epoch` up to `seq`. */
export interface Position {
  /** The topic's epoch: 16 lowercase hex digits, drawn at each server start. */
  epoch: string;
  /** The last sequence number held. */
  seq: number;
}

export interface BackoffOptions {
  /** Cap of the first retry's delay, ms. Default 250. */
  initialMs?: number;
  /** Largest cap, ms. Default 30000. */
  maxMs?: number;
  /** Growth of the cap per failed attempt. Default 2. The n-th retry waits
   *  random(0, min(maxMs, initialMs * factor^(n-1))) ms (full jitter). */
  factor?: number;
}

export interface Options {
  /** JWT sent as `{"op":"auth","token":..}` right after `welcome`. A function is called at
   *  each connect and at every server `refresh`. Default: none. */
  token?: string | (() => string | Promise<string>);
  /** Operator key sent as `{"op":"auth","admin_key":..}` right after `welcome` (after the
   *  token's auth, if both are set). A function is called at each connect (a key the server
   *  makes at each start). Default: none. */
  adminKey?: string | (() => string | Promise<string>);
  /** The constructor connects (in a microtask). Default true. */
  autoConnect?: boolean;
  /** Reconnect with backoff when the connection is lost. Default true. */
  reconnect?: boolean;
  /** Full-jitter exponential backoff between attempts. */
  backoff?: BackoffOptions;
  /** App-level `{"op":"ping"}` interval for the round-trip latency, ms. Default 5000; 0 turns
   *  pings (and the dead-socket check) off. */
  pingIntervalMs?: number;
  /** No frame at all within this of a ping: the socket is deemed dead, closed and
   *  reconnected, ms. Default 10000; 0 turns the check off. */
  pongTimeoutMs?: number;
  /** No `welcome` (and auth ack) within this of opening the socket: retry, ms. Default
   *  10000; 0 waits for ever. */
  connectTimeoutMs?: number;
  /** Requests made while not connected wait in a queue of this many; past it the oldest is
   *  rejected with code `queue_full`. Default 256; 0 rejects at once. */
  maxQueue?: number;
  /** WebSocket constructor. Default `globalThis.WebSocket`. */
  WebSocket?: any;
}

/** The client's figures, a fresh object at each read of `stats`. */
export interface Stats {
  /** Round trip of the last ping, ms; null before the first pong. */
  latencyMs: number | null;
  /** msg and snapshot frames per second over a sliding 5 s window. */
  msgsPerSec: number;
  /** msg and snapshot frames received since the client was made. */
  received: number;
  /** Connections established after the first. */
  reconnects: number;
  /** Date.now() at the last msg or snapshot; null before the first. */
  lastMessageAt: number | null;
  /** The server's connection id (`<shard>-<id>`); null when not connected. */
  conn: string | null;
  /** Consecutive failed attempts being retried; 0 when connected. */
  attempt: number;
}

/** `{"op":"welcome",...}`: the first frame of a connection. */
export interface Welcome {
  op: 'welcome';
  conn: string;
  heartbeat_ms: number;
  timeout_ms: number;
  max_message_bytes: number;
  /** `"required"` when the server wants an `auth` before anything else. */
  auth?: 'required';
  auth_timeout_ms?: number;
  sub?: string;
  expires_at?: number;
  [key: string]: unknown;
}

/** A published message. */
export interface Message<T = any> {
  op: 'msg';
  topic: string;
  /** Position in the topic, +1 per message within an epoch. */
  seq: number;
  /** Publisher's timestamp (or the server's receipt time), µs since the Unix epoch. */
  ts: number;
  data: T;
}

/** The full state of a snapshot topic; resets the position (seq may go backwards). */
export interface Snapshot<T = any> {
  op: 'snapshot';
  topic: string;
  seq: number;
  epoch: string;
  /** µs since the Unix epoch. */
  ts: number;
  data: T;
}

export type GapReason = 'slow_consumer' | 'no_snapshot' | 'shard_overflow' | 'client_detected';

/** Messages `from..=to` of a topic will never arrive. With reason `client_detected` (the client
 *  saw a seq jump without a notice) `from > to` means the sequence went backwards. */
export interface Gap {
  op: 'gap';
  topic: string;
  from: number;
  to: number;
  reason: GapReason | (string & {});
}

/** One topic's entry in a subscribe or resync `ack` (docs/protocol.md, "Ack entries"). */
export interface AckEntry {
  /** The topic or pattern as the client wrote it. */
  topic: string;
  /** The topic's head when the subscribe took effect (for a recovered resume: since.seq);
   *  null for a pattern. */
  seq: number | null;
  /** The topic's epoch; absent for a pattern. */
  epoch?: string;
  /** `next`: the next frame is msg seq+1. `snapshot`: the next is a snapshot. */
  start?: 'next' | 'snapshot';
  /** With `start: "snapshot"`: no snapshot is held yet; it comes when published. */
  waiting?: boolean;
  /** Only for a resume: true, the missed messages follow; false, they do not. */
  recovered?: boolean;
}

/** `{"op":"ack",...}`: the reply to a subscribe, unsubscribe, resync or auth. */
export interface Ack {
  op: 'ack';
  id: number;
  topics?: AckEntry[];
  sub?: string;
  expires_at?: number;
  admin?: boolean;
  [key: string]: unknown;
}

/** `{"op":"pong","id":N}`. */
export interface Pong {
  op: 'pong';
  id: number;
}

export interface StateDetail {
  state: State;
  previous: State;
  /** Consecutive failed attempts (as `stats.attempt`). */
  attempt: number;
  /** Why: `connect()`, `welcome`, `closed by the server or network: 1006`, ... */
  reason: string;
}

export interface UnsubscribedDetail {
  topic: string;
  /** `forbidden`: a refreshed token no longer allows it. */
  reason: string;
}

export interface ErrorDetail {
  code: string;
  message: string;
  reason?: string;
  /** The topic or pattern of a refused subscription. */
  topic?: string;
}

export interface LatencyDetail {
  /** Round trip, ms. */
  ms: number;
}

export interface RefreshDetail {
  /** When the token in force ends, Unix seconds. */
  expires_at: number;
}

export interface AuthDetail {
  sub?: string;
  /** Unix seconds. */
  expires_at?: number;
  admin?: boolean;
}

/** Event name -> `detail` type. */
export interface CorecastEventMap {
  state: StateDetail;
  welcome: Welcome;
  subscribed: AckEntry;
  message: Message;
  snapshot: Snapshot;
  gap: Gap;
  unsubscribed: UnsubscribedDetail;
  error: ErrorDetail;
  latency: LatencyDetail;
  refresh: RefreshDetail;
  auth: AuthDetail;
}

/** Per-subscription callbacks; a pattern's are called for every topic it covers. */
export interface SubscriptionHandlers<T = any> {
  onMessage?(m: Message<T>): void;
  onSnapshot?(s: Snapshot<T>): void;
  onGap?(g: Gap): void;
  /** Every ack entry of the subscription: the first subscribe and each resubscribe. */
  onAck?(a: AckEntry): void;
}

/** A handle returned by subscribe(). */
export interface Subscription {
  /** The topic or pattern, as given. */
  readonly topic: string;
  /** False after unsubscribe() or when the server refused or ended the subscription. */
  readonly active: boolean;
  /** Resolves with the first ack entry; rejects with CorecastError when the server refuses the
   *  subscription or it ends first. Never an unhandled rejection. */
  readonly ready: Promise<AckEntry>;
  /** Stops delivery to this handle; the last handle of a topic unsubscribes. Idempotent. */
  unsubscribe(): void;
}

/** A refused or failed request; codes: the server's, or `disconnected`, `queue_full`,
 *  `rate_limited`, `token_failed`, `admin_key_failed`, `auth_required`, `bad_url`,
 *  `unsubscribed`. */
export class CorecastError extends Error {
  constructor(code: string, message: string, reason?: string, topic?: string);
  readonly name: 'CorecastError';
  readonly code: string;
  readonly reason?: string;
  readonly topic?: string;
}

type Listener<K extends keyof CorecastEventMap> = (this: Corecast, ev: CustomEvent<CorecastEventMap[K]>) => any;

export class Corecast extends EventTarget {
  /** @throws TypeError when no WebSocket implementation is available. */
  constructor(url: string, options?: Options);
  readonly url: string;
  readonly state: State;
  readonly stats: Stats;
  /** Connects if not connected or trying already (idempotent). */
  connect(): void;
  /** To `disconnected`; no reconnect until connect(). Clears every timer. */
  close(): void;
  /** Drops the socket and connects now, backoff reset. */
  reconnect(): void;
  subscribe<T = any>(topic: string, handlers?: SubscriptionHandlers<T>, opts?: { since?: Position }): Subscription;
  /** Resolves with the reply (ack or pong); rejects with CorecastError. Queued while offline. */
  request(msg: { op: string; [key: string]: unknown }): Promise<any>;
  /** Round trip, ms. */
  ping(): Promise<number>;
  /** Last epoch/seq held for an exact topic, or null. */
  position(topic: string): Position | null;

  addEventListener<K extends keyof CorecastEventMap>(type: K, listener: Listener<K>, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof CorecastEventMap>(type: K, listener: Listener<K>, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/**
 * `<corecast-status variant="compact|card" stale-after-ms="5000">`: the state, latency, msgs/s,
 * reconnects and age of the last message, with a Reconnect button. Reflects `state` and
 * `stale` on the host. Parts: root, indicator, label, button, details, name, value, latency,
 * rate, age, reconnects, received, conn, reason.
 */
export class CorecastStatus extends HTMLElement {
  static readonly observedAttributes: string[];
  /** The client shown; setting another unbinds the previous one. */
  client: Corecast | null;
  connectedCallback(): void;
  disconnectedCallback(): void;
  attributeChangedCallback(name: string, oldValue: string | null, newValue: string | null): void;
}

declare global {
  interface HTMLElementTagNameMap {
    'corecast-status': CorecastStatus;
  }
}
