// Push helpers against the real server: `registerPush` subscribes with the server's VAPID key
// and registers what the browser's PushManager returns, with the user's token; the device is
// listed, pushed to while its user is offline, and removed. The browser's service-worker and
// Push APIs are stand-ins here (Node has none, and headless Chromium cannot reach a push
// service); the push endpoint is a local HTTP server that records what arrives.
import assert from "node:assert/strict";
import { createECDH, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { ModelcastError, listPushDevices, notificationOf, registerPush, unregisterPush } from "../dist/index.js";
import { binary, publish, startServer, token, until } from "./helpers.mjs";

const SECRET = "push-ts-secret-0123456789-0123456789";
const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** A push endpoint that records each request (headers and body length). */
async function pushService() {
  const received = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      received.push({ path: req.url, headers: req.headers, length: Buffer.concat(chunks).length });
      res.writeHead(201).end();
    });
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  cleanups.push(() => new Promise((done) => server.close(done)));
  return { origin: `http://127.0.0.1:${server.address().port}`, received };
}

/** A browser as far as `registerPush` sees it: service workers, PushManager, Notification. */
function browser({ endpoint, permission = "granted", existing = null }) {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  const calls = { subscribe: [], unsubscribed: 0, registered: [] };
  const subscription = (key) => ({
    endpoint,
    options: { applicationServerKey: key },
    toJSON: () => ({
      endpoint,
      expirationTime: null,
      keys: { p256dh: ecdh.getPublicKey().toString("base64url"), auth: randomBytes(16).toString("base64url") },
    }),
    unsubscribe: async () => {
      calls.unsubscribed++;
      return true;
    },
  });
  let current = existing ? subscription(existing) : null;
  const registration = {
    pushManager: {
      getSubscription: async () => current,
      subscribe: async ({ applicationServerKey, userVisibleOnly }) => {
        assert.equal(userVisibleOnly, true);
        calls.subscribe.push(Buffer.from(applicationServerKey));
        current = subscription(applicationServerKey.buffer);
        return current;
      },
    },
  };
  const globals = {
    navigator: { serviceWorker: { register: async (url) => (calls.registered.push(url), registration) } },
    PushManager: class {},
    Notification: { requestPermission: async () => permission },
  };
  const saved = Object.fromEntries(Object.keys(globals).map((k) => [k, Object.getOwnPropertyDescriptor(globalThis, k)]));
  for (const [k, v] of Object.entries(globals)) Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
  cleanups.push(() => {
    for (const [k, d] of Object.entries(saved)) {
      if (d) Object.defineProperty(globalThis, k, d);
      else delete globalThis[k];
    }
  });
  return calls;
}

function vapidKey() {
  const dir = mkdtempSync(join(tmpdir(), "modelcast-ts-push-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const pem = execFileSync(binary, ["push-keys"], { stdio: ["ignore", "pipe", "ignore"] });
  writeFileSync(join(dir, "vapid.pem"), pem);
  return { dir, key: join(dir, "vapid.pem") };
}

async function pushServer() {
  const { dir, key } = vapidKey();
  const server = await startServer({
    args: ["--jwt-secret", SECRET, "--vapid-private-key", key, "--vapid-subject", "mailto:ops@example.com",
      "--push-insecure-endpoints", "--data-dir", join(dir, "data")],
  });
  cleanups.push(() => server.stop());
  return server;
}

test("registerPush registers this browser for its user; the device is pushed to, listed and removed", async () => {
  const server = await pushServer();
  const service = await pushService();
  const endpoint = `${service.origin}/push/laptop`;
  const alice = token(SECRET, { sub: "alice", roles: ["user"] });
  // A subscription made earlier with another key is replaced.
  const calls = browser({ endpoint, existing: new Uint8Array(65).buffer });
  const device = await registerPush(server.ws, { token: alice, serviceWorker: "/sw.js", types: ["download_status_change"] });
  assert.deepEqual(calls.registered, ["/sw.js"]);
  assert.equal(calls.unsubscribed, 1, "the subscription with another key is dropped");
  const { key } = await (await fetch(`${server.base}/api/push/vapid-public-key`)).json();
  assert.deepEqual(calls.subscribe[0], Buffer.from(key, "base64url"), "subscribed with the server's key");
  assert.equal(device.kind, "web");
  assert.equal(device.endpoint, endpoint);
  assert.deepEqual(device.types, ["download_status_change"]);

  const devices = await listPushDevices(server.base, alice);
  assert.deepEqual(devices.map((d) => d.id), [device.id]);
  await publish(server.base, {
    type: "download_status_change",
    audience: { users: ["alice"] },
    data: { model_id: "m", old_status: "downloading", new_status: "completed", progress_percent: 100,
      reason: "done", timestamp: "2025-08-27T10:30:00Z" },
  });
  await until(() => service.received.length === 1, "the push reaches the endpoint");
  assert.equal(service.received[0].headers["content-encoding"], "aes128gcm");
  assert.match(service.received[0].headers.authorization, /^vapid t=.+, k=.+$/);

  assert.equal(await unregisterPush(server.base, alice, { endpoint }), true);
  assert.equal(await unregisterPush(server.base, alice, { endpoint }), false);
  assert.deepEqual(await listPushDevices(server.base, alice), []);
});

test("registerPush says why it cannot: no push on the server, no permission, no token, no browser support", async () => {
  const plain = await startServer();
  cleanups.push(() => plain.stop());
  const server = await pushServer();
  const service = await pushService();
  const alice = token(SECRET, { sub: "alice" });
  const code = async (promise) => {
    try {
      await promise;
    } catch (e) {
      assert.ok(e instanceof ModelcastError, String(e));
      return e.code;
    }
    assert.fail("it should have been refused");
  };
  const saved = Object.getOwnPropertyDescriptor(globalThis, "navigator");
  Object.defineProperty(globalThis, "navigator", { value: {}, configurable: true, writable: true });
  assert.equal(await code(registerPush(plain.base, { token: alice, serviceWorker: "/sw.js" })), "push_unsupported");
  if (saved) Object.defineProperty(globalThis, "navigator", saved);
  browser({ endpoint: `${service.origin}/push/x` });
  assert.equal(await code(registerPush(plain.base, { token: alice, serviceWorker: "/sw.js" })), "push_off");
  assert.equal(await code(registerPush(server.base, { token: "not-a-jwt", serviceWorker: "/sw.js" })), "unauthorized");
  browser({ endpoint: "ftp://example.com/push" });
  assert.equal(await code(registerPush(server.base, { token: alice, serviceWorker: "/sw.js" })), "invalid_registration");
  browser({ endpoint: `${service.origin}/push/x`, permission: "denied" });
  assert.equal(await code(registerPush(server.base, { token: alice, serviceWorker: "/sw.js" })), "permission_denied");
});

test("notificationOf: a title per model and status, one tag per model and type", () => {
  const done = notificationOf({ type: "download_status_change", data: { model_id: "t2v", new_status: "completed", reason: "ok" } });
  assert.equal(done.title, "t2v: completed");
  assert.equal(done.options.body, "ok");
  assert.equal(done.options.tag, "download_status_change:t2v");
  const alert = notificationOf({ type: "alert", data: { alert_id: "a1", level: "critical", title: "GPU on fire", message: "m" } });
  assert.equal(alert.title, "GPU on fire");
  assert.equal(alert.options.tag, "alert:a1");
  assert.equal(notificationOf({ type: "corruption_detection", topic: "alerts", truncated: true }).options.body, "open the app for the details");
});
