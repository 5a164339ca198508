// Test helpers: a real modelcast binary on a free port, HTTP publishing, a TCP proxy that can
// cut connections, HS256 tokens, and waiting for conditions.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const binary = process.env.MODELCAST_BIN ?? join(repo, "target/debug/modelcast");

/** A free TCP port on 127.0.0.1. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address();
  await new Promise((done) => server.close(done));
  return port;
}

/** Starts `modelcast` on `port` (a free one by default); resolves once /healthz answers. */
export async function startServer({ port, args = [], env = {} } = {}) {
  if (!existsSync(binary)) {
    throw new Error(`${binary} is missing: run \`cargo build -p modelcast-server\` first (or set MODELCAST_BIN)`);
  }
  port ??= await freePort();
  const child = spawn(binary, ["--bind", `127.0.0.1:${port}`, "--log", "warn", ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const base = `http://127.0.0.1:${port}`;
  await until(async () => {
    if (child.exitCode !== null) throw new Error(`modelcast exited with ${child.exitCode}`);
    try {
      return (await fetch(`${base}/healthz`)).ok;
    } catch {
      return false;
    }
  }, "the server answers /healthz");
  return {
    port,
    base,
    ws: `ws://127.0.0.1:${port}/ws`,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((done) => child.once("exit", done));
      child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Starts a private `redis-server` on a free port with an AOF fsynced every second (so a
 * restart gives the nodes' topics a new epoch, with the log kept); `restart()` kills it (-9)
 * and starts it again on the same port and data, `stop()` ends it. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "modelcast-redis-"));
  let child;
  const ping = async () => {
    try {
      const socket = net.connect(port, "127.0.0.1");
      const answer = await new Promise((done, fail) => {
        socket.once("error", fail);
        socket.once("data", (data) => done(String(data)));
        socket.write("PING\r\n");
      });
      socket.destroy();
      return answer.startsWith("+PONG");
    } catch {
      return false;
    }
  };
  const spawnIt = async () => {
    child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "",
      "--appendonly", "yes", "--appendfsync", "everysec"], { stdio: "ignore" });
    await until(ping, "redis-server answers PING");
  };
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((done) => child.once("exit", done));
    child.kill("SIGKILL");
    await exited;
  };
  await spawnIt();
  return {
    url: `redis://127.0.0.1:${port}`,
    async restart() {
      await kill();
      await spawnIt();
    },
    async stop() {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** POSTs one frame or an array to /api/publish; returns the parsed answer (throws unless 202). */
export async function publish(base, body) {
  const response = await fetch(`${base}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status !== 202) throw new Error(`publish: ${response.status} ${text}`);
  return JSON.parse(text);
}

/** A TCP proxy to `target`: `cut()` ends every connection and refuses new ones until `resume()`;
 * `freeze()` silently drops all traffic (until `resume()`). */
export async function proxy(targetPort) {
  const sockets = new Set();
  let refusing = false;
  let frozen = false;
  const server = net.createServer((client) => {
    if (refusing) return client.destroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    // Forwards unless frozen: a frozen proxy keeps both sockets open and drops every byte,
    // like a network path that died without a FIN.
    client.on("data", (chunk) => frozen || upstream.write(chunk));
    upstream.on("data", (chunk) => frozen || client.write(chunk));
    client.on("close", () => frozen || upstream.destroy());
    upstream.on("close", () => frozen || client.destroy());
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address();
  return {
    ws: `ws://127.0.0.1:${port}/ws`,
    cut() {
      refusing = true;
      for (const socket of sockets) socket.destroy();
    },
    resume() {
      refusing = false;
      frozen = false;
    },
    freeze() {
      frozen = true;
    },
    close() {
      this.cut();
      return new Promise((done) => server.close(done));
    },
  };
}

/** An HS256 JWT for `secret` with `claims` (expiring in `ttl` seconds unless `exp` is given). */
export function token(secret, claims = {}, ttl = 600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = { sub: "tester", exp: Math.floor(Date.now() / 1000) + ttl, ...claims };
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(body)}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/** Resolves once `check()` is truthy (polled every 20 ms); fails after `ms` naming `what`. */
export async function until(check, what, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((done) => setTimeout(done, 20));
  }
}

/** Takes `n` frames from an async iterator (fails after `ms`). */
export async function take(iterator, n, ms = 10000) {
  const frames = [];
  let timeout;
  const timer = new Promise((_, fail) => {
    timeout = setTimeout(() => fail(new Error(`only ${frames.length}/${n} frames arrived`)), ms);
  });
  const read = (async () => {
    while (frames.length < n) {
      const { value, done } = await iterator.next();
      if (done) throw new Error(`the iterator ended after ${frames.length}/${n} frames`);
      frames.push(value);
    }
    return frames;
  })();
  return Promise.race([read, timer]).finally(() => clearTimeout(timeout));
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** An alert frame for /api/publish. */
export const alert = (id, extra = {}) => ({
  type: "alert",
  data: { alert_id: `a${id}`, level: "info", title: `alert ${id}`, message: `message ${id}`, ...extra },
});

/** A download progress frame for /api/publish. */
export const progress = (model, percent) => ({
  type: "download_progress_update",
  data: {
    model_id: model,
    progress_percent: percent,
    downloaded_mb: percent,
    total_mb: 100,
    speed_mbps: 10,
    eta_seconds: 100 - percent,
    status: "downloading",
    can_pause: true,
    can_resume: true,
    can_cancel: true,
  },
});

/** A model status frame for /api/publish. */
export const status = (model, availability = "available") => ({
  type: "model_status_update",
  data: {
    model_id: model,
    availability_status: availability,
    is_available: availability === "available",
    is_loaded: false,
    size_mb: 1000,
    integrity_score: 1,
    performance_score: 1,
    usage_frequency: 0,
    update_available: false,
  },
});

/** A TCP proxy to `targetPort` that refuses WebSocket upgrades (403), as some corporate
 * proxies do, and passes everything else. */
export async function refusingUpgrades(targetPort) {
  const server = net.createServer((client) => {
    client.on("error", () => {});
    client.once("data", (first) => {
      if (/^upgrade:\s*websocket/im.test(first.toString("latin1"))) {
        client.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      const upstream = net.connect(targetPort, "127.0.0.1");
      upstream.on("error", () => {});
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address();
  return { ws: `ws://127.0.0.1:${port}/ws`, close: () => new Promise((done) => server.close(done)) };
}
