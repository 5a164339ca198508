/**
 * Push to a user who is not connected: register this browser with a modelcast server that has
 * push on (`MODELCAST_VAPID_PRIVATE_KEY`), and turn a pushed frame into a notification in the
 * service worker. The server pushes the same JSON frame the WebSocket carries.
 *
 * ```ts
 * import { registerPush } from "@modelcast/client";
 * const device = await registerPush("https://hub.example.com", { token, serviceWorker: "/sw.js" });
 * ```
 *
 * In the service worker (`/sw.js`):
 *
 * ```ts
 * import { notificationOf } from "@modelcast/client";
 * self.addEventListener("push", (event) => {
 *   const { title, options } = notificationOf(event.data?.json());
 *   event.waitUntil(self.registration.showNotification(title, options));
 * });
 * ```
 */
import { ModelcastError, httpUrl } from "./client.js";

export { notificationOf } from "./notification.js";

/** A device as the server lists it (never its keys). */
export interface PushDevice {
  /** The device's id (`DELETE` takes it). */
  id: string;
  /** `web`, `fcm` or `apns`. */
  kind: string;
  /** A browser's push endpoint. */
  endpoint?: string;
  /** The message types this device wants (`null`: every pushed type). */
  types: string[] | null;
  /** When it was registered (Unix seconds). */
  registered: number;
}

/** The `fetch` the helpers use (the global one by default). */
export type PushFetch = (input: string, init?: {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
}) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;

/** What {@link registerPush} needs. */
export interface RegisterPushOptions {
  /** The user's JWT (a device is its user's; anonymous registrations are refused). */
  token: string;
  /** The service worker that shows the pushes: its script URL (registered here) or an
   * existing registration. */
  serviceWorker: string | ServiceWorkerRegistration;
  /** Only these message types (default: every type the server pushes). */
  types?: string[];
  /** Ask for notification permission first (default `true`; a browser asks once). */
  askPermission?: boolean;
  /** The `fetch` to use. */
  fetch?: PushFetch;
}

/**
 * Registers this browser for push: checks the browser can, asks for permission, subscribes
 * with the server's VAPID key (replacing a subscription made with another key) and sends the
 * subscription with the user's token. Rejects with a {@link ModelcastError} whose `code` says
 * why: `push_unsupported` (no service workers or Push API here, or not a secure context),
 * `permission_denied`, `push_off` (the server has no push), `unauthorized`, or the server's
 * refusal (`invalid_registration`, `too_many_devices`).
 */
export async function registerPush(server: string, options: RegisterPushOptions): Promise<PushDevice> {
  const nav = globalThis.navigator as Navigator | undefined;
  if (!nav?.serviceWorker || typeof (globalThis as { PushManager?: unknown }).PushManager === "undefined") {
    throw new ModelcastError(
      "push_unsupported",
      "this browser cannot receive pushes here (no service workers or Push API; pages need https:// or localhost)",
    );
  }
  if (options.askPermission ?? true) {
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      throw new ModelcastError("permission_denied", `notifications are ${permission === "denied" ? "blocked for this site" : "not allowed yet"}`);
    }
  }
  const doFetch = options.fetch ?? (globalThis.fetch as unknown as PushFetch);
  const base = origin(server);
  const keyResponse = await doFetch(`${base}/api/push/vapid-public-key`);
  if (!keyResponse.ok) throw await refusal(keyResponse, "the server's push key");
  const { key } = (await keyResponse.json()) as { key: string };
  const registration =
    typeof options.serviceWorker === "string"
      ? await nav.serviceWorker.register(options.serviceWorker)
      : options.serviceWorker;
  const applicationServerKey = fromBase64Url(key);
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription.options?.applicationServerKey, applicationServerKey)) {
    await subscription.unsubscribe();
    subscription = null;
  }
  subscription ??= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey });
  const body: Record<string, unknown> = { ...subscription.toJSON() };
  if (options.types) body.types = options.types;
  const response = await doFetch(`${base}/api/push/subscriptions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${options.token}` },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await refusal(response, "registering this browser");
  return (await response.json()) as PushDevice;
}

/** The user's devices registered on `server`. */
export async function listPushDevices(server: string, token: string, fetch?: PushFetch): Promise<PushDevice[]> {
  const doFetch = fetch ?? (globalThis.fetch as unknown as PushFetch);
  const response = await doFetch(`${origin(server)}/api/push/subscriptions`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (!response.ok) throw await refusal(response, "listing devices");
  return ((await response.json()) as { devices: PushDevice[] }).devices;
}

/** Removes one of the user's devices (by `id` or the browser's `endpoint`); `false` when it was
 * not registered. */
export async function unregisterPush(
  server: string,
  token: string,
  device: { id: string } | { endpoint: string },
  fetch?: PushFetch,
): Promise<boolean> {
  const doFetch = fetch ?? (globalThis.fetch as unknown as PushFetch);
  const response = await doFetch(`${origin(server)}/api/push/subscriptions`, {
    method: "DELETE",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(device),
  });
  if (response.status === 404) return false;
  if (!response.ok) throw await refusal(response, "removing the device");
  return true;
}

/** The server's origin from any of its URLs (`ws://host/ws` → `http://host`). */
function origin(server: string): string {
  return new URL(httpUrl(server)).origin;
}

async function refusal(response: { status: number; json(): Promise<unknown> }, what: string): Promise<ModelcastError> {
  let code = `http_${response.status}`;
  let message = `${what}: HTTP ${response.status}`;
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) code = body.error.code;
    if (body.error?.message) message = `${what}: ${body.error.message}`;
  } catch {
    // not JSON: the status says it
  }
  return new ModelcastError(code, message);
}

function fromBase64Url(text: string): Uint8Array<ArrayBuffer> {
  const base64 = text.replaceAll("-", "+").replaceAll("_", "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const binary = atob(base64);
  const bytes = new Uint8Array(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function sameKey(current: ArrayBuffer | null | undefined, wanted: Uint8Array): boolean {
  if (!current) return false;
  const bytes = new Uint8Array(current);
  return bytes.length === wanted.length && bytes.every((b, i) => b === wanted[i]);
}
