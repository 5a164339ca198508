// Headless Chromium driven over the DevTools protocol (no Puppeteer): open a page, evaluate
// expressions, collect console errors and exceptions, take screenshots.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { WebSocket } from "ws";

export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), "modelcast-chromium-"));
  const child = spawn(
    process.env.CHROMIUM ?? "chromium",
    ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
     "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1400,1000",
     "--remote-debugging-port=0", `--user-data-dir=${profile}`, "about:blank"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const endpoint = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("chromium did not start in 30 s")), 30000);
    child.once("error", (e) => reject(new Error(`headless Chromium is needed (apt-get install chromium): ${e.message}`)));
    createInterface({ input: child.stderr }).on("line", (line) => {
      const found = line.match(/DevTools listening on (ws:\/\/\S+)/);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
  });
  const port = new URL(endpoint).port;
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const page = targets.find((t) => t.type === "page");
  const ws = new WebSocket(page.webSocketDebuggerUrl, { perMessageDeflate: false });
  await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));

  let id = 0;
  const pending = new Map();
  const problems = [];
  let loaded = () => {};
  ws.on("message", (data) => {
    const msg = JSON.parse(data);
    if (msg.method === "Page.loadEventFired") loaded();
    if (msg.id !== undefined) {
      const call = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) call.reject(new Error(`${msg.error.message}`));
      else call.resolve(msg.result);
    } else if (msg.method === "Runtime.exceptionThrown") {
      problems.push(`exception: ${msg.params.exceptionDetails.exception?.description ?? msg.params.exceptionDetails.text}`);
    } else if (msg.method === "Runtime.consoleAPICalled" && msg.params.type === "error") {
      problems.push(`console.error: ${msg.params.args.map((a) => a.value ?? a.description).join(" ")}`);
    } else if (msg.method === "Log.entryAdded" && msg.params.entry.level === "error") {
      problems.push(`log: ${msg.params.entry.text} ${msg.params.entry.url ?? ""}`);
    }
  });
  const call = (method, params = {}) =>
    new Promise((resolve, reject) => {
      id += 1;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, method, params }));
    });
  await call("Runtime.enable");
  await call("Log.enable");
  await call("Page.enable");

  return {
    /** Console errors, uncaught exceptions and failed loads seen so far. */
    problems,
    /** Navigates and waits for the page's load event. */
    async goto(url) {
      const load = new Promise((resolve) => (loaded = resolve));
      await call("Page.navigate", { url });
      await load;
    },
    /** Evaluates `expression` in the page; returns its value (awaiting promises). */
    async evaluate(expression) {
      const { result, exceptionDetails } = await call("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
      if (exceptionDetails) throw new Error(`evaluate ${expression}: ${exceptionDetails.exception?.description ?? exceptionDetails.text}`);
      return result.value;
    },
    /** Sends a DevTools Protocol command as it is (`Browser.grantPermissions`, …). */
    send: call,
    /** A PNG of the viewport (whole page when `full`). */
    async screenshot(full = true) {
      const { data } = await call("Page.captureScreenshot", { format: "png", captureBeyondViewport: full });
      return Buffer.from(data, "base64");
    },
    async close() {
      ws.close();
      child.kill("SIGKILL");
    },
  };
}
