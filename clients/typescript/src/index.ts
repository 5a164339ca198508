/**
 * `@modelcast/client`: a typed WebSocket client for modelcast.
 *
 * It reconnects with backoff and jitter, resubscribes every subscription with `since`, and
 * delivers each message once and in order; a gap the server could not fill is an explicit
 * event before the current state. Types come from the server's JSON Schemas (`schemas/`).
 *
 * ```ts
 * import { connect } from "@modelcast/client";
 * const client = connect("ws://127.0.0.1:8000/ws");
 * const sub = client.subscribe("download_progress", { filter: { model_ids: ["t2v-a14b"] } });
 * for await (const frame of sub) {
 *   if (frame.type === "download_progress_update") console.log(frame.data.progress_percent);
 * }
 * ```
 */
export {
  connect,
  Client,
  REMEMBERED_MESSAGES,
  Subscription,
  ModelcastError,
  type AnyTopicFrame,
  type CloseInfo,
  type Envelope,
  type ClientEvents,
  type ConnectOptions,
  type ConnectionState,
  type Gap,
  type SubscribeOptions,
  type SubscriptionEvents,
  type SubscriptionState,
  type TopicFrame,
  type Transport,
  type TypeOf,
} from "./client.js";
export type { WebSocketConstructor, WebSocketLike } from "./socket.js";
export { SseSocket, type FetchLike } from "./sse.js";
export {
  registerPush,
  listPushDevices,
  unregisterPush,
  notificationOf,
  type PushDevice,
  type PushFetch,
  type RegisterPushOptions,
} from "./push.js";
export { TOPIC_TYPES, CONTROL_TYPES, PROTOCOL_VERSION } from "./generated/topics.js";
export type * from "./generated/server-message.js";
export type {
  ClientMessage,
  SubscribeRequest,
  SubscriptionFilter,
  Since,
} from "./generated/client-message.js";
