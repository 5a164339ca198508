// The Server-Sent Events transport against a real server: the same subscriptions, typed
// frames and recovery as the WebSocket, and `auto` moving to it when a proxy refuses upgrades.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { connect } from "../dist/index.js";
import { alert, progress, proxy, publish, refusingUpgrades, sleep, startServer, take, until } from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});
const use = (client) => (cleanups.push(() => client.close()), client);

test("over Server-Sent Events: typed frames once and in order, recovered across a cut", async () => {
  const server = await startServer();
  const relay = await proxy(server.port);
  cleanups.push(() => server.stop(), () => relay.close());
  const client = use(connect(relay.ws, { transport: "sse", minReconnectDelay: 50, maxReconnectDelay: 200 }));
  assert.equal(client.transport, "sse");
  const alerts = client.subscribe("alerts");
  const downloads = client.subscribe("download_progress", { filter: { model_ids: ["m1"] } });
  const a = alerts[Symbol.asyncIterator]();
  const d = downloads[Symbol.asyncIterator]();
  await until(() => alerts.state === "subscribed" && downloads.state === "subscribed", "subscribed");
  await publish(server.base, [alert(1), alert(2), progress("m1", 10), progress("m2", 10)]);
  assert.deepEqual((await take(a, 2)).map((f) => f.data.alert_id), ["a1", "a2"]);
  const [first] = await take(d, 1);
  assert.equal(first.type, "download_progress_update");
  assert.equal(first.data.model_id, "m1", "the stream's filter is the subscription's");

  relay.cut();
  await until(() => client.state === "reconnecting", "the client notices");
  await publish(server.base, [alert(3), alert(4), alert(5)]);
  await sleep(300);
  relay.resume();
  const recovered = await take(a, 3);
  assert.deepEqual(recovered.map((f) => f.seq), [3, 4, 5], "exactly what was missed");
  await publish(server.base, alert(6));
  assert.equal((await take(a, 1))[0].seq, 6, "nothing twice after recovery");
  assert.equal(client.state, "open");
});

test("auto moves to Server-Sent Events when a proxy refuses the WebSocket upgrade", async () => {
  const server = await startServer();
  const relay = await refusingUpgrades(server.port);
  cleanups.push(() => server.stop(), () => relay.close());
  const { WebSocket } = await import("ws");
  const client = use(connect(relay.ws, { WebSocket, transport: "auto", minReconnectDelay: 50, maxReconnectDelay: 200 }));
  const moved = [];
  client.on("transport", (t) => moved.push(t));
  const sub = client.subscribe("alerts");
  const frames = sub[Symbol.asyncIterator]();
  await until(() => sub.state === "subscribed", "subscribed over the fallback", 10000);
  assert.equal(client.transport, "sse");
  assert.deepEqual(moved, ["sse"]);
  await publish(server.base, alert(1));
  assert.equal((await take(frames, 1))[0].data.alert_id, "a1");
});
