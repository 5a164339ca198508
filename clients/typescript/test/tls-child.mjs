// Run by tls.test.mjs with NODE_EXTRA_CA_CERTS set to the test's CA (Node reads it at start):
// the client over https:// (both transports) and http:// against a server with TLS on its
// port. Prints one JSON line of what it saw; the parent asserts.
import { WebSocket } from "ws";
import { connect } from "../dist/index.js";

const [port] = process.argv.slice(2);
const https = `https://localhost:${port}/ws`;
const seen = {};

async function firstAlert(client, id) {
  const alerts = client.subscribe("alerts");
  const it = alerts[Symbol.asyncIterator]();
  const deadline = Date.now() + 10_000;
  while (alerts.state !== "subscribed") {
    if (Date.now() > deadline) throw new Error(`${id}: never subscribed`);
    await new Promise((done) => setTimeout(done, 20));
  }
  const body = { type: "alert", data: { alert_id: id, level: "info", title: "t", message: "m" } };
  const answer = await fetch(`https://localhost:${port}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (answer.status !== 202) throw new Error(`${id}: publish ${answer.status}`);
  for (;;) {
    const { value } = await it.next();
    if (value.type === "alert") return value.data.alert_id;
  }
}

for (const [name, url, options] of [
  ["sse over https", https, { transport: "sse" }],
  ["websocket over https", https, { WebSocket }],
  ["websocket over wss", `wss://localhost:${port}/ws`, { WebSocket }],
]) {
  const client = connect(url, options);
  try {
    seen[name] = await firstAlert(client, name.replaceAll(" ", "-"));
  } catch (error) {
    seen[name] = `failed: ${error}`;
  } finally {
    client.close();
  }
}
console.log(JSON.stringify(seen));
