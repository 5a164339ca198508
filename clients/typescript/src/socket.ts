// What the client needs of a socket: the browser's WebSocket, the `ws` package's, or the
// Server-Sent Events transport (sse.ts) behind the same interface.

/**
 * An event handler property, checked bivariantly (as methods are): the browser's handlers take
 * DOM events, the `ws` package's its own event classes, and the client reads only the fields
 * named here.
 */
export type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

/** What the client needs of a WebSocket: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `WebSocket` from the `ws` package). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;
