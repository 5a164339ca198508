// The Server-Sent Events transport: `GET /sse` streams behind the same socket interface the
// client uses for a WebSocket, so subscriptions, recovery, heartbeats and reconnects are the
// same code on both.
//
// An event stream is one-way and carries the topics named when it opens; so this socket
// answers the client's frames itself: it says `welcome` at once, gathers the `subscribe`
// frames sent in one turn and opens one stream per set of options (filter, `max_hz`) with
// those topics — recovering each from the `since` the client sent, or from the stream's own
// last event id when the set of topics changes — and answers `ping` with `pong` while its
// streams are alive. Tokens go as `Authorization: Bearer`. Streams are read with `fetch`
// (browsers and Node 18+ have it), never `EventSource`, which can send no header.
import type { WebSocketLike } from "./socket.js";
import { TOPIC_ORDER } from "./generated/topics.js";

const TOPICS: readonly string[] = TOPIC_ORDER;

/** A subscribe frame, as the client sends it. */
type Subscribe = {
  action: "subscribe";
  topic: string;
  id?: string;
  since?: { epoch: string; seq: number };
  filter?: { model_ids?: string[] };
  max_hz?: number;
};

/** One open stream: its topics, options, and the last event id it gave. */
type Stream = {
  key: string;
  topics: string[];
  filter?: { model_ids?: string[] };
  maxHz?: number;
  abort: AbortController;
};

/** The `fetch` the socket uses (a test or an old runtime may pass its own). */
export type FetchLike = (input: string, init: { headers: Record<string, string>; signal: AbortSignal }) => Promise<Response>;

/** A socket over `GET /sse` streams (see the module comment). */
export class SseSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  #base: string;
  #token: string | undefined;
  #fetch: FetchLike;
  #subscriptions = new Map<string, Subscribe>();
  #streams = new Map<string, Stream>();
  /** The last event id per set of options, kept when its stream is replaced. */
  #lastIds = new Map<string, string>();
  #pending = false;
  /** Option sets whose stream must reopen though its topics did not change (a topic asked
   * again, e.g. after an `unavailable` answer). */
  #dirty = new Set<string>();
  #lastBytesAt = Date.now();
  #heartbeatMs = 30_000;
  #welcomed = false;

  /** `url` is the client's WebSocket URL (`ws://host/ws?token=…`); the streams go to the same
   * host over HTTP. */
  constructor(url: string, fetchImpl: FetchLike = globalThis.fetch as unknown as FetchLike) {
    const parsed = new URL(url);
    this.#token = parsed.searchParams.get("token") ?? undefined;
    parsed.protocol = parsed.protocol === "wss:" || parsed.protocol === "https:" ? "https:" : "http:";
    parsed.pathname = "/sse";
    parsed.search = "";
    this.#base = parsed.toString();
    this.#fetch = fetchImpl;
    // Open at once: the streams open when the client says what to subscribe to.
    queueMicrotask(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.({});
      this.#deliver({
        type: "welcome",
        data: {
          connection_id: "sse",
          protocol_version: 1,
          heartbeat_interval_seconds: this.#heartbeatMs / 1000,
          topics: TOPICS,
          epoch: "",
          timestamp: new Date().toISOString(),
        },
      });
    });
  }

  send(data: string): void {
    if (this.readyState !== 1) return;
    const frame = JSON.parse(data) as { action: string; topic?: string; token?: string; id?: string };
    switch (frame.action) {
      case "subscribe": {
        this.#subscriptions.set(frame.topic!, frame as Subscribe);
        for (const stream of this.#streams.values()) {
          if (stream.topics.includes(frame.topic!)) this.#dirty.add(stream.key);
        }
        return this.#schedule();
      }
      case "unsubscribe":
        this.#subscriptions.delete(frame.topic!);
        this.#deliver({ type: "unsubscribed", data: { topic: frame.topic, request_id: frame.id } });
        return this.#schedule();
      case "auth":
        this.#token = frame.token;
        return this.#schedule(true);
      case "ping":
        // Alive while the streams send anything (events or their heartbeat comments).
        if (Date.now() - this.#lastBytesAt < 2.5 * this.#heartbeatMs) {
          this.#deliver({ type: "pong", data: { request_id: frame.id, timestamp: new Date().toISOString() } });
        }
        return;
      default:
        this.#deliver({
          type: "error",
          data: { code: "unknown_action", message: `${frame.action} is not available over Server-Sent Events`, request_id: frame.id },
        });
    }
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    for (const stream of this.#streams.values()) stream.abort.abort();
    this.#streams.clear();
    this.onclose?.({ code, reason });
  }

  /** Opens the streams the subscriptions need, at the end of this turn (every `subscribe` of
   * a resubscribe arrives in one turn). `all` reopens every stream (a new token). */
  #schedule(all = false): void {
    if (this.#pending) return;
    this.#pending = true;
    queueMicrotask(() => {
      this.#pending = false;
      if (this.readyState === 1) this.#sync(all);
    });
  }

  #sync(all: boolean): void {
    const groups = new Map<string, Subscribe[]>();
    for (const sub of this.#subscriptions.values()) {
      const key = JSON.stringify([sub.filter?.model_ids ?? null, sub.max_hz ?? null]);
      groups.set(key, [...(groups.get(key) ?? []), sub]);
    }
    for (const [key, stream] of this.#streams) {
      const wanted = groups.get(key)?.map((s) => s.topic).sort();
      if (all || this.#dirty.has(key) || !wanted || wanted.join() !== stream.topics.join()) {
        stream.abort.abort();
        this.#streams.delete(key);
      }
    }
    this.#dirty.clear();
    for (const [key, subs] of groups) {
      if (this.#streams.has(key)) continue;
      this.#openStream(key, subs, this.#lastIds.get(key));
    }
  }

  #openStream(key: string, subs: Subscribe[], lastEventId: string | undefined): void {
    const topics = subs.map((s) => s.topic).sort();
    const stream: Stream = { key, topics, filter: subs[0]?.filter, maxHz: subs[0]?.max_hz, abort: new AbortController() };
    this.#streams.set(key, stream);
    const query = new URLSearchParams();
    for (const topic of topics) query.append("topic", topic);
    const ids = stream.filter?.model_ids;
    if (ids) query.set("model_ids", ids.join(","));
    if (stream.maxHz !== undefined) query.set("max_hz", String(stream.maxHz));
    // Where to recover from: the client's positions (a new connection) or the stream's own
    // last id (the set of topics changed).
    const position = lastEventId ?? encodePosition(subs);
    if (position) query.set("last_event_id", position);
    const headers: Record<string, string> = { accept: "text/event-stream" };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    void this.#read(stream, `${this.#base}?${query}`, headers);
  }

  async #read(stream: Stream, url: string, headers: Record<string, string>): Promise<void> {
    let response: Response;
    try {
      response = await this.#fetch(url, { headers, signal: stream.abort.signal });
    } catch (error) {
      if (!stream.abort.signal.aborted) {
        // Said as an error, then closed: the client reconnects (an unreachable server, a
        // refused certificate, a wrong address all land here).
        const message = `cannot open the event stream at ${this.#base}: ${String(error)}`;
        this.#deliver({ type: "error", data: { code: "unreachable", message } });
        this.close(1006, "the stream could not be opened");
      }
      return;
    }
    if (!response.ok || !response.body) {
      const text = await response.text().catch(() => "");
      let message = text;
      let code = "refused";
      try {
        const error = (JSON.parse(text) as { error?: { message?: string; code?: string } }).error;
        message = error?.message ?? text;
        code = error?.code ?? code;
      } catch {
        // not JSON
      }
      message = message || `HTTP ${response.status}`;
      if (response.status !== 401) this.#deliver({ type: "error", data: { code, message } });
      this.close(response.status === 401 ? 4401 : 1006, message);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.#lastBytesAt = Date.now();
        buffer += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          this.#event(stream, block);
        }
      }
    } catch {
      // aborted, or the connection was lost
    }
    if (!stream.abort.signal.aborted && this.#streams.get(stream.key) === stream) {
      this.close(1006, "the event stream ended");
    }
  }

  #event(stream: Stream, block: string): void {
    let data: string | undefined;
    for (const line of block.split("\n")) {
      if (line.startsWith("id: ")) this.#lastIds.set(stream.key, line.slice(4));
      else if (line.startsWith("data: ")) data = line.slice(6);
    }
    if (data === undefined) return;
    const frame = JSON.parse(data) as {
      type: string;
      data: { heartbeat_interval_seconds?: number; code?: string; message?: string };
    };
    if (frame.type === "error" && frame.data.code === "revoked") {
      // An operator ended the stream: closed as a WebSocket would be (4403), never reopened.
      stream.abort.abort();
      this.close(4403, frame.data.message ?? "revoked");
      return;
    }
    if (frame.type === "welcome") {
      // This socket said `welcome` already; the server's tells the heartbeat interval.
      this.#heartbeatMs = (frame.data.heartbeat_interval_seconds ?? 30) * 1000;
      if (this.#welcomed) return;
      this.#welcomed = true;
      return;
    }
    this.onmessage?.({ data });
  }

  #deliver(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

/** The server's event id for the positions the client holds (`since` of each subscribe). */
function encodePosition(subs: Subscribe[]): string | undefined {
  const parts = subs
    .filter((s) => s.since)
    .map((s) => [TOPICS.indexOf(s.topic), s.since!.epoch, s.since!.seq] as const)
    .filter(([index]) => index >= 0)
    .sort((a, b) => a[0] - b[0])
    .map(([index, epoch, seq]) => `.${index}:${epoch}:${seq}`);
  return parts.length ? `1${parts.join("")}` : undefined;
}
