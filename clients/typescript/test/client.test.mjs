// The client against a real modelcast server (target/debug/modelcast, started per test).
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { WebSocket } from "ws";
import { connect } from "../dist/index.js";
import {
  alert,
  progress,
  proxy,
  publish,
  sleep,
  startRedis,
  startServer,
  status,
  take,
  token,
  until,
} from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});
const use = (client) => (cleanups.push(() => client.close()), client);

test("frames of a topic arrive typed, once, in order", async () => {
  const server = await startServer();
  cleanups.push(() => server.stop());
  const client = use(connect(server.ws, { WebSocket }));
  const sub = client.subscribe("alerts");
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed");
  await publish(server.base, [1, 2, 3, 4, 5].map((i) => alert(i)));
  const got = await take(frames, 5);
  assert.deepEqual(got.map((f) => f.data.alert_id), ["a1", "a2", "a3", "a4", "a5"]);
  assert.deepEqual(got.map((f) => f.seq), [1, 2, 3, 4, 5]);
  assert.ok(got.every((f) => f.type === "alert" && f.topic === "alerts"));
  assert.equal(client.state, "open");
});

test("over Node's ws the connection is compressed (permessage-deflate) and frames arrive intact", async () => {
  const server = await startServer();
  cleanups.push(() => server.stop());
  const sockets = [];
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = use(connect(server.ws, { WebSocket: Recording }));
  const sub = client.subscribe("alerts");
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed");
  const message = "the model's weights failed their checksum; downloading them again. ".repeat(8);
  await publish(server.base, [1, 2, 3, 4, 5].map((i) => alert(i, { message })));
  const got = await take(frames, 5);
  assert.deepEqual(got.map((f) => f.data.alert_id), ["a1", "a2", "a3", "a4", "a5"]);
  assert.ok(got.every((f) => f.data.message === message));
  assert.match(sockets[0].extensions, /^permessage-deflate/, "ws offered deflate and the server agreed");
  const { compression } = await (await fetch(`${server.base}/api/stats`)).json();
  assert.equal(compression.connections, 1);
  assert.ok(compression.frames >= 1, `frames went compressed: ${JSON.stringify(compression)}`);
  assert.ok(compression.bytes_after < compression.bytes_before / 2, JSON.stringify(compression));
});

test("a cut connection reconnects and recovers what was published meanwhile, nothing twice", async () => {
  const server = await startServer();
  const relay = await proxy(server.port);
  cleanups.push(() => server.stop(), () => relay.close());
  const client = use(connect(relay.ws, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 }));
  const states = [];
  client.on("state", (s) => states.push(s));
  const sub = client.subscribe("alerts");
  const gaps = [];
  sub.on("gap", (gap) => gaps.push(gap));
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed");
  await publish(server.base, [1, 2, 3].map((i) => alert(i)));
  await take(frames, 3);

  relay.cut();
  await until(() => client.state === "reconnecting", "the client notices");
  await publish(server.base, [4, 5, 6, 7, 8].map((i) => alert(i)));
  await sleep(300); // a few refused attempts
  relay.resume();
  const recovered = await take(frames, 5);
  assert.deepEqual(recovered.map((f) => f.seq), [4, 5, 6, 7, 8]);
  await publish(server.base, alert(9));
  const [live] = await take(frames, 1);
  assert.equal(live.seq, 9, "nothing duplicated or skipped after recovery");
  assert.deepEqual(gaps, []);
  assert.ok(states.includes("reconnecting") && client.state === "open");
});

test("a connection that goes silent without closing is noticed by heartbeat and replaced", async () => {
  const server = await startServer({ env: { WEBSOCKET_HEARTBEAT_INTERVAL: "1" } });
  const relay = await proxy(server.port);
  cleanups.push(() => server.stop(), () => relay.close());
  const client = use(connect(relay.ws, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 }));
  const closes = [];
  client.on("close", (info) => closes.push(info.reason));
  const sub = client.subscribe("alerts");
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed");
  relay.freeze();
  await publish(server.base, alert(1));
  await until(() => client.state === "reconnecting", "the dead path is noticed", 8000);
  assert.deepEqual(closes, ["no heartbeat"]);
  relay.resume();
  const [frame] = await take(frames, 1);
  assert.equal(frame.data.alert_id, "a1", "what was published into the dead path is recovered");
});

test("after a server restart: a gap event, then the current state", async () => {
  const first = await startServer();
  const client = use(connect(first.ws, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 }));
  const sub = client.subscribe("model_status");
  const log = [];
  sub.on("gap", (gap) => log.push(["gap", gap]));
  sub.on("message", (frame) => log.push(["frame", frame]));
  await until(() => sub.state === "subscribed", "subscribed");
  await publish(first.base, status("alpha"));
  await until(() => log.length === 1, "the first status");
  const epoch = sub.epoch;

  await first.stop();
  const second = await startServer({ port: first.port });
  cleanups.push(() => second.stop());
  await publish(second.base, status("beta", "downloading"));
  await until(() => log.length >= 3, "a gap and the new state", 15000);
  const [kind, gap] = log[1];
  assert.equal(kind, "gap");
  assert.equal(gap.previousEpoch, epoch);
  assert.notEqual(gap.epoch, epoch, "a restarted server has another epoch");
  assert.equal(gap.afterSeq, 1);
  const [, frame] = log[2];
  assert.equal(frame.type, "model_status_update");
  assert.equal(frame.data.model_id, "beta");
});

test("a replay under a new epoch (Redis back with everysec) delivers nothing twice", async () => {
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const server = await startServer({ args: ["--redis-url", redis.url] });
  cleanups.push(() => server.stop());
  const client = use(connect(server.ws, { WebSocket }));
  const sub = client.subscribe("alerts");
  const log = [];
  sub.on("gap", (gap) => log.push(["gap", gap.afterSeq]));
  sub.on("message", (frame) => log.push([frame.late ? "late" : "frame", frame.data.alert_id]));
  await until(() => sub.state === "subscribed", "subscribed");
  await publish(server.base, [0, 1, 2, 3, 4].map((k) => alert(k)));
  await until(() => log.length === 5, "five alerts");

  await redis.restart();
  for (const k of [5, 6]) {
    await until(async () => {
      try {
        return Boolean(await publish(server.base, alert(k)));
      } catch {
        return false; // 503 while the node reconnects to Redis
      }
    }, `alert ${k} published`, 15000);
  }
  await until(() => log.filter(([, id]) => id === "a6").length > 0, "the alert after the restart", 15000);
  await sleep(200); // a replay would still be on its way
  assert.deepEqual(log.slice(5), [
    ["gap", 5],
    ["frame", "a5"],
    ["frame", "a6"],
  ]);
});

test("without a token on a server that requires one: said at once, not at the auth deadline", async () => {
  const secret = "a-test-secret-that-is-long-enough-for-hs256";
  // A deadline far beyond the test's patience: only the welcome's hint can make this pass.
  const server = await startServer({ env: { MODELCAST_JWT_SECRET: secret, MODELCAST_AUTH_DEADLINE: "120" } });
  cleanups.push(() => server.stop());
  const client = use(connect(server.ws, { WebSocket }));
  const states = [];
  const errors = [];
  const closes = [];
  client.on("state", (state) => states.push(state));
  client.on("error", (error) => errors.push(error.code));
  client.on("close", (info) => closes.push(info));
  client.subscribe("alerts");
  await until(() => client.state === "closed", "the client stops", 10000);
  assert.deepEqual(errors, ["unauthorized"]);
  assert.equal(closes.length, 1);
  assert.equal(closes[0].code, 4401);
  assert.equal(closes[0].reconnecting, false);
  assert.match(closes[0].reason, /requires a token/);
  assert.ok(!states.includes("open"), `never said open: ${states}`);
});

test("replaced by another connection with the same id (4002): closed, no reconnect", async () => {
  const server = await startServer();
  cleanups.push(() => server.stop());
  const url = `${server.ws}/tab-1`;
  const client = use(connect(url, { WebSocket, minReconnectDelay: 20 }));
  const errors = [];
  client.on("error", (e) => errors.push(e.code));
  await until(() => client.state === "open", "open");
  const other = new WebSocket(url);
  cleanups.push(() => other.close());
  await until(() => client.state === "closed", "the replaced client closes");
  assert.deepEqual(errors, ["replaced"]);
  await sleep(300);
  assert.equal(other.readyState, WebSocket.OPEN, "the replacement was not fought");
});

test("disconnected by an operator (4403), over WebSocket and over SSE: closed, said, no reconnect", async () => {
  const secret = "a-test-secret-that-is-long-enough-for-hs256";
  const key = "a-publish-key-of-32-characters--";
  const server = await startServer({ env: { MODELCAST_JWT_SECRET: secret, MODELCAST_PUBLISH_KEYS: key } });
  cleanups.push(() => server.stop());
  const clients = ["websocket", "sse"].map((transport) => {
    const client = use(connect(server.ws, { WebSocket, transport, token: token(secret, { sub: "mallory" }), minReconnectDelay: 20 }));
    const seen = { errors: [], closes: [], client };
    client.on("error", (e) => seen.errors.push(e.code));
    client.on("close", (info) => seen.closes.push(info));
    client.subscribe("alerts");
    return seen;
  });
  await until(() => clients.every((c) => c.client.state === "open"), "both open");
  await sleep(200); // the SSE stream's subscription reached the server
  const response = await fetch(`${server.base}/api/disconnect`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ user: "mallory" }),
  });
  assert.equal(response.status, 200, await response.text());
  await until(() => clients.every((c) => c.client.state === "closed"), "both stop");
  for (const { errors, closes } of clients) {
    assert.deepEqual(errors, ["revoked"]);
    assert.equal(closes.length, 1);
    assert.equal(closes[0].code, 4403);
    assert.equal(closes[0].reconnecting, false);
  }
  await sleep(300);
  assert.ok(clients.every((c) => c.closes.length === 1), "no reconnect");
});

test("filter and maxHz reach the server", async () => {
  const server = await startServer();
  cleanups.push(() => server.stop());
  const client = use(connect(server.ws, { WebSocket }));
  const sub = client.subscribe("download_progress", { filter: { model_ids: ["m1"] }, maxHz: 1 });
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed");
  // Spaced out beyond the server's per-model throttle; one per second per model reaches us.
  await publish(server.base, progress("m2", 10));
  await publish(server.base, progress("m1", 10));
  const [first] = await take(frames, 1);
  assert.equal(first.data.model_id, "m1");
  for (const percent of [20, 30, 40]) {
    await sleep(150);
    await publish(server.base, progress("m1", percent));
  }
  const [next] = await take(frames, 1, 3000);
  assert.equal(next.data.progress_percent, 40, "max_hz kept only the newest value");
  assert.ok(next.seq > first.seq);
});

test("getToken: called on connect and again when the server says the token expires", async () => {
  const secret = "a-test-secret-that-is-long-enough-for-hs256";
  const server = await startServer({ env: { MODELCAST_JWT_SECRET: secret, MODELCAST_AUTH_DEADLINE: "5" } });
  cleanups.push(() => server.stop());
  let calls = 0;
  const getToken = () => {
    calls += 1;
    return token(secret, {}, calls === 1 ? 2 : 600); // the first token expires in 2 s
  };
  const client = use(connect(server.ws, { WebSocket, getToken }));
  const closes = [];
  client.on("close", (info) => closes.push(info.code));
  const sub = client.subscribe("alerts");
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed");
  assert.equal(calls, 1);
  await until(() => calls === 2, "a refresh after expiry", 8000);
  await sleep(500);
  await publish(server.base, alert(1));
  const [frame] = await take(frames, 1);
  assert.equal(frame.data.alert_id, "a1");
  assert.deepEqual(closes, [], "the connection survived the refresh");
});

test("a forbidden topic fails its subscription only", async () => {
  const secret = "a-test-secret-that-is-long-enough-for-hs256";
  const server = await startServer({
    env: { MODELCAST_JWT_SECRET: secret, MODELCAST_TOPIC_ROLES: "analytics_updates=admin" },
  });
  cleanups.push(() => server.stop());
  const client = use(connect(server.ws, { WebSocket, token: token(secret, { roles: ["viewer"] }) }));
  const forbidden = client.subscribe("analytics_updates");
  const allowed = client.subscribe("alerts");
  const failure = forbidden[Symbol.asyncIterator]().next();
  await assert.rejects(failure, (e) => e.code === "forbidden" && e.topic === "analytics_updates");
  assert.equal(forbidden.state, "failed");
  const frames = allowed[Symbol.asyncIterator]();
  await until(() => allowed.state === "subscribed", "the other topic works");
  await publish(server.base, alert(1));
  assert.equal((await take(frames, 1))[0].data.alert_id, "a1");
  assert.equal(client.state, "open");
});

test("publish with an audience: only its user receives it; a bad audience is refused with the field", async () => {
  const secret = "a-test-secret-that-is-long-enough-for-hs256";
  const server = await startServer({ env: { MODELCAST_JWT_SECRET: secret } });
  cleanups.push(() => server.stop());
  // A backend (no publish keys on this server, so any non-browser connection may publish).
  const backend = use(connect(server.ws, { WebSocket, token: token(secret, { sub: "backend" }) }));
  const alice = use(connect(server.ws, { WebSocket, token: token(secret, { sub: "alice" }) }));
  const bob = use(connect(server.ws, { WebSocket, token: token(secret, { sub: "bob" }) }));
  const subs = [alice, bob].map((c) => c.subscribe("alerts"));
  const [aliceFrames, bobFrames] = subs.map((s) => s[Symbol.asyncIterator]());
  await until(() => subs.every((s) => s.state === "subscribed") && backend.state === "open", "ready");
  const forAlice = await backend.publish(alert(1), { audience: { users: ["alice"] } });
  assert.equal(forAlice.status, "sent");
  const forAll = await backend.publish(alert(2));
  assert.equal(forAll.seq, forAlice.seq + 1);
  assert.deepEqual((await take(aliceFrames, 2)).map((f) => f.data.alert_id), ["a1", "a2"]);
  const [first] = await take(bobFrames, 1);
  assert.equal(first.data.alert_id, "a2", "bob never gets alice's alert");
  assert.equal(first.audience, undefined);
  await assert.rejects(
    backend.publish(alert(3), { audience: { users: [] } }),
    (e) => e.code === "invalid_message" && e.message.includes("audience.users"),
  );
});
