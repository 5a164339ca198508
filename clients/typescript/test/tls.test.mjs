// TLS and URLs: `https://` and `http://` work for both transports against a server with TLS on
// its port (a CA the test makes with openssl, trusted through NODE_EXTRA_CA_CERTS in a child
// process, as Node reads it only at start), and a server that cannot be reached or refuses is
// an `error` event, not only `reconnecting`.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import { join } from "node:path";
import { after, test } from "node:test";
import { WebSocket } from "ws";
import { connect } from "../dist/index.js";
import { freePort, startServer, until } from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** A CA and a server certificate for localhost and 127.0.0.1 (P-256), in a temporary dir. */
function pki() {
  const dir = mkdtempSync(join(tmpdir(), "modelcast-ts-pki-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const ssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  ssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ts test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  ssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
  writeFileSync(join(dir, "ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1");
  ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "server.pem", "-days", "2", "-extfile", "ext");
  return dir;
}

test("https:// and wss:// URLs work for both transports against a server with TLS", async () => {
  const dir = pki();
  const port = await freePort();
  const args = ["--tls-cert", join(dir, "server.pem"), "--tls-key", join(dir, "server.key")];
  const server = spawn(process.env.MODELCAST_BIN ?? join(import.meta.dirname, "../../../target/debug/modelcast"),
    ["--bind", `127.0.0.1:${port}`, "--log", "warn", ...args], { stdio: ["ignore", "ignore", "inherit"] });
  cleanups.push(() => server.kill("SIGKILL"));
  const listening = () =>
    new Promise((done) => {
      const socket = net.connect(port, "127.0.0.1", () => (socket.end(), done(true)));
      socket.once("error", () => done(false));
    });
  await until(listening, "the TLS server listens");
  const child = spawn(process.execPath, [join(import.meta.dirname, "tls-child.mjs"), String(port)], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: join(dir, "ca.pem") },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (chunk) => (out += chunk));
  const code = await new Promise((done) => child.once("exit", done));
  assert.equal(code, 0, out);
  assert.deepEqual(JSON.parse(out), {
    "sse over https": "sse-over-https",
    "websocket over https": "websocket-over-https",
    "websocket over wss": "websocket-over-wss",
  });
});

test("http:// works for the WebSocket transport as it does for Server-Sent Events", async () => {
  const server = await startServer();
  cleanups.push(() => server.stop());
  for (const options of [{ WebSocket }, { transport: "sse" }]) {
    const client = connect(server.base + "/ws", options);
    cleanups.push(() => client.close());
    await until(() => client.state === "open", `open over ${options.transport ?? "websocket"}`);
    client.close();
  }
});

test("a server that cannot be reached is an error event, once per outage, for both transports", async () => {
  const port = await freePort(); // nothing listens there
  for (const options of [{ WebSocket }, { transport: "sse" }]) {
    const errors = [];
    const client = connect(`ws://127.0.0.1:${port}/ws`, { ...options, minReconnectDelay: 20, maxReconnectDelay: 40 });
    cleanups.push(() => client.close());
    client.on("error", (error) => errors.push(error));
    if (options.transport === "sse") client.subscribe("alerts");
    await until(() => errors.length > 0, `an error over ${options.transport ?? "websocket"}`);
    assert.equal(errors[0].code, "unreachable", errors[0].message);
    await new Promise((done) => setTimeout(done, 300));
    assert.equal(errors.length, 1, `once, not per attempt: ${errors.map((e) => e.message)}`);
    assert.equal(client.state, "reconnecting");
    client.close();
  }
});
