import { Emitter } from "./emitter.js";
import type { Audience, SubscribeRequest, SubscriptionFilter } from "./generated/client-message.js";
import type {
  ErrorMessage,
  Lagging,
  Published,
  ServerMessage,
  StateCleared,
  Subscribed,
  Topic,
  Welcome,
} from "./generated/server-message.js";
import type { TOPIC_TYPES } from "./generated/topics.js";
import type { WebSocketConstructor, WebSocketLike } from "./socket.js";
import { type FetchLike, SseSocket } from "./sse.js";

/** The message type names a topic carries. */
export type TypeOf<T extends Topic> = (typeof TOPIC_TYPES)[T][number];

/** A frame of topic `T` as delivered: `{type, data, topic, seq, late?}`, narrowed on `type`. */
export type TopicFrame<T extends Topic> = Envelope<T> & Extract<ServerMessage, { type: TypeOf<T> }>;

/** What every topic frame carries besides `type` and `data`. */
export interface Envelope<T extends Topic = Topic> {
  /** The topic. */
  topic: T;
  /** The position in the topic (see the README's delivery contract). */
  seq: number;
  /** `true` when the frame is the current value of its key, below the position held. */
  late?: true;
}

/** Any frame that belongs to a topic. */
export type AnyTopicFrame = { [T in Topic]: TopicFrame<T> }[Topic];

/** Options of {@link connect}. */
export interface ConnectOptions {
  /** The WebSocket implementation; defaults to `globalThis.WebSocket` (Node 20 has none). */
  WebSocket?: WebSocketConstructor;
  /** A fixed token (JWT), sent as `?token=` on every connect. */
  token?: string;
  /**
   * Called on every connect and whenever the server says the token expires (an
   * `unauthorized` error, or close 4401); its result is sent as the token.
   */
  getToken?: () => string | Promise<string>;
  /** First reconnect delay in ms (default 500); doubles per failed attempt, with jitter. */
  minReconnectDelay?: number;
  /** Longest reconnect delay in ms (default 15,000). */
  maxReconnectDelay?: number;
  /**
   * How to reach the server: `"websocket"` (the default), `"sse"` (Server-Sent Events at
   * `/sse` on the same host: for networks that refuse WebSocket upgrades; the same
   * subscriptions, recovery and events), or `"auto"` (a WebSocket, and Server-Sent Events from
   * the moment a WebSocket cannot open while the server answers HTTP).
   */
  transport?: Transport;
  /** The `fetch` of the Server-Sent Events transport (default `globalThis.fetch`). */
  fetch?: FetchLike;
}

/** How the client reaches the server (see {@link ConnectOptions.transport}). */
export type Transport = "websocket" | "sse" | "auto";

/** Where the connection is. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Why a connection closed, and whether the client tries again. */
export interface CloseInfo {
  /** The WebSocket close code (1006 when the connection was lost without one). */
  code: number;
  /** The close reason sent by the server, if any. */
  reason: string;
  /** Whether the client reconnects on its own. */
  reconnecting: boolean;
}

/** A problem the server reported (an `error` frame) or the client detected. */
export class ModelcastError extends Error {
  /** The server's error code (`forbidden`, `unauthorized`, …), or the client's own
   * (`replaced`, `revoked`, `closed`, `already_subscribed`). */
  readonly code: string;
  /** The topic the error concerns, when known. */
  readonly topic?: Topic;

  /** An error with a machine-readable `code`. */
  constructor(code: string, message: string, topic?: Topic) {
    super(message);
    this.name = "ModelcastError";
    this.code = code;
    this.topic = topic;
  }
}

/** A gap the server could not fill: messages between `afterSeq` and `resumeSeq` are lost. */
export interface Gap {
  /** The topic. */
  topic: Topic;
  /** The epoch of the last message this subscription received. */
  previousEpoch: string;
  /** The last `seq` this subscription received. */
  afterSeq: number;
  /** The epoch from now on (a different one after a server restart). */
  epoch: string;
  /** Delivery resumes after this `seq`; the current state (frames marked `late`) follows. */
  resumeSeq: number;
}

/** Options of {@link Client.subscribe}. */
export interface SubscribeOptions {
  /** Only messages about these models (and those about no model). */
  filter?: SubscriptionFilter;
  /** At most this many updates per second per model; transitions are never dropped. */
  maxHz?: number;
}

/** Events of a {@link Subscription}. */
export interface SubscriptionEvents<T extends Topic> {
  /** A frame, once, in order (frames marked `late` are the current value of their key). */
  message: TopicFrame<T>;
  /** A gap the server could not fill; emitted before what the server still holds and the
   * current state. Of those, a message equal (`type` and `data`) to one of the last
   * {@link REMEMBERED_MESSAGES} delivered before the gap is not delivered again: a failover's
   * new epoch numbers what was delivered anew. */
  gap: Gap;
  /** The server is collapsing this connection's queue (it reads too slowly). */
  lagging: Lagging;
  /** The server confirmed the subscription (also after every reconnect). */
  subscribed: Subscribed;
  /** A retained key was removed (`DELETE /api/state/...`): forget its value. */
  state_cleared: StateCleared;
  /** The subscription failed (e.g. `forbidden`); it is not retried. */
  error: ModelcastError;
}

/** Where a subscription is. */
export type SubscriptionState = "pending" | "subscribed" | "failed" | "closed";

/** Events of a {@link Client}. */
export interface ClientEvents {
  /** The connection state changed. */
  state: ConnectionState;
  /** A connection was established (every reconnect too). */
  welcome: Welcome;
  /** A connection closed. */
  close: CloseInfo;
  /** An error not tied to one subscription. */
  error: ModelcastError;
  /** The server is collapsing this connection's queue. */
  lagging: Lagging;
  /** Every frame received, before any other handling (for debugging views). */
  frame: ServerMessage;
  /** With `transport: "auto"`: the client moved to Server-Sent Events. */
  transport: "websocket" | "sse";
}

type Waiter<V> = { resolve: (result: IteratorResult<V>) => void; reject: (error: unknown) => void };

/** How many delivered messages a subscription remembers by content (`type` and `data`), so
 * that a replay under a new epoch does not hand them to the application again. */
export const REMEMBERED_MESSAGES = 1024;

/** A message's identity across epochs: a 53-bit hash (cyrb53) of its `type` and `data` as
 * JSON. Messages carry their `timestamp`, so equal content is the same message. */
function fingerprint(frame: { type: string; data?: unknown }): number {
  const text = JSON.stringify([frame.type, frame.data]);
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** One topic's stream across reconnects: each message once, in order. */
export class Subscription<T extends Topic> extends Emitter<SubscriptionEvents<T>>
  implements AsyncIterable<TopicFrame<T>>
{
  /** The topic. */
  readonly topic: T;
  /** The options it was made with. */
  readonly options: SubscribeOptions;
  /** Where the subscription is. */
  state: SubscriptionState = "pending";
  /** The epoch of the topic's sequence, once subscribed. */
  epoch: string | undefined;
  /** The last `seq` delivered (the position a reconnect recovers from). */
  seq: number | undefined;
  #client: Client;
  #requestId = 0;
  #iterators = new Set<{ queue: TopicFrame<T>[]; waiter?: Waiter<TopicFrame<T>> }>();
  #failure: ModelcastError | undefined;
  /** Fingerprints of the last {@link REMEMBERED_MESSAGES} messages delivered. */
  #recent: number[] = [];
  /** `#recent` at the last unrecovered `subscribed`: a frame after it with one of these
   * fingerprints repeats a delivered message (numbered anew under a new epoch, or resent as
   * state) and is not delivered again. */
  #deliveredBefore = new Set<number>();

  /** @internal Made by {@link Client.subscribe}. */
  constructor(client: Client, topic: T, options: SubscribeOptions) {
    super();
    this.#client = client;
    this.topic = topic;
    this.options = options;
  }

  /** Stops receiving the topic (and ends its iterators). */
  unsubscribe(): void {
    if (this.state === "closed") return;
    this.#client._unsubscribe(this);
    this._end();
  }

  /** Iterates the topic's frames, once each, in order, across reconnects. Ends on
   * `unsubscribe()` or `client.close()`; throws if the subscription fails. Frames are buffered
   * per iterator from the moment it starts. */
  [Symbol.asyncIterator](): AsyncIterator<TopicFrame<T>> {
    const it: { queue: TopicFrame<T>[]; waiter?: Waiter<TopicFrame<T>> } = { queue: [] };
    this.#iterators.add(it);
    const done = (): IteratorResult<TopicFrame<T>> => ({ value: undefined, done: true });
    return {
      next: () => {
        const value = it.queue.shift();
        if (value !== undefined) return Promise.resolve({ value, done: false });
        if (this.#failure) return Promise.reject(this.#failure);
        if (this.state === "closed") return Promise.resolve(done());
        return new Promise((resolve, reject) => (it.waiter = { resolve, reject }));
      },
      return: () => {
        this.#iterators.delete(it);
        return Promise.resolve(done());
      },
    };
  }

  /** @internal The subscribe frame for a (re)connect: with `since` once a position is held. */
  _request(): SubscribeRequest & { action: "subscribe"; id: string } {
    this.#requestId += 1;
    const request: SubscribeRequest & { action: "subscribe"; id: string } = {
      action: "subscribe",
      topic: this.topic,
      id: `${this.topic}#${this.#requestId}`,
    };
    if (this.options.filter) request.filter = this.options.filter;
    if (this.options.maxHz !== undefined) request.max_hz = this.options.maxHz;
    if (this.epoch !== undefined && this.seq !== undefined) {
      request.since = { epoch: this.epoch, seq: this.seq };
    }
    return request;
  }

  /** @internal Whether `requestId` is this subscription's latest request. */
  _owns(requestId: unknown): boolean {
    return requestId === `${this.topic}#${this.#requestId}`;
  }

  /** @internal `subscribed`: a gap is reported before the state frames that follow. */
  _subscribed(data: Subscribed): void {
    const held = this.epoch !== undefined && this.seq !== undefined;
    if (held && !data.recovered) {
      this.#deliveredBefore = new Set(this.#recent);
      this.emit("gap", {
        topic: this.topic,
        previousEpoch: this.epoch!,
        afterSeq: this.seq!,
        epoch: data.epoch,
        resumeSeq: data.seq,
      });
    }
    if (!data.recovered || !held) this.seq = data.seq;
    this.epoch = data.epoch;
    this.state = "subscribed";
    this.emit("subscribed", data);
  }

  /** @internal A frame of this topic: dropped if already delivered (by `seq`, or by content
   * across an epoch change: the position still moves), else delivered. */
  _frame(frame: TopicFrame<T>): void {
    if (this.state !== "subscribed") return;
    const { seq, late } = frame as Envelope<T>;
    if (!late) {
      if (this.seq !== undefined && seq <= this.seq) return;
      this.seq = seq;
    }
    const print = fingerprint(frame as { type: string; data?: unknown });
    if (this.#deliveredBefore.has(print)) return;
    if (this.#recent.push(print) > REMEMBERED_MESSAGES) this.#recent.shift();
    this.emit("message", frame);
    for (const it of this.#iterators) {
      if (it.waiter) {
        it.waiter.resolve({ value: frame, done: false });
        it.waiter = undefined;
      } else {
        it.queue.push(frame);
      }
    }
  }

  /** @internal Forwards a connection-wide or topic event. */
  _emit<K extends keyof SubscriptionEvents<T>>(event: K, value: SubscriptionEvents<T>[K]): void {
    this.emit(event, value);
  }

  /** @internal The connection dropped: wait for the resubscribe. */
  _suspend(): void {
    if (this.state === "subscribed") this.state = "pending";
  }

  /** @internal The server refused the subscription. */
  _fail(error: ModelcastError): void {
    this.state = "failed";
    this.#failure = error;
    this.#client._forget(this);
    this.emit("error", error);
    for (const it of this.#iterators) {
      it.waiter?.reject(error);
      it.waiter = undefined;
    }
  }

  /** @internal Ends the iterators. */
  _end(): void {
    if (this.state !== "failed") this.state = "closed";
    for (const it of this.#iterators) {
      it.waiter?.resolve({ value: undefined, done: true });
      it.waiter = undefined;
    }
  }
}

/** Close codes (the server's `modelcast_protocol::close`). */
const REPLACED = 4002;
const UNAUTHORIZED = 4401;
/** An operator disconnected this user or connection, or revoked the token: never reconnect
 * with it (a new token, given to a new client, may connect). */
const REVOKED = 4403;
const POLICY_VIOLATION = 1008;
const NORMAL = 1000;

/** A connection to a modelcast server that reconnects and recovers on its own. */
export class Client extends Emitter<ClientEvents> {
  /** The WebSocket URL (without the token). */
  readonly url: string;
  /** Where the connection is. */
  state: ConnectionState = "connecting";
  /** The connection id the server gave (from `welcome`). */
  connectionId: string | undefined;
  /** What the client uses now: `"websocket"` or `"sse"` (with `transport: "auto"`, `"sse"`
   * once a WebSocket could not open). */
  transport: "websocket" | "sse";
  #opened = false;
  /** An `unreachable` error was emitted since the last successful open. */
  #unreachableSaid = false;
  #options: ConnectOptions;
  #WebSocket: WebSocketConstructor;
  #ws: WebSocketLike | undefined;
  #subs = new Map<Topic, Subscription<Topic>>();
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #lastFrameAt = 0;
  #closed = false;
  /** Publishes waiting for their answer, by request id. */
  #publishes = new Map<string, { resolve: (p: Published) => void; reject: (e: ModelcastError) => void }>();
  #nextPublish = 0;

  /** @internal Use {@link connect}. */
  constructor(url: string, options: ConnectOptions = {}) {
    super();
    const WebSocketImpl =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.transport = options.transport === "sse" ? "sse" : "websocket";
    if (!WebSocketImpl && this.transport === "websocket") {
      throw new TypeError(
        "no WebSocket implementation: pass one, e.g. connect(url, { WebSocket }) with `import { WebSocket } from \"ws\"`, or use transport: \"sse\"",
      );
    }
    this.url = url;
    this.#options = options;
    this.#WebSocket = WebSocketImpl ?? SseSocket;
    void this.#open();
  }

  /** Subscribes to `topic`; resubscribed with `since` after every reconnect. One
   * subscription per topic at a time (unsubscribe first to change its options). */
  subscribe<T extends Topic>(topic: T, options: SubscribeOptions = {}): Subscription<T> {
    if (this.#closed) throw new ModelcastError("closed", "the client is closed", topic);
    if (this.#subs.has(topic)) {
      throw new ModelcastError("already_subscribed", `already subscribed to ${topic}`, topic);
    }
    const sub = new Subscription(this, topic, options);
    this.#subs.set(topic, sub as unknown as Subscription<Topic>);
    if (this.state === "open") this.#send(sub._request());
    return sub;
  }

  /** Publishes `message` (`{type, data}`, as subscribers receive it) over this connection, the
   * server's WebSocket publish channel (a backend's, on a server without publish keys or a
   * connection opened with one): resolves with the server's answer (`sent` with its `seq`,
   * `held` or `filtered`), rejects with the server's error (e.g. `invalid_message` naming the
   * field). With `audience`, the message reaches only the connections whose token's user or
   * roles are in it; subscribers never see the audience. Rejects at once if not connected:
   * publishes are not queued across reconnects (retrying is the caller's decision). */
  publish(
    message: { type: string; data: Record<string, unknown>; topic?: Topic },
    options: { audience?: Audience } = {},
  ): Promise<Published> {
    if (this.state !== "open" || this.transport !== "websocket") {
      const why = this.transport === "websocket" ? `the connection is ${this.state}` : "the SSE transport cannot publish";
      return Promise.reject(new ModelcastError("not_connected", `cannot publish: ${why}`));
    }
    const id = `publish-${++this.#nextPublish}`;
    return new Promise<Published>((resolve, reject) => {
      this.#publishes.set(id, { resolve, reject });
      const request: Record<string, unknown> = { action: "publish", type: message.type, data: message.data, id };
      if (message.topic !== undefined) request.topic = message.topic;
      if (options.audience !== undefined) request.audience = options.audience;
      this.#send(request);
    });
  }

  /** The live subscriptions. */
  subscriptions(): Subscription<Topic>[] {
    return [...this.#subs.values()];
  }

  /** Closes the connection for good; every subscription's iterators end. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#stopHeartbeat();
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onopen = null;
      // Node's `ws` reports closing a socket that is still connecting as an `error` event, after
      // this returns: a handler that ignores it, or it is an uncaught exception.
      ws.onerror = () => {};
      try {
        ws.close(NORMAL, "client closed");
      } catch {
        // Closing a socket that is still connecting throws in some implementations.
      }
    }
    for (const sub of this.#subs.values()) sub._end();
    this.#subs.clear();
    this.#setState("closed");
  }

  /** @internal */
  _unsubscribe(sub: { topic: Topic }): void {
    if ((this.#subs.get(sub.topic) as unknown) !== sub) return;
    this.#subs.delete(sub.topic);
    if (this.state === "open") this.#send({ action: "unsubscribe", topic: sub.topic });
  }

  /** @internal A failed subscription leaves the set that is resubscribed. */
  _forget(sub: { topic: Topic }): void {
    if ((this.#subs.get(sub.topic) as unknown) === sub) this.#subs.delete(sub.topic);
  }

  async #open(): Promise<void> {
    if (this.#closed) return;
    // The state is already `connecting` (the first time) or `reconnecting` (set by #retry).
    let url = this.url;
    let token = this.#options.token;
    if (this.#options.getToken) {
      try {
        token = await this.#options.getToken();
      } catch (error) {
        this.emit("error", new ModelcastError("unauthorized", `getToken failed: ${String(error)}`));
        this.#retry();
        return;
      }
      if (this.#closed) return;
    }
    if (token) {
      const withToken = new URL(url);
      withToken.searchParams.set("token", token);
      url = withToken.toString();
    }
    let ws: WebSocketLike;
    this.#opened = false;
    try {
      ws = this.transport === "sse" ? new SseSocket(url, this.#options.fetch) : new this.#WebSocket(webSocketUrl(url));
    } catch (error) {
      this.emit("error", new ModelcastError("invalid_url", String(error)));
      this.close();
      return;
    }
    this.#ws = ws;
    ws.onmessage = (event) => this.#receive(event.data);
    ws.onclose = (event) => this.#lost(event.code, event.reason);
    ws.onerror = () => {
      // The close event follows with the details.
    };
  }

  #receive(data: unknown): void {
    this.#lastFrameAt = Date.now();
    let frame: ServerMessage;
    try {
      frame = JSON.parse(typeof data === "string" ? data : String(data)) as ServerMessage;
    } catch {
      this.emit("error", new ModelcastError("invalid_json", "the server sent a frame that is not JSON"));
      return;
    }
    this.emit("frame", frame);
    if (frame.topic !== undefined && frame.seq !== undefined) {
      this.#subs.get(frame.topic)?._frame(frame as unknown as TopicFrame<Topic>);
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this.#welcome(frame.data);
      case "subscribed":
        this.#unreachableSaid = false;
        return this.#subs.get(frame.data.topic)?._subscribed(frame.data);
      case "error":
        return this.#error(frame.data);
      case "lagging":
        this.emit("lagging", frame.data);
        for (const sub of this.#subs.values()) sub._emit("lagging", frame.data);
        return;
      case "state_cleared":
        return this.#subs.get(frame.data.topic)?._emit("state_cleared", frame.data);
      case "published":
        return this.#answered(frame.data.request_id)?.resolve(frame.data);
      default:
        return; // pong, unsubscribed: nothing to do
    }
  }

  #welcome(welcome: Welcome): void {
    if (welcome.auth_deadline_seconds !== undefined && !this.#options.token && !this.#options.getToken) {
      // The server requires a token and would close this connection (4401) at its deadline:
      // say what is missing now, as that close would, and stop.
      const reason = "this server requires a token (connect with `token` or `getToken`)";
      this.emit("error", new ModelcastError("unauthorized", reason));
      this.emit("close", { code: UNAUTHORIZED, reason, reconnecting: false });
      this.close();
      return;
    }
    this.#opened = true;
    // Over SSE the welcome is the transport's own; its streams open after (`subscribed`).
    if (this.transport === "websocket") this.#unreachableSaid = false;
    this.#attempt = 0;
    this.connectionId = welcome.connection_id;
    this.#setState("open");
    this.emit("welcome", welcome);
    for (const sub of this.#subs.values()) this.#send(sub._request());
    this.#startHeartbeat(welcome.heartbeat_interval_seconds * 1000);
  }

  /** The publish waiting for the answer to `id`, taken out of the waiting set. */
  #answered(id: unknown): { resolve: (p: Published) => void; reject: (e: ModelcastError) => void } | undefined {
    if (typeof id !== "string") return undefined;
    const waiting = this.#publishes.get(id);
    this.#publishes.delete(id);
    return waiting;
  }

  #error(error: ErrorMessage): void {
    const publish = this.#answered(error.request_id);
    if (publish) {
      publish.reject(new ModelcastError(error.code, error.message));
      return;
    }
    const owner = [...this.#subs.values()].find((sub) => sub._owns(error.request_id));
    if (owner) {
      const failure = new ModelcastError(error.code, error.message, owner.topic);
      if (error.code === "unavailable") {
        // The cluster could not serve the position now: ask again shortly.
        setTimeout(() => owner.state !== "closed" && this.#send(owner._request()), 1000);
        return;
      }
      owner._fail(failure);
      return;
    }
    if (error.code === "unauthorized" && this.#options.getToken) {
      void this.#refreshToken();
      return;
    }
    if (error.code === "unreachable") {
      // Once per outage, not per attempt.
      if (this.#unreachableSaid) return;
      this.#unreachableSaid = true;
    }
    this.emit("error", new ModelcastError(error.code, error.message));
  }

  async #refreshToken(): Promise<void> {
    try {
      const token = await this.#options.getToken!();
      this.#send({ action: "auth", token });
    } catch (error) {
      this.emit("error", new ModelcastError("unauthorized", `getToken failed: ${String(error)}`));
    }
  }

  #lost(code: number, reason: string): void {
    this.#ws = undefined;
    if (!this.#opened && !this.#closed && !this.#unreachableSaid) {
      // Said once per outage (not per attempt): the server is down, refuses, or the address,
      // the certificate or a proxy is wrong. Reconnecting goes on.
      this.#unreachableSaid = true;
      const detail = reason ? `${code}: ${reason}` : `${code}`;
      this.emit("error", new ModelcastError("unreachable", `cannot connect to ${this.url} (closed with ${detail}); retrying`));
    }
    if (this.#options.transport === "auto" && this.transport === "websocket" && !this.#opened) {
      void this.#fallBack();
    }
    this.#stopHeartbeat();
    for (const sub of this.#subs.values()) sub._suspend();
    let reconnecting = !this.#closed;
    if (code === REPLACED) {
      // Another connection took this id: fighting it would evict each other forever.
      reconnecting = false;
      this.emit("error", new ModelcastError("replaced", "another connection replaced this one"));
    } else if (code === REVOKED) {
      reconnecting = false;
      this.emit("error", new ModelcastError("revoked", reason || "an operator ended this connection"));
    } else if (code === UNAUTHORIZED && !this.#options.getToken) {
      reconnecting = false;
      this.emit("error", new ModelcastError("unauthorized", reason || "the token was refused or expired"));
    }
    this.emit("close", { code, reason, reconnecting });
    if (!reconnecting) {
      this.close();
      return;
    }
    this.#retry(code === POLICY_VIOLATION ? 5000 : 0);
  }

  /** A WebSocket could not open: if the server answers HTTP (so something between refuses
   * the upgrade), the next attempts use Server-Sent Events. */
  async #fallBack(): Promise<void> {
    const health = new URL(httpUrl(this.url));
    health.pathname = "/healthz";
    health.search = "";
    try {
      const fetchImpl = this.#options.fetch ?? (globalThis.fetch as unknown as FetchLike);
      const response = await fetchImpl(health.toString(), { headers: {}, signal: AbortSignal.timeout(5000) });
      if (response.ok && this.transport === "websocket") {
        this.transport = "sse";
        this.emit("transport", "sse");
      }
    } catch {
      // The server itself is away: keep trying the WebSocket.
    }
  }

  #retry(atLeast = 0): void {
    if (this.#closed) return;
    this.#setState("reconnecting");
    const min = this.#options.minReconnectDelay ?? 500;
    const max = this.#options.maxReconnectDelay ?? 15000;
    const ceiling = Math.min(max, min * 2 ** this.#attempt);
    // Equal jitter: never less than half the step, so a crowd spreads without stampeding.
    const delay = Math.max(atLeast, ceiling / 2 + Math.random() * (ceiling / 2));
    this.#attempt += 1;
    this.#timer = setTimeout(() => void this.#open(), delay);
  }

  #startHeartbeat(intervalMs: number): void {
    this.#stopHeartbeat();
    this.#heartbeat = setInterval(() => {
      const silent = Date.now() - this.#lastFrameAt;
      if (silent > 2.5 * intervalMs) {
        // Nothing, not even our pong, for two and a half intervals: the connection is dead.
        const ws = this.#ws;
        if (ws) {
          ws.onclose = ws.onmessage = null;
          ws.onerror = () => {};
          ws.close();
        }
        this.#lost(1006, "no heartbeat");
      } else if (silent >= intervalMs) {
        this.#send({ action: "ping" });
      }
    }, intervalMs);
  }

  #stopHeartbeat(): void {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  #send(message: object): void {
    const ws = this.#ws;
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(message));
  }

  #setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    if (state !== "open") {
      // No answer comes on this connection any more: the publish may or may not have been
      // stored (publish again with care: there is no idempotency key on this channel).
      for (const waiting of this.#publishes.values()) {
        waiting.reject(new ModelcastError("connection_lost", `the connection was ${state} before the server answered`));
      }
      this.#publishes.clear();
    }
    this.emit("state", state);
  }
}

/** `url` for a WebSocket: `http:` → `ws:`, `https:` → `wss:` (`ws:`/`wss:` as they are). */
export function webSocketUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed.toString();
}

/** `url` for HTTP (event streams, health): `ws:` → `http:`, `wss:` → `https:`. */
export function httpUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol === "ws:") parsed.protocol = "http:";
  else if (parsed.protocol === "wss:") parsed.protocol = "https:";
  return parsed.toString();
}

/** Connects to a modelcast server (e.g. `ws://127.0.0.1:8000/ws`; `wss://`, `http://` and
 * `https://` too, for either transport). */
export function connect(url: string, options: ConnectOptions = {}): Client {
  return new Client(url, options);
}
