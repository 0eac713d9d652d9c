// The fleet dashboard: polls the scheduler's API every 2 s and redraws the tables and plots.
// Plain DOM and inline SVG, no libraries, no network access beyond this scheduler.
// Logs in with an API token kept in sessionStorage (this tab only, never in a URL) and sent as the
// Authorization header; a 401 (revoked or unknown token) returns to the login form.
// Events can be filtered (device, stream, kind, time range); clips are fetched from the devices by operators and
// downloaded with the token (a blob, since a plain link could not carry the Authorization header).
"use strict";

const POLL_MS = 2000;
const MAX_PLOTS = 48; // history plots drawn for the first devices in the table (one request each)
const HISTORY_POINTS = 360; // points kept per device
const MAX_EVENTS = 300;
const SVG_NS = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "lepton-edge.api-token";

const state = {
  serverOffset: 0, // server clock minus browser clock, s
  events: [],
  lastEventId: null,
  eventQuery: "", // the events filter as a query string ("" = every event)
  eventGen: 0, // generation of the events list; a filter change starts a new one
  clipJobs: new Map(), // "device/clip" -> fetch job (GET /api/clips)
  clipsError: null, // why the fetch jobs cannot be shown (a replica without a fetcher)
  deviceClips: null, // {device_id, source, error, clips} of the last device listed
  histories: new Map(), // device id -> {rows: [], lastTs: number|null}
  streamDevice: null, // the device whose streams are shown (chosen by the operator, else the first online one)
  streams: null, // GET /api/devices/{id}/streams of that device
  streamsError: null,
  token: sessionStorage.getItem(TOKEN_KEY), // null: not logged in (or --insecure-local)
  loop: 0, // generation of the refresh loop; logging out ends the running one
};

class Unauthorized extends Error {}

// ------------------------------------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") {
      for (const [name, data] of Object.entries(value)) if (data !== null && data !== undefined) node.dataset[name] = data;
    }
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function num(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function now() {
  return Date.now() / 1000 + state.serverOffset;
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, now() - ts);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function clock(ts) {
  const d = new Date(ts * 1000);
  const today = new Date(now() * 1000).toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

function badge(text, kind, title) {
  return el("span", { class: `badge ${kind}`, title }, text);
}

function size(n) {
  if (n === null || n === undefined) return "?";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function showError(message) {
  const error = document.getElementById("error");
  error.textContent = message;
  error.hidden = false;
}

// A JSON call to the scheduler's API with the token as a header: api(path) reads, api(path, {method, body}) changes.
async function api(path, { method = "GET", body: sent } = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (sent !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: sent === undefined ? undefined : JSON.stringify(sent),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    if (response.status === 401) throw new Unauthorized(detail);
    throw new Error(`${path}: HTTP ${response.status}: ${detail}`);
  }
  return body;
}

function fill(tbodySelector, emptyId, rows) {
  const tbody = document.querySelector(tbodySelector);
  tbody.replaceChildren(...rows);
  document.getElementById(emptyId).hidden = rows.length > 0;
}

// ------------------------------------------------------------------------------------------- summary

function renderSummary(stats) {
  const items = [
    ["online", `${stats.online} / ${stats.devices}`, "devices online"],
    ["placed", `${stats.assigned} / ${stats.workloads}`, "workloads placed"],
  ];
  if (stats.unplaced) items.push(["warn", String(stats.unplaced), "unplaced"]);
  if (stats.failed) items.push(["bad", String(stats.failed), "failed"]);
  if (stats.throttled) items.push(["warn", String(stats.throttled), "throttled"]);
  const leader = stats.is_leader ? "this replica leads" : `leader: ${stats.leader || "none"}`;
  document.getElementById("summary").replaceChildren(
    ...items.map(([kind, value, label]) => el("span", { class: `chip ${kind}` }, el("b", {}, value), ` ${label}`)),
    el("span", { class: "chip" }, leader),
  );
}

// ------------------------------------------------------------------------------------------- devices

function deviceRow(d) {
  const stateBadges = [d.online ? badge("online", "ok") : badge("offline", "off", d.offline_reason || "")];
  if (d.throttled) stateBadges.push(badge("throttled", "warn", "thermal or reported throttling"));
  const under = d.online && d.required_fps > 0 && (d.fps ?? 0) < 0.9 * d.required_fps;
  // an offline device delivers nothing, whatever its last report said
  const fpsTitle = !d.online ? `last reported ${num(d.fps)} fps` : under ? "below the required rate" : null;
  const fps = el(
    "td",
    { class: `num fps${under ? " bad-text" : ""}`, title: fpsTitle },
    d.online ? num(d.fps) : "–",
    el("span", { class: "muted" }, ` / ${num(d.required_fps)}`),
  );
  const hot = d.temperature_c !== null && d.temperature_c >= 80;
  const pending = d.desired_version > d.reported_version;
  const failedConfig = d.last_outcome === "rejected" || d.last_outcome === "rolled_back";
  const config = el(
    "td",
    {
      class: `num config${failedConfig ? " bad-text" : pending ? " warn-text" : ""}`,
      title: failedConfig ? `${d.last_outcome}: ${d.last_errors.join("; ")}` : pending ? "waiting for the device" : d.last_outcome,
    },
    `${d.desired_version} / ${d.reported_version}`,
    failedConfig ? ` ${d.last_outcome}` : "",
  );
  return el(
    "tr",
    {
      class: `device${d.online ? "" : " offline"}${d.device_id === state.streamDevice ? " selected" : ""}`,
      dataset: { deviceId: d.device_id, state: d.online ? "online" : "offline" },
      title: "show its streams",
    },
    el("td", { class: "id" }, d.device_id),
    el("td", { class: "state" }, stateBadges),
    el("td", {}, d.group ?? "–"),
    el("td", {}, d.accelerator),
    el("td", { class: "model" }, d.model ?? "–"),
    fps,
    el(
      "td",
      { class: "num latency", title: d.latency_stage ? `${d.latency_stage} stage` : null },
      `${num(d.latency_p50_ms)} / ${num(d.latency_p99_ms)}`,
      d.latency_stage && d.latency_stage !== "e2e" ? el("span", { class: "muted stage" }, ` ${d.latency_stage}`) : null,
    ),
    el("td", { class: `num temp${hot ? " warn-text" : ""}` }, num(d.temperature_c)),
    config,
    el("td", { class: "workloads" }, d.workloads.length ? d.workloads.join(", ") : "–"),
    el("td", { class: "seen", title: d.last_seen ? clock(d.last_seen) : "" }, ago(d.last_seen)),
  );
}

// ------------------------------------------------------------------------------------------- streams

// The colour of a stream's source state and of a workload's state.
const SOURCE_STATES = { running: "ok", starting: "info", reconnecting: "warn", stalled: "warn", ended: "off", failed: "bad" };
const WORKLOAD_STATES = { running: "ok", starting: "info", failed: "bad" };

function drops(byReason) {
  const items = Object.entries(byReason || {}).filter(([, n]) => n > 0);
  return items.length ? items.map(([reason, n]) => `${reason}: ${n}`).join(", ") : "–";
}

function streamRow(s) {
  return el(
    "tr",
    { class: "stream", dataset: { workload: s.workload, sourceState: s.source_state, state: s.state } },
    el("td", { class: "id workload" }, s.workload),
    el("td", { class: "stream-name" }, s.stream),
    el("td", { class: "model" }, s.model),
    el("td", { class: "state" }, badge(s.state, WORKLOAD_STATES[s.state] || "off")),
    el("td", { class: "source-state" }, badge(s.source_state, SOURCE_STATES[s.source_state] || "off")),
    el("td", { class: "num fps", title: `${s.frames} frames this session` }, num(s.fps)),
    el("td", { class: "drops" }, drops(s.drops)),
    el("td", { class: "num latency" }, `${num(s.latency_p50_ms)} / ${num(s.latency_p90_ms)} / ${num(s.latency_p99_ms)}`),
    el("td", { class: "num age" }, num(s.frame_age_p99_ms)),
    el("td", { class: `reason stream-error${s.error ? " bad-text" : ""}` }, s.error ?? ""),
  );
}

function modelRow(m) {
  return el(
    "tr",
    { class: "model", dataset: { model: m.model } },
    el("td", { class: "id" }, m.model),
    el("td", { class: "num fps" }, num(m.fps)),
    el("td", { class: "num batch" }, num(m.batch_mean, 2)),
    el("td", { class: `num busy${m.busy >= 0.95 ? " warn-text" : ""}` }, num(m.busy * 100, 0)),
    el("td", { class: "num" }, m.streams),
  );
}

// Keeps the chosen device while it exists, else the first online device, else the first one; rebuilds the
// picker only when the device list changed (an open drop-down is not closed by a poll).
function pickStreamDevice(devices) {
  const ids = devices.map((d) => d.device_id);
  if (!ids.includes(state.streamDevice)) {
    const online = devices.find((d) => d.online);
    state.streamDevice = online ? online.device_id : ids[0] ?? null;
  }
  const select = document.getElementById("streams-device");
  if (select.dataset.ids !== ids.join("\n")) {
    select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
    select.dataset.ids = ids.join("\n");
  }
  if (state.streamDevice !== null) select.value = state.streamDevice;
}

async function refreshStreams() {
  const deviceId = state.streamDevice;
  if (deviceId === null) {
    state.streams = null;
    return;
  }
  try {
    const answer = await api(`/api/devices/${encodeURIComponent(deviceId)}/streams`);
    if (deviceId !== state.streamDevice) return; // another device was chosen meanwhile
    state.streams = answer;
    state.streamsError = null;
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    state.streams = null;
    state.streamsError = err.message;
  }
}

function renderStreams() {
  const data = state.streams && state.streams.device_id === state.streamDevice ? state.streams : null;
  fill("#stream-table tbody", "streams-empty", data ? data.streams.map(streamRow) : []);
  fill("#model-table tbody", "models-empty", data ? data.models.map(modelRow) : []);
  const note = document.getElementById("streams-note");
  if (state.streamDevice === null) note.textContent = "no device yet";
  else if (state.streamsError) note.textContent = `cannot load: ${state.streamsError}`;
  else if (!data) note.textContent = "loading…";
  else {
    const when = data.telemetry_time ? `telemetry of ${ago(data.telemetry_time)}` : "no telemetry yet";
    const skipped = data.skipped.length ? `; unreadable: ${data.skipped.join("; ")}` : "";
    note.textContent = `${data.online ? "" : "offline; last "}${when}${skipped}`;
  }
  for (const row of document.querySelectorAll("#device-table tr.device")) {
    row.classList.toggle("selected", row.dataset.deviceId === state.streamDevice);
  }
}

async function showStreamsOf(deviceId) {
  state.streamDevice = deviceId;
  document.getElementById("streams-device").value = deviceId;
  renderStreams();
  try {
    await refreshStreams();
    renderStreams();
  } catch (err) {
    if (err instanceof Unauthorized) showLogin(`Logged out: ${err.message}`);
  }
}

document.getElementById("streams-device").addEventListener("change", (event) => showStreamsOf(event.target.value));
document.getElementById("streams-picker").addEventListener("submit", (event) => event.preventDefault());
document.getElementById("device-table").addEventListener("click", (event) => {
  const row = event.target.closest("tr.device");
  if (row) showStreamsOf(row.dataset.deviceId);
});

// ------------------------------------------------------------------------------------------- history

async function refreshHistories(devices) {
  const shown = devices.slice(0, MAX_PLOTS);
  const wanted = new Set(shown.map((d) => d.device_id));
  for (const id of [...state.histories.keys()]) if (!wanted.has(id)) state.histories.delete(id);
  await Promise.all(
    shown.map(async (d) => {
      const history = state.histories.get(d.device_id) || { rows: [], lastTs: null };
      const query = history.lastTs === null ? `limit=${HISTORY_POINTS}` : `since=${history.lastTs}&limit=${HISTORY_POINTS}`;
      const rows = await api(`/api/devices/${encodeURIComponent(d.device_id)}/telemetry?summary=true&${query}`);
      if (rows.length) {
        history.rows = history.rows.concat(rows).slice(-HISTORY_POINTS);
        history.lastTs = rows[rows.length - 1].ts;
      }
      state.histories.set(d.device_id, history);
    }),
  );
  const note = document.getElementById("plots-note");
  note.hidden = devices.length <= MAX_PLOTS;
  note.textContent = `Plots are drawn for the first ${MAX_PLOTS} of ${devices.length} devices.`;
  return shown;
}

// Splits points into runs wherever the time gap is far larger than the usual spacing (a device that was away).
function runs(points) {
  if (points.length < 2) return [points];
  const gaps = points.slice(1).map((p, i) => p[0] - points[i][0]).sort((a, b) => a - b);
  const limit = Math.max(5 * gaps[Math.floor(gaps.length / 2)], 1);
  const out = [[points[0]]];
  for (let i = 1; i < points.length; i++) {
    if (points[i][0] - points[i - 1][0] > limit) out.push([]);
    out[out.length - 1].push(points[i]);
  }
  return out;
}

// A small line chart: series = [{points: [[t, v]...], cls}], optional dashed reference value and a note.
function chart(kind, title, series, reference, t0, t1, unit, note) {
  const W = 320, H = 96, L = 34, R = 6, T = 16, B = 14;
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  if (reference) values.push(reference);
  const top = Math.max(1, ...values) * 1.1;
  const span = Math.max(t1 - t0, 1);
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const root = svg("svg", { class: `plot ${kind}`, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  root.append(svg("title", {}, title));
  root.append(svg("rect", { class: "frame", x: L, y: T, width: W - L - R, height: H - T - B }));
  root.append(svg("text", { class: "axis", x: L - 4, y: T + 4, "text-anchor": "end" }, top.toFixed(top < 10 ? 1 : 0)));
  root.append(svg("text", { class: "axis", x: L - 4, y: H - B, "text-anchor": "end" }, "0"));
  root.append(svg("text", { class: "axis", x: W - R, y: H - 2, "text-anchor": "end" }, "now"));
  root.append(svg("text", { class: "axis", x: L, y: H - 2 }, `-${Math.round(span / 60) || "<1"} min`));
  if (note) root.append(svg("text", { class: "axis note", x: W - R, y: T - 4, "text-anchor": "end" }, note));
  if (reference) {
    root.append(svg("line", { class: "reference", x1: L, x2: W - R, y1: y(reference), y2: y(reference) }));
  }
  let labelX = L + 2;
  for (const s of series) {
    for (const run of runs(s.points)) {
      if (run.length === 1) {
        root.append(svg("circle", { class: `line ${s.cls}`, cx: x(run[0][0]), cy: y(run[0][1]), r: 1.5 }));
      } else if (run.length > 1) {
        const pts = run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
        root.append(svg("polyline", { class: `line ${s.cls}`, points: pts }));
      }
    }
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    const label = svg("text", { class: `legend ${s.cls}`, x: labelX, y: T - 4 }, `${s.name} ${num(last)}${unit}`);
    root.append(label);
    labelX += 96;
  }
  if (!values.length || series.every((s) => !s.points.length)) {
    root.append(svg("text", { class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no telemetry yet"));
  }
  return root;
}

function renderPlots(devices) {
  const t1 = now();
  const cards = devices.map((d) => {
    const rows = (state.histories.get(d.device_id) || { rows: [] }).rows;
    const t0 = rows.length ? Math.min(rows[0].ts, t1 - 60) : t1 - 60;
    const series = (key) => rows.filter((r) => r[key] !== null).map((r) => [r.ts, r[key]]);
    const stage = rows.length ? rows[rows.length - 1].latency_stage : null;
    return el(
      "div",
      { class: `card${d.online ? "" : " offline"}`, dataset: { deviceId: d.device_id } },
      el("h3", {}, d.device_id, " ", d.online ? badge("online", "ok") : badge("offline", "off")),
      chart(
        "fps",
        `${d.device_id}: frames per second`,
        [{ name: "fps", cls: "fps", points: series("fps") }],
        d.required_fps,
        t0,
        t1,
        "",
        d.required_fps ? `required ${num(d.required_fps)}` : "nothing assigned",
      ),
      chart(
        "latency",
        `${d.device_id}: ${stage || "e2e"} latency, ms`,
        [
          { name: "p50", cls: "p50", points: series("latency_p50_ms") },
          { name: "p99", cls: "p99", points: series("latency_p99_ms") },
        ],
        null,
        t0,
        t1,
        " ms",
        stage ? `${stage} stage` : "",
      ),
    );
  });
  document.getElementById("plots").replaceChildren(...cards);
}

// ----------------------------------------------------------------------------------------- workloads

function constraints(w) {
  const parts = [];
  if (w.pinned_device) parts.push(`pinned: ${w.pinned_device}`);
  if (w.group) parts.push(`group: ${w.group}`);
  if (w.accelerator) parts.push(`accel: ${w.accelerator}`);
  if (w.runtime) parts.push(`runtime: ${w.runtime}`);
  return parts.join(", ") || "–";
}

function workloadRow(item, assignment) {
  const w = item.workload;
  const status = item.status
    ? badge(item.status, { applied: "ok", pending: "warn", failed: "bad" }[item.status] || "off")
    : badge("unplaced", "bad");
  return el(
    "tr",
    { class: "workload", dataset: { workloadId: w.workload_id, status: item.status || "unplaced" } },
    el("td", { class: "id" }, w.workload_id),
    el("td", {}, w.model),
    el("td", { class: "source", title: w.source_uri }, w.source_uri),
    el("td", { class: "num" }, num(w.required_fps)),
    el("td", {}, constraints(w)),
    el("td", { class: "device" }, item.device_id ?? "–"),
    el("td", {}, status),
    el("td", { class: "num" }, assignment ? assignment.desired_version : "–"),
    el("td", { title: assignment ? clock(assignment.since) : "" }, assignment ? ago(assignment.since) : "–"),
    el("td", { class: "reason" }, item.reason ?? ""),
  );
}

// ------------------------------------------------------------------------------------------ rollouts

const ROLLOUT_KINDS = {
  pending: "warn", running: "warn", completing: "warn", aborting: "bad", succeeded: "ok", aborted: "off", rolled_back: "bad",
  rollback_failed: "bad",
};

function mayChange() {
  return ["operator", "admin"].includes(document.getElementById("whoami").dataset.role);
}

function waveHealth(wave) {
  if (!wave) return "–";
  if (!wave.verdict) return wave.applied_at ? "baking" : "applying";
  const f = wave.figures;
  const fps = f.min_fps_ratio === null || f.min_fps_ratio === undefined ? "" : `, fps ≥ ${Math.round(f.min_fps_ratio * 100)} %`;
  return `${wave.verdict}: ${f.failed} of ${f.devices} failed${fps}`;
}

function rolloutRow(r) {
  const id = r.spec.rollout_id;
  const wave = r.current_wave >= 0 ? r.waves[r.current_wave] : null;
  const started = r.waves.slice(0, r.current_wave + 1).reduce((n, w) => n + w.devices.length, 0);
  const targets = r.waves.reduce((n, w) => n + w.devices.length, 0);
  const patch = Object.keys(r.spec.config_patch);
  const change = [patch.length ? `config: ${patch.join(", ")}` : null, r.spec.artifact ? "artifact" : null];
  const failures = wave ? Object.entries(wave.failures).map(([device, why]) => `${device}: ${why}`) : [];
  const rollbackFailed = Object.entries(r.rollback_failed || {}).map(([device, errors]) => `${device}: ${errors.join("; ")}`);
  const abortable = (r.state === "pending" || r.state === "running") && mayChange();
  return el(
    "tr",
    { class: "rollout", dataset: { rolloutId: id, state: r.state } },
    el("td", { class: "id" }, id),
    el("td", {}, r.spec.group),
    el("td", { class: "change", title: JSON.stringify(r.spec.config_patch) }, change.filter(Boolean).join("; ")),
    el(
      "td",
      { class: "state", title: rollbackFailed.length ? `rollback failed on:\n${rollbackFailed.join("\n")}` : null },
      badge(r.state.replace("_", " "), ROLLOUT_KINDS[r.state] || "off"),
    ),
    el("td", { class: "num wave" }, r.waves.length ? `${r.current_wave + 1} / ${r.waves.length}` : "–"),
    el("td", { class: "num" }, targets ? `${started} / ${targets}` : "–"),
    el("td", { class: `health${failures.length ? " bad-text" : ""}`, title: failures.join("\n") || null }, waveHealth(wave)),
    el("td", { title: clock(r.created_at) }, ago(r.created_at)),
    el("td", { class: "reason" }, r.reason ?? ""),
    el("td", {}, abortable ? el("button", { type: "button", class: "abort", dataset: { rolloutId: id } }, "Abort") : null),
  );
}

// One listener for the table (its rows are redrawn at every refresh): the abort button.
document.querySelector("#rollout-table tbody").addEventListener("click", async (event) => {
  const button = event.target.closest("button.abort");
  if (!button) return;
  button.disabled = true;
  const who = document.getElementById("whoami").textContent.slice(0, 200);
  const path = `/api/rollouts/${encodeURIComponent(button.dataset.rolloutId)}/abort`;
  try {
    await api(path, { method: "POST", body: { reason: `aborted from the dashboard by ${who}` } });
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(`Logged out: ${err.message}`);
      return;
    }
    const error = document.getElementById("error");
    error.textContent = `Abort failed: ${err.message}`;
    error.hidden = false;
    button.disabled = false;
  }
});

// -------------------------------------------------------------------------------------------- events

async function refreshEvents() {
  const generation = state.eventGen;
  const filter = state.eventQuery ? `&${state.eventQuery}` : "";
  const query = state.lastEventId === null ? `limit=200${filter}` : `since_id=${state.lastEventId}&limit=500${filter}`;
  const fresh = await api(`/api/events?${query}`);
  if (generation !== state.eventGen) return; // the filters changed while this was under way
  if (fresh.length) {
    state.events = state.events.concat(fresh).slice(-MAX_EVENTS);
    state.lastEventId = fresh[fresh.length - 1].id;
  }
}

// The stream of an analytics event, and the clip an event refers to: `details.clip` (a clip id, as in clip.fetched),
// or its analytics detail's `snapshot` when that is a clip reference, `clip:<clip id>@<offset s>` (docs/clips.md).
function eventStream(e) {
  const analytics = (e.details || {}).analytics;
  return analytics && typeof analytics.stream === "string" ? analytics.stream : "";
}

const CLIP_REF = /^clip:([A-Za-z0-9][A-Za-z0-9_.-]{0,127})(@[0-9.]+)?$/;

function eventClip(e) {
  const details = e.details || {};
  const analytics = details.analytics || {};
  if (typeof details.clip === "string" && details.clip) return { id: details.clip, offset: null };
  const match = typeof analytics.snapshot === "string" ? CLIP_REF.exec(analytics.snapshot) : null;
  return match ? { id: match[1], offset: match[2] ? Number(match[2].slice(1)) : null } : null;
}

function eventRow(e) {
  const kind = { warning: "warn", error: "bad", critical: "bad", debug: "off" }[e.severity] || "info";
  const clip = eventClip(e);
  const stream = eventStream(e);
  return el(
    "tr",
    {
      class: `event sev-${e.severity}`,
      dataset: { eventId: e.id, kind: e.kind, severity: e.severity, stream: stream || null, clip: clip ? clip.id : null },
    },
    el("td", { class: "time" }, clock(e.time)),
    el("td", {}, badge(e.severity, kind)),
    el("td", { class: "kind" }, e.kind),
    el("td", { class: "device" }, e.device_id ?? ""),
    el("td", { class: "stream" }, stream),
    el("td", {}, e.workload_id ?? ""),
    el("td", { class: "message" }, e.message),
    el(
      "td",
      { class: "clip", title: clip && clip.offset !== null ? `${clip.offset} s into the clip` : null },
      clip ? [el("span", { class: "clip-id" }, clip.id), " ", clipAction(e.device_id, clip.id)] : "",
    ),
  );
}

function renderEvents() {
  fill("#event-table tbody", "events-empty", state.events.slice().reverse().map(eventRow));
}

// The filters as the query of /api/events; times are read in the browser's time zone, as the table shows them.
function eventFilterQuery() {
  const params = new URLSearchParams();
  for (const [id, key] of [["filter-device", "device"], ["filter-stream", "stream"], ["filter-kind", "kind"]]) {
    const value = document.getElementById(id).value.trim();
    if (value) params.set(key, value);
  }
  for (const [id, key] of [["filter-since", "since"], ["filter-until", "until"]]) {
    const value = document.getElementById(id).value;
    const ts = value ? new Date(value).getTime() / 1000 : NaN;
    if (Number.isFinite(ts)) params.set(key, String(ts));
  }
  return params.toString();
}

async function applyEventFilters() {
  state.eventQuery = eventFilterQuery();
  state.eventGen += 1;
  state.events = [];
  state.lastEventId = null;
  document.getElementById("filter-summary").textContent = state.eventQuery
    ? `filtered: ${[...new URLSearchParams(state.eventQuery).keys()].join(", ")}`
    : "";
  try {
    await refreshEvents();
    renderEvents();
  } catch (err) {
    if (err instanceof Unauthorized) showLogin(`Logged out: ${err.message}`);
    else showError(`Cannot load the events: ${err.message}`);
  }
}

document.getElementById("event-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  applyEventFilters();
});

document.getElementById("filter-clear").addEventListener("click", () => {
  document.getElementById("event-filters").reset();
  applyEventFilters();
});

// --------------------------------------------------------------------------------------------- clips

const CLIP_STATES = { complete: "ok", fetching: "info", queued: "warn", waiting: "warn", failed: "bad" };

function clipKey(deviceId, clipId) {
  return `${deviceId}/${clipId}`;
}

// What can be done with a clip now: download it (fetched), see its progress, or fetch it (operators).
function clipAction(deviceId, clipId) {
  const job = state.clipJobs.get(clipKey(deviceId, clipId));
  const data = { deviceId, clipId };
  if (job && job.state === "complete") return el("button", { type: "button", class: "download", dataset: data }, "Download");
  if (job && job.state !== "failed") {
    return badge(`${job.state} ${Math.round((job.progress || 0) * 100)} %`, CLIP_STATES[job.state] || "off", job.error);
  }
  if (deviceId && mayChange()) {
    return el("button", { type: "button", class: "fetch", dataset: data, title: job ? job.error : null }, job ? "Fetch again" : "Fetch");
  }
  return job ? badge("failed", "bad", job.error) : null;
}

async function refreshClips() {
  try {
    const jobs = await api("/api/clips");
    state.clipJobs = new Map(jobs.map((j) => [clipKey(j.device_id, j.clip_id), j]));
    state.clipsError = null;
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    state.clipsError = err.message; // shown in the clips panel: the rest of the dashboard still works
  }
}

function clipJobRow(j) {
  const percent = Math.round((j.progress || 0) * 100);
  const retry = j.state === "waiting" && j.retry_in_s !== null ? `retrying in ${j.retry_in_s} s` : null;
  return el(
    "tr",
    { class: "clip-job", dataset: { deviceId: j.device_id, clipId: j.clip_id, state: j.state } },
    el("td", { class: "id" }, j.device_id),
    el("td", { class: "clip-id" }, j.clip_id),
    el("td", { class: "state", title: retry }, badge(j.state, CLIP_STATES[j.state] || "off")),
    el("td", { class: "progress" }, el("progress", { max: 100, value: percent }), ` ${percent} %`),
    el("td", { class: "num bytes" }, `${size(j.fetched)} / ${size(j.size)}`),
    el("td", {}, j.requested_by ?? "–"),
    el("td", { title: clock(j.updated_at) }, ago(j.updated_at)),
    el("td", { class: "reason" }, j.error ?? ""),
    el("td", {}, clipAction(j.device_id, j.clip_id)),
  );
}

function deviceClipRow(deviceId, c) {
  const job = state.clipJobs.get(clipKey(deviceId, c.id));
  const events = c.event_count ?? (c.event_ids || []).length;
  return el(
    "tr",
    { class: "device-clip", dataset: { deviceId, clipId: c.id } },
    el("td", { class: "clip-id" }, c.id),
    el("td", {}, c.stream ?? "–"),
    el("td", { title: c.end_wall ? clock(c.end_wall) : null }, c.end_wall ? ago(c.end_wall) : "–"),
    el("td", { class: "num" }, size(c.bytes)),
    el("td", { class: "num", title: (c.event_ids || []).join("\n") || null }, events ?? "–"),
    el("td", {}, job ? badge(job.state, CLIP_STATES[job.state] || "off") : c.fetch ? badge(c.fetch, CLIP_STATES[c.fetch] || "off") : "–"),
    el("td", {}, clipAction(deviceId, c.id)),
  );
}

function renderClips() {
  fill("#clip-table tbody", "clips-empty", [...state.clipJobs.values()].map(clipJobRow));
  const empty = document.getElementById("clips-empty");
  empty.dataset.text = empty.dataset.text || empty.textContent;
  empty.textContent = state.clipsError ? `Clip fetches cannot be shown: ${state.clipsError}` : empty.dataset.text;
  empty.hidden = state.clipJobs.size > 0 && !state.clipsError;
  const listed = state.deviceClips;
  const table = document.getElementById("device-clip-table");
  table.hidden = !listed;
  if (!listed) return;
  table.querySelector("tbody").replaceChildren(...listed.clips.map((c) => deviceClipRow(listed.device_id, c)));
  const note = listed.source === "device"
    ? `${listed.clips.length} clip(s) on ${listed.device_id}, as it lists them now`
    : `${listed.device_id} did not answer (${listed.error}); the clips this scheduler knows of it`;
  document.getElementById("device-clips-note").textContent = note;
}

async function listDeviceClips(deviceId) {
  const note = document.getElementById("device-clips-note");
  note.textContent = `asking ${deviceId}…`;
  try {
    state.deviceClips = await api(`/api/devices/${encodeURIComponent(deviceId)}/clips`);
    renderClips();
  } catch (err) {
    if (err instanceof Unauthorized) showLogin(`Logged out: ${err.message}`);
    else note.textContent = `Cannot list the clips of ${deviceId}: ${err.message}`;
  }
}

async function fetchClip(deviceId, clipId) {
  const path = `/api/devices/${encodeURIComponent(deviceId)}/clips/${encodeURIComponent(clipId)}/fetch`;
  const job = await api(path, { method: "POST" });
  state.clipJobs.set(clipKey(job.device_id, job.clip_id), job);
  renderClips();
  renderEvents();
}

// The clip through the API with the token, handed to the browser as a download (a blob: URL of this page).
async function downloadClip(deviceId, clipId, button) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const path = `/api/clips/${encodeURIComponent(deviceId)}/${encodeURIComponent(clipId)}`;
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
  if (response.status === 401) throw new Unauthorized(response.statusText);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: `${deviceId}-${clipId}.mp4`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  button.dataset.downloaded = String(blob.size);
}

document.getElementById("clip-lister").addEventListener("submit", (event) => {
  event.preventDefault();
  const deviceId = document.getElementById("clip-device").value.trim();
  if (deviceId) listDeviceClips(deviceId);
});

// One listener for every fetch and download button (the tables are redrawn at every refresh).
document.getElementById("dashboard").addEventListener("click", async (event) => {
  const button = event.target.closest("button.fetch, button.download");
  if (!button) return;
  const { deviceId, clipId } = button.dataset;
  button.disabled = true;
  try {
    if (button.classList.contains("fetch")) await fetchClip(deviceId, clipId);
    else await downloadClip(deviceId, clipId, button);
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(`Logged out: ${err.message}`);
      return;
    }
    showError(`Clip ${clipId} of ${deviceId}: ${err.message}`);
  }
  button.disabled = false;
});

// ------------------------------------------------------------------------------------------ the loop

async function refresh(loop) {
  if (loop !== state.loop) return; // logged out meanwhile
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  try {
    const [stats, devices, workloads, assignments, rollouts] = await Promise.all([
      api("/api/stats"),
      api("/api/devices"),
      api("/api/workloads"),
      api("/api/assignments"),
      api("/api/rollouts"),
      refreshEvents(),
      refreshClips(),
    ]);
    state.serverOffset = stats.time - Date.now() / 1000;
    renderSummary(stats);
    pickStreamDevice(devices);
    fill("#device-table tbody", "devices-empty", devices.map(deviceRow));
    await refreshStreams();
    renderStreams();
    const byWorkload = new Map(assignments.map((a) => [a.workload_id, a]));
    fill("#workload-table tbody", "workloads-empty", workloads.map((w) => workloadRow(w, byWorkload.get(w.workload.workload_id))));
    fill("#rollout-table tbody", "rollouts-empty", rollouts.slice().reverse().map(rolloutRow));
    document.getElementById("device-ids").replaceChildren(...devices.map((d) => el("option", { value: d.device_id })));
    renderEvents();
    renderClips();
    renderPlots(await refreshHistories(devices));
    error.hidden = true;
    status.textContent = `updated ${clock(now())}`;
    status.className = "status";
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(`Logged out: ${err.message}`);
      return;
    }
    error.textContent = `Cannot refresh from the scheduler API: ${err.message}. Retrying every ${POLL_MS / 1000} s; the data shown may be stale.`;
    error.hidden = false;
    status.textContent = "stale";
    status.className = "status stale";
  }
  if (loop === state.loop) setTimeout(() => refresh(loop), POLL_MS);
}

// ------------------------------------------------------------------------------------------ log in

function showLogin(message) {
  state.loop += 1;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("dashboard").hidden = true;
  document.getElementById("session").hidden = true;
  document.getElementById("error").hidden = true;
  document.getElementById("login").hidden = false;
  const error = document.getElementById("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  document.getElementById("status").textContent = "logged out";
}

function showDashboard(me) {
  document.getElementById("login").hidden = true;
  document.getElementById("dashboard").hidden = false;
  document.getElementById("insecure-banner").hidden = !me.insecure_local;
  document.getElementById("whoami").textContent = `${me.actor} (${me.role})`;
  document.getElementById("whoami").dataset.role = me.role;
  document.getElementById("logout").hidden = me.insecure_local;
  document.getElementById("session").hidden = false;
  state.loop += 1;
  refresh(state.loop);
}

async function start() {
  try {
    showDashboard(await api("/api/whoami"));
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(state.token ? `Logged out: ${err.message}` : "");
      return;
    }
    document.getElementById("error").textContent = `Cannot reach the scheduler API: ${err.message}. Retrying in ${POLL_MS / 1000} s.`;
    document.getElementById("error").hidden = false;
    setTimeout(start, POLL_MS);
  }
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("login-token");
  state.token = input.value.trim();
  input.value = "";
  sessionStorage.setItem(TOKEN_KEY, state.token);
  start();
});

document.getElementById("logout").addEventListener("click", () => showLogin("Logged out."));

start();
