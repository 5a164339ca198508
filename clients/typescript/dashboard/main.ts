// The dashboard at `/`: what an operator keeps open. Driven only by the public protocol,
// through @modelcast/client (this is its first user), plus GET /api/stats for server figures
// and /api/presence, /api/demand for who listens and which models are wanted.
// Plain DOM and SVG: no framework, no chart library, nothing to load from elsewhere.
import { connect, ModelcastError, registerPush, TOPIC_TYPES } from "../src/index.js";
import type { AnyTopicFrame, ServerMessage, Topic } from "../src/index.js";

type Download = {
  percent: number;
  status: string;
  speed?: number;
  eta?: number | null;
  downloaded?: number;
  total?: number;
  note?: string;
};

type Model = {
  id: string;
  status: string;
  available?: boolean;
  loaded?: boolean;
  sizeMb?: number;
  vramMb?: number;
  health?: { status: string; score?: number };
  changedAt: string;
  download?: Download;
  /** When the newest download event applied was made (ms): an older one arriving later (a
   * throttled update released after the download failed) is not applied over it. */
  downloadAt?: number;
  /** A download of it completed (its availability may not have been reported). */
  downloaded?: boolean;
  fallback?: string;
  queue?: string;
};

type FeedItem = { level: string; title: string; detail: string; at: string };

type Task = {
  id: string;
  model?: string | null;
  status: string;
  percent: number;
  step?: number | null;
  steps?: number | null;
  eta?: number | null;
  finishedAt?: number;
};

type QueueEntry = { task: string; model?: string | null; position: number; status: string };

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const models = new Map<string, Model>();
const feed: FeedItem[] = [];
const raw: string[] = [];
type Point = { t: number; v: number };
const series: Record<string, Point[]> = { cpu: [], memory: [], vram: [], gpu: [], active: [] };
const WINDOW_MS = 5 * 60_000; // the charts' time axis: the last five minutes at most
const tasks = new Map<string, Task>();
const FINISHED_SHOWN = 3; // finished tasks kept on the page, newest first
let queue: QueueEntry[] = [];
let queueSummary = "";
let usageTotal = 1; // the usage chart's top: the number of models
let dirty = true; // the first render shows the empty panels' texts
let blocked: string | undefined; // why the page can show nothing (a token is needed)
const previous: Record<string, number> = {}; // per topic: `published` at the last stats poll

const h = (tag: string, attrs: Record<string, string> = {}, ...children: (Node | string)[]) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
};
const fmt = (n: number | undefined | null, digits = 1) =>
  n === undefined || n === null || Number.isNaN(n) ? "–" : n.toFixed(digits);
const time = (iso: string) => {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
};
const eta = (s: number | null | undefined) =>
  s === undefined || s === null ? "" : s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;

function model(id: string, at: string): Model {
  let m = models.get(id);
  if (!m) {
    m = { id, status: "unknown", changedAt: at };
    models.set(id, m);
  }
  return m;
}

function push(level: string, title: string, detail: string, at: string) {
  feed.unshift({ level, title, detail, at });
  feed.length = Math.min(feed.length, 80);
}

function apply(frame: AnyTopicFrame) {
  switch (frame.type) {
    case "model_status_update": {
      const d = frame.data;
      const m = model(d.model_id, d.timestamp);
      if (m.status !== d.availability_status) m.changedAt = d.timestamp;
      Object.assign(m, { status: d.availability_status, available: d.is_available, loaded: d.is_loaded, sizeMb: d.size_mb, vramMb: d.vram_mb });
      break;
    }
    case "batch_model_status_update":
      for (const d of frame.data.models) {
        const m = model(d.model_id, frame.data.timestamp);
        if (m.status !== d.availability_status) m.changedAt = frame.data.timestamp;
        Object.assign(m, { status: d.availability_status, available: d.is_available, loaded: d.is_loaded, sizeMb: d.size_mb, vramMb: d.vram_mb });
      }
      break;
    case "model_availability_change": {
      const d = frame.data;
      Object.assign(model(d.model_id, d.timestamp), { status: d.new_availability, changedAt: d.timestamp });
      break;
    }
    case "model_lifecycle": {
      const d = frame.data;
      const m = model(d.model_id, d.timestamp);
      m.changedAt = d.timestamp;
      if (d.event === "loaded") m.loaded = true;
      if (d.event === "unloaded") {
        m.loaded = false;
        m.vramMb = undefined;
      }
      break;
    }
    case "download_progress_update": {
      const d = frame.data;
      const m = model(d.model_id, d.timestamp);
      if (!newer(m, d.timestamp)) break;
      m.download = {
        percent: d.progress_percent,
        status: d.status,
        speed: d.speed_mbps,
        eta: d.eta_seconds,
        downloaded: d.downloaded_mb,
        total: d.total_mb,
      };
      break;
    }
    case "download_status_change": {
      const d = frame.data;
      // The feed gets every failure; the card only what is newer than what it shows.
      if (d.new_status === "failed" || d.new_status === "stale")
        push(d.new_status === "failed" ? "error" : "warning", `download ${d.new_status}: ${d.model_id}`, d.error_message ?? d.reason ?? "", d.timestamp);
      const m = model(d.model_id, d.timestamp);
      if (!newer(m, d.timestamp)) break;
      const percent = d.progress_percent ?? m.download?.percent ?? 0;
      if (d.new_status === "completed") m.downloaded = true;
      else if (d.new_status === "downloading") m.downloaded = false;
      if (d.new_status === "completed") m.download = undefined;
      else m.download = { ...(m.download ?? { percent }), percent, status: d.new_status, note: d.error_message ?? d.reason ?? undefined };
      break;
    }
    case "download_retry": {
      const d = frame.data;
      const m = model(d.model_id, d.timestamp);
      if (!newer(m, d.timestamp)) break;
      m.download = { ...(m.download ?? { percent: 0 }), status: "retrying", note: `retry ${d.retry_count}/${d.max_retries} in ${eta(d.next_retry_in_seconds)}` };
      break;
    }
    case "health_monitoring_alert": {
      const d = frame.data;
      model(d.model_id, d.timestamp).health = { status: d.health_status, score: d.integrity_score };
      if (!d.is_healthy) push("warning", `health: ${d.model_id} ${d.health_status}`, (d.issues ?? []).join("; "), d.timestamp);
      break;
    }
    case "corruption_detection": {
      const d = frame.data;
      model(d.model_id, d.timestamp).health = { status: "corrupted" };
      push(d.severity === "high" || d.severity === "critical" ? "critical" : "error", `corruption: ${d.model_id}`, `${d.corruption_type} → ${d.repair_action}`, d.timestamp);
      break;
    }
    case "performance_degradation": {
      const d = frame.data;
      push("warning", `slower: ${d.model_id} ${d.metric}`, `${fmt(d.degradation_percent)}% worse${d.recommendation ? ` — ${d.recommendation}` : ""}`, d.timestamp);
      break;
    }
    case "model_repair": {
      const d = frame.data;
      if (d.phase === "completed") model(d.model_id, d.timestamp).health = { status: "healthy" };
      push(d.phase === "failed" ? "error" : "info", `repair ${d.phase}: ${d.model_id}`, d.message ?? d.repair_action, d.timestamp);
      break;
    }
    case "fallback_strategy": {
      const d = frame.data;
      model(d.original_model, d.timestamp).fallback =
        `${d.strategy_type}${d.alternative_model ? ` → ${d.alternative_model}` : ""}: ${d.user_message}`;
      break;
    }
    case "alternative_model_suggestion": {
      const d = frame.data;
      model(d.original_model, d.timestamp).fallback =
        `try ${d.suggested_model} (${Math.round(d.compatibility_score * 100)}% compatible): ${d.reason}`;
      break;
    }
    case "model_queue_update": {
      const d = frame.data;
      // Position 0: served (no longer waiting); an estimate of 0 says nothing.
      model(d.model_id, d.timestamp).queue =
        d.queue_position > 0 ? `queue #${d.queue_position}${d.estimated_wait_time > 0 ? `, ~${eta(d.estimated_wait_time)}` : ""}` : undefined;
      break;
    }
    case "alert": {
      const d = frame.data;
      push(d.level, d.title, d.message, d.timestamp);
      break;
    }
    case "system_stats": {
      const d = frame.data;
      const at = Date.parse(d.timestamp);
      sample("cpu", at, d.cpu_percent);
      sample("memory", at, d.memory_percent);
      sample("gpu", at, d.gpu_percent ?? NaN);
      sample("vram", at, d.vram_total_mb ? ((d.vram_used_mb ?? 0) / d.vram_total_mb) * 100 : NaN);
      $("sys-now").textContent =
        `CPU ${fmt(d.cpu_percent)}% · memory ${fmt(d.memory_percent)}% · VRAM ${fmt((d.vram_used_mb ?? 0) / 1024)} / ${fmt((d.vram_total_mb ?? 0) / 1024)} GB · GPU ${fmt(d.gpu_percent)}%`;
      break;
    }
    case "usage_statistics_update": {
      const d = frame.data;
      usageTotal = Math.max(1, d.total_models);
      sample("active", Date.parse(d.timestamp), d.active_models);
      const counts = Object.entries(d.usage_trends ?? {}).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(" · ");
      $("usage-now").textContent =
        `${d.active_models} of ${d.total_models} models active · most used: ${d.most_used_model ?? "–"}${counts ? ` · ${counts}` : ""}`;
      break;
    }
    case "generation_progress": {
      const d = frame.data;
      const finished = d.status === "completed" || d.status === "failed" || d.status === "cancelled";
      tasks.set(d.task_id, {
        id: d.task_id,
        model: d.model_id,
        status: d.status,
        percent: d.progress_percent,
        step: d.current_step,
        steps: d.total_steps,
        eta: d.eta_seconds,
        finishedAt: finished ? Date.now() : undefined,
      });
      // Finished tasks leave but the newest few: the page never grows with the number of tasks.
      const done = [...tasks.values()].filter((t) => t.finishedAt !== undefined).sort((a, b) => b.finishedAt! - a.finishedAt!);
      for (const old of done.slice(FINISHED_SHOWN)) tasks.delete(old.id);
      break;
    }
    case "queue_update":
      queueSummary = `${frame.data.queue_length} queued · ${frame.data.active_tasks} running`;
      queue = frame.data.items
        .filter((i) => i.position > 0)
        .sort((a, b) => a.position - b.position)
        .map((i) => ({ task: i.task_id, model: i.model_id, position: i.position, status: i.status }));
      break;
    default:
      break;
  }
  dirty = true;
}

/** Whether an event of a model's download made at `timestamp` is not older than the newest
 * one applied (and records it). */
function newer(m: Model, timestamp: string): boolean {
  const at = Date.parse(timestamp);
  if (Number.isNaN(at)) return true;
  if (m.downloadAt !== undefined && at < m.downloadAt) return false;
  m.downloadAt = at;
  return true;
}

function sample(name: string, at: number, value: number) {
  const s = series[name]!;
  s.push({ t: Number.isNaN(at) ? Date.now() : at, v: value });
  const oldest = Date.now() - WINDOW_MS;
  while (s.length > 0 && s[0]!.t < oldest) s.shift();
}

function bar(percent: number, status: string) {
  const outer = h("div", { class: `bar ${status}`, role: "progressbar", "aria-valuenow": String(percent) });
  const inner = h("div", { class: "fill" });
  inner.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  outer.append(inner);
  return outer;
}

function renderModels() {
  const cards = [...models.values()].sort((a, b) => a.id.localeCompare(b.id)).map((m) => {
    // A model known only from its download (no availability reported) shows the download's.
    const status = m.status !== "unknown" ? m.status : (m.download?.status ?? (m.downloaded ? "downloaded" : "unknown"));
    const download = m.download ? ` download-${m.download.status}` : "";
    const card = h("article", { class: `card ${status}${download}`, id: `model-${m.id}`, "data-model": m.id });
    const health = m.health
      ? h("span", { class: `badge health-${m.health.status}` }, `${m.health.status}${m.health.score !== undefined ? ` ${Math.round(m.health.score * 100)}%` : ""}`)
      : h("span", { class: "badge muted health" }, "health not checked yet");
    card.append(
      h("header", {}, h("b", {}, m.id), h("span", { class: `badge status status-${status}` }, status)),
      h("div", { class: "facts" },
        h("span", { class: m.loaded ? "badge loaded" : "badge muted" }, m.loaded ? "loaded" : "not loaded"),
        health,
        h("span", {}, m.sizeMb ? `${fmt(m.sizeMb / 1024)} GB` : ""),
        m.loaded && m.vramMb !== undefined ? h("span", { class: "badge vram" }, `VRAM ${fmt(m.vramMb / 1024)} GB`) : "",
      ),
    );
    if (m.download) {
      const d = m.download;
      card.append(
        h("div", { class: "download" },
          bar(d.percent, d.status),
          h("small", {}, `${d.status} · ${fmt(d.percent)}%${d.speed !== undefined && d.status === "downloading" ? ` · ${fmt(d.speed)} MB/s · ${eta(d.eta)} left` : ""}${d.note ? ` · ${d.note}` : ""}`),
        ),
      );
    }
    if (m.fallback) card.append(h("p", { class: "fallback" }, m.fallback));
    if (m.queue) card.append(h("p", { class: "queue" }, m.queue));
    card.append(h("small", { class: "muted" }, `changed ${time(m.changedAt)}`));
    return card;
  });
  const empty = blocked ? `nothing to show: ${blocked}` : "no model has reported yet";
  $("models").replaceChildren(...(cards.length ? cards : [h("p", { class: "muted" }, empty)]));
}

function renderFeed() {
  const items = feed.map((f) => h("li", { class: `level-${f.level}` }, h("b", {}, f.title), h("span", {}, f.detail), h("time", {}, time(f.at))));
  const empty = blocked ? `nothing to show: ${blocked}` : "no alerts yet";
  $("feed").replaceChildren(...(items.length ? items : [h("li", { class: "empty muted" }, empty)]));
}

function renderTasks() {
  const order = (t: Task) => (t.finishedAt === undefined ? 0 : 1);
  const rows = [...tasks.values()]
    .sort((a, b) => order(a) - order(b) || (b.finishedAt ?? 0) - (a.finishedAt ?? 0) || a.id.localeCompare(b.id))
    .map((t) =>
      h("div", { class: "gen", "data-task": t.id },
        h("span", {}, `${t.id} · ${t.model ?? "–"} · ${t.status}`),
        bar(t.percent, t.status),
        h("small", {}, `step ${t.step ?? "–"}/${t.steps ?? "–"} ${eta(t.eta)}`),
      ),
    );
  $("gen").replaceChildren(...(rows.length ? rows : [h("p", { class: "muted" }, "no generation tasks yet")]));
  const waiting = queue.map((q) => h("li", { "data-queued": q.task }, `#${q.position} ${q.task}${q.model ? ` · ${q.model}` : ""} · ${q.status}`));
  $("queue").replaceChildren(
    h("p", {}, queueSummary || "no queue reported yet"),
    ...(waiting.length ? [h("ol", { class: "queued" }, ...waiting)] : []),
  );
}

/** Draws `lines` (series names and colours) against time (now at the right edge, back to
 * the oldest sample kept: 30 s at least, five minutes at most) on a scale from 0 to `max` (or
 * the data's own top if it goes higher), and labels the axes: the scale's top, middle and 0
 * with `unit` at the left, the time span below. */
function chart(id: string, lines: [string, string][], max: number, unit: (v: number) => string) {
  const svg = $(id) as unknown as SVGSVGElement;
  const W = 300, H = 80;
  const now = Date.now();
  const points = lines.flatMap(([name]) => series[name]!.filter((p) => !Number.isNaN(p.v)));
  const oldest = Math.min(now, ...points.map((p) => p.t));
  const span = Math.min(WINDOW_MS, Math.max(30_000, now - oldest));
  const top = Math.max(max, ...points.map((p) => p.v));
  const paths = lines.map(([name, colour]) => {
    const pts = series[name]!
      .filter((p) => !Number.isNaN(p.v))
      .map((p) => `${(((p.t - (now - span)) / span) * W).toFixed(1)},${(H - (p.v / top) * (H - 4) - 2).toFixed(1)}`)
      .join(" ");
    return `<polyline fill="none" stroke="${colour}" stroke-width="1.6" points="${pts}"/>`;
  });
  svg.innerHTML = `<line x1="0" y1="${H / 2}" x2="${W}" y2="${H / 2}" class="grid"/>${paths.join("")}`;
  $(`${id}-y`).replaceChildren(h("span", {}, unit(top)), h("span", {}, unit(top / 2)), h("span", {}, unit(0)));
  const ago = span >= 60_000 ? `${Math.round(span / 60_000)} min ago` : `${Math.round(span / 1000)} s ago`;
  $(`${id}-x`).replaceChildren(h("span", {}, ago), h("span", {}, "now"));
}

function render() {
  if (!dirty) return;
  dirty = false;
  renderModels();
  renderFeed();
  chart("sys-chart", [["cpu", "#3b82f6"], ["memory", "#10b981"], ["vram", "#f59e0b"], ["gpu", "#a855f7"]], 100, (v) => `${Math.round(v)}%`);
  chart("usage-chart", [["active", "#0ea5e9"]], usageTotal, (v) => `${Number.isInteger(v) ? v : v.toFixed(1)} models`);
  renderTasks();
  $("raw").textContent = raw.join("\n");
}

// Whether this page's credential opens the server's figures (the server says so in `welcome`):
// only then are they asked for, so a page that may not read them never draws a refusal.
let operator = false;

async function stats() {
  if (!operator) {
    $("stats").textContent = "server figures are for operators: open the page with a token that has an operator role (admin)";
    $("demand").textContent = "listeners and demand are for operators: open the page with a token that has an operator role (admin)";
    return;
  }
  try {
    // Server figures are for operators: the page's token counts when it has an operator role.
    const response = await fetch("/api/stats", token ? { headers: { authorization: `Bearer ${token}` } } : {});
    if (!response.ok) {
      $("stats").textContent =
        response.status === 401 || response.status === 403
          ? "server figures are for operators: open the page with a token that has an operator role (admin)"
          : `stats: ${response.status}`;
      return;
    }
    const s = await response.json();
    const rows = Object.entries(s.topics as Record<string, { published: number; delivered: number; subscriptions: number }>).map(
      ([topic, t]) => {
        const last = previous[topic];
        previous[topic] = t.published;
        const rate = last === undefined ? 0 : (t.published - last) / 2;
        return h("tr", {}, h("td", {}, topic), h("td", {}, String(t.subscriptions)), h("td", {}, fmt(rate)), h("td", {}, String(t.delivered)));
      },
    );
    const dropped = Object.values(s.connections_dropped as Record<string, number>).reduce((a, b) => a + b, 0);
    $("stats").replaceChildren(
      h("p", {}, `${s.connections} connections · ${dropped} dropped · node ${s.node_id} · engine ${s.engine?.kind ?? "memory"}${s.engine?.up === false ? " (down)" : ""}`),
      h("table", {}, h("tr", {}, h("th", {}, "topic"), h("th", {}, "subs"), h("th", {}, "msg/s"), h("th", {}, "delivered")), ...rows),
    );
  } catch {
    $("stats").textContent = "server stats unavailable";
  }
  await demand();
}

type ModelDemand = { model_id: string; watchers: number; subscriptions: number; in_progress: number; since: string | null; peak_last_hour: number };

/** Who listens (every node) and which models are wanted: /api/presence and /api/demand, for
 * operators, with the page's credential. */
async function demand() {
  const init = token ? { headers: { authorization: `Bearer ${token}` } } : {};
  try {
    const [presence, wanted] = await Promise.all([fetch("/api/presence", init), fetch("/api/demand", init)]);
    if (!presence.ok || !wanted.ok) {
      $("demand").textContent = "listeners and demand are for operators: open the page with a token that has an operator role (admin)";
      return;
    }
    const p = (await presence.json()) as { connections: number; users: number; nodes: number };
    const models = ((await wanted.json()) as { models: ModelDemand[] }).models;
    const rows = models.map((m) =>
      h(
        "tr",
        {},
        h("td", {}, m.model_id),
        h("td", {}, String(m.watchers)),
        h("td", {}, `${m.subscriptions} filtered · ${m.in_progress} in progress`),
        h("td", {}, m.since ? `${ago(m.since)}` : "no one now"),
        h("td", {}, String(m.peak_last_hour)),
      ),
    );
    const summary = h("p", {}, `${p.connections} connections · ${p.users} users · ${p.nodes} node${p.nodes === 1 ? "" : "s"}`);
    $("demand").replaceChildren(
      summary,
      rows.length === 0
        ? h("p", { class: "muted" }, "no model is watched by name (a subscription filter naming it, or a user's download in progress)")
        : h("table", {}, h("tr", {}, h("th", {}, "model"), h("th", {}, "watchers"), h("th", {}, "of which"), h("th", {}, "watched since"), h("th", {}, "peak 1 h")), ...rows),
    );
  } catch {
    $("demand").textContent = "listeners and demand unavailable";
  }
}

/** How long ago `iso` was, for people. */
function ago(iso: string): string {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return seconds < 90 ? `${seconds} s ago` : seconds < 5400 ? `${Math.round(seconds / 60)} min ago` : `${Math.round(seconds / 3600)} h ago`;
}
const scheme = location.protocol === "https:" ? "wss" : "ws";
// A server that requires tokens: open the page as `/?token=<JWT>` (the token's roles decide
// which topics show; the others are listed as not allowed).
const token = new URLSearchParams(location.search).get("token") ?? undefined;
// A WebSocket, or Server-Sent Events where something between refuses the upgrade.
const client = connect(`${scheme}://${location.host}/ws`, { transport: "auto", ...(token ? { token } : {}) });
/** Who the page sees as: messages for one user or role (an audience) reach only their
 * audience, so the page shows what its token may see. Read from the token's claims for the
 * label only; the server verifies the token. */
function viewerLabel(jwt: string | undefined): string {
  if (!jwt) return "anonymous: messages for a user or role are not shown";
  try {
    const part = jwt.split(".")[1] ?? "";
    const claims = JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as { sub?: unknown; roles?: unknown };
    const roles = Array.isArray(claims.roles) && claims.roles.length ? ` (${claims.roles.join(", ")})` : "";
    return `as ${String(claims.sub ?? "?")}${roles}`;
  } catch {
    return "as the token's user";
  }
}
$("viewer").textContent = viewerLabel(token);
/** "notify me": push this user's finished downloads and alerts to this browser while the page is
 * closed. Shown to a signed-in page only (a device is its user's); says why when the browser or
 * the server cannot. */
function offerPush(jwt: string | undefined) {
  if (!jwt) return;
  const button = $("notify") as HTMLButtonElement;
  const status = $("notify-status");
  button.hidden = false;
  button.addEventListener("click", () => {
    button.disabled = true;
    status.textContent = "asking…";
    registerPush(location.origin, { token: jwt, serviceWorker: "/push-sw.js" })
      .then(() => {
        status.textContent = "this browser will be notified while the page is closed";
        button.hidden = true;
      })
      .catch((e: unknown) => {
        const why = e instanceof ModelcastError ? e.code : "error";
        const reasons: Record<string, string> = {
          push_unsupported: "this browser cannot receive pushes here (it needs https:// or localhost)",
          permission_denied: "notifications are blocked for this site: allow them in the browser's site settings",
          push_off: "the server has no push (MODELCAST_VAPID_PRIVATE_KEY is not set)",
        };
        status.textContent = `cannot notify: ${reasons[why] ?? (e instanceof Error ? e.message : String(e))}`;
        button.disabled = false;
      });
  });
}
offerPush(token);
/** Says at the top of the page why it cannot show anything, and what to do. */
function notice(text: string | undefined) {
  const el = $("notice");
  el.textContent = text ?? "";
  el.hidden = text === undefined;
}
let failures = 0; // connection attempts in a row that never opened
client.on("state", (state) => {
  const pill = $("conn");
  pill.textContent = state;
  pill.className = `pill ${state}`;
  if (state === "open") {
    failures = 0;
    blocked = undefined;
    notice(undefined);
  }
});
const TOKEN_HELP =
  "open this page as /?token=<JWT>, a token the server accepts (its roles decide which topics show)";
client.on("close", (info) => {
  if (info.code === 4401) {
    blocked = token ? "the server refused this page's token" : "this server requires a token";
    dirty = true;
    notice(token ? `The server refused this page's token (${info.reason || "expired or invalid"}): ${TOKEN_HELP}.` : `This server requires a token: ${TOKEN_HELP}.`);
  } else if (++failures >= 3) {
    // A refused handshake (a bad token: HTTP 401) reaches a page only as a lost connection.
    notice(token ? `Cannot connect. If the token is not accepted: ${TOKEN_HELP}.` : "Cannot connect to the server; retrying.");
  }
});
client.on("frame", (frame: ServerMessage) => {
  raw.unshift(JSON.stringify(frame));
  raw.length = Math.min(raw.length, 100);
  dirty = true;
});
client.on("welcome", (w) => {
  $("node").textContent = `connection ${w.connection_id}`;
  if (w.operator && !operator) {
    operator = true;
    void stats();
  }
});
client.on("error", (e: ModelcastError) => push("warning", `connection: ${e.code}`, e.message, new Date().toISOString()));
for (const topic of Object.keys(TOPIC_TYPES) as Topic[]) {
  const sub = client.subscribe(topic);
  sub.on("message", (frame) => apply(frame as AnyTopicFrame));
  sub.on("gap", (gap) => push("warning", `gap in ${gap.topic}`, `messages after ${gap.afterSeq} were lost (server restarted or history exceeded); showing the current state`, new Date().toISOString()));
  sub.on("error", (e) => {
    $("topics-off").textContent = `${$("topics-off").textContent ? `${$("topics-off").textContent}, ` : "not allowed: "}${topic} (${e.code})`;
  });
}
setInterval(render, 250);
setInterval(stats, 2000);
void stats();
