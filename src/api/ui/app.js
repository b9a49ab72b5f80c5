// The built-in page of fog-orchestrator: the dependency graph by layer, each service coloured by state and
// health, the services table with restart/stop/start buttons, and the recent events, kept live by the
// event stream (GET /api/orchestration/events). It uses the public API only, from the same origin.
"use strict";

const API = "/api/orchestration";
const MAX_EVENTS = 60;
const state = { services: {}, health: {}, graph: null, token: sessionStorage.getItem("fog-token") };

function $(selector) { return document.querySelector(selector); }

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

// The colour class of a service: health while it runs, else its state.
function colour(service, health) {
  const status = service.status;
  if (status === "running") return ["healthy", "degraded", "unhealthy"].includes(health) ? health : "pending";
  if (status === "pending" || status === "starting") return "pending";
  return "down";
}

function say(text) {
  const message = $("#message");
  message.textContent = text;
  message.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { message.hidden = true; }, 6000);
}

// ---- graph -----------------------------------------------------------------------------------------------

async function loadGraph() {
  state.graph = await getJson(`${API}/dependencies`);
  drawGraph();
}

function drawGraph() {
  const graph = state.graph;
  const root = $("#graph");
  root.replaceChildren();
  if (!graph) return;
  const names = Object.keys(graph.dependencies);
  const layers = new Map();
  for (const name of graph.startup_order.filter((n) => names.includes(n))) {
    const layer = graph.dependencies[name].layer ?? 0;
    if (!layers.has(layer)) layers.set(layer, []);
    layers.get(layer).push(name);
  }
  const [width, height, gapX, gapY, pad] = [170, 44, 60, 16, 10];
  const place = {};
  let rows = 0;
  [...layers.keys()].sort((a, b) => a - b).forEach((layer, column) => {
    layers.get(layer).forEach((name, row) => {
      place[name] = { x: pad + column * (width + gapX), y: pad + row * (height + gapY) };
    });
    rows = Math.max(rows, layers.get(layer).length);
  });
  const columns = layers.size;
  root.setAttribute("viewBox", `0 0 ${pad * 2 + columns * width + (columns - 1) * gapX} ${pad * 2 + rows * (height + gapY)}`);
  root.style.height = `${pad * 2 + rows * (height + gapY)}px`;
  for (const name of names) {
    const detail = graph.dependencies[name];
    const edges = [...(detail.dependencies || []).map((d) => [d, false]), ...(detail.optional_dependencies || []).map((d) => [d, true])];
    for (const [dependency, optional] of edges) {
      const from = place[dependency], to = place[name];
      if (!from || !to) continue;
      const [x1, y1, x2, y2] = [from.x + width, from.y + height / 2, to.x, to.y + height / 2];
      root.append(svg("path", {
        class: optional ? "edge optional" : "edge",
        d: `M${x1},${y1} C${x1 + gapX / 2},${y1} ${x2 - gapX / 2},${y2} ${x2},${y2}`,
      }));
    }
  }
  for (const name of names) {
    const { x, y } = place[name] || { x: 0, y: 0 };
    const node = svg("g", { class: "node", "data-service": name, transform: `translate(${x},${y})` });
    node.append(svg("rect", { width, height }));
    const title = svg("text", { x: 10, y: 18 });
    title.textContent = name;
    const detail = svg("text", { x: 10, y: 34, class: "detail" });
    node.append(title, detail);
    root.append(node);
  }
  paintGraph();
}

function paintGraph() {
  for (const node of document.querySelectorAll("#graph .node")) {
    const name = node.dataset.service;
    const service = state.services[name];
    if (!service) continue;
    const health = service.health;
    const kind = colour(service, health);
    node.setAttribute("class", `node ${kind}`);
    node.dataset.state = service.status;
    node.dataset.health = health;
    const restarts = service.restart_count ? ` · ${service.restart_count}× restarted` : "";
    node.querySelector(".detail").textContent = `${service.status} · ${health}${restarts}`;
  }
}

// ---- services table ----------------------------------------------------------------------------------------

async function refresh() {
  const [services, health] = await Promise.all([getJson(`${API}/services`), getJson(`${API}/health`)]);
  state.services = services.services;
  state.health = health.services;
  const names = Object.keys(state.services);
  const running = names.filter((n) => state.services[n].status === "running").length;
  $("#summary").textContent =
    `${running} of ${names.length} running · ${health.composite_health} · ${services.is_ready ? "ready" : "not ready"}`;
  if (state.graph && names.some((n) => !state.graph.dependencies[n])) await loadGraph();
  renderTable();
  paintGraph();
}

function renderTable() {
  const body = $("#services tbody");
  const rows = Object.entries(state.services).map(([name, service]) => {
    const health = service.health;
    const uptime = state.health[name]?.uptime_1h;
    const reason = service.last_restart_reason || "";
    const actions = element("td", { class: "actions" });
    if (!service.external) {
      for (const action of ["restart", "stop", "start"]) {
        actions.append(element("button", { type: "button", textContent: action, onclick: () => control(action, name) }));
      }
    }
    return element("tr", {
      "data-service": name, "data-state": service.status, "data-health": health,
      "data-restarts": String(service.restart_count), "data-last-reason": reason,
    },
      element("td", {}, name),
      element("td", { class: "state" }, service.status),
      element("td", { class: `health ${health}` }, health),
      element("td", { class: "num" }, String(service.layer)),
      element("td", { class: "num restarts" }, String(service.restart_count)),
      element("td", {}, reason ? `${reason}${service.last_restart ? " at " + new Date(service.last_restart).toLocaleTimeString() : ""}` : "—"),
      element("td", { class: "num" }, uptime === undefined ? "—" : `${uptime.toFixed(1)} %`),
      element("td", {}, service.waiting_on || "—"),
      element("td", { class: "num" }, service.pid ? String(service.pid) : "—"),
      actions);
  });
  body.replaceChildren(...rows);
}

async function control(action, name, force = false) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  say(`${action} ${name}…`);
  const response = await fetch(`${API}/${action}/${encodeURIComponent(name)}`, {
    method: "POST", headers, body: JSON.stringify({ force }),
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    const token = window.prompt("This orchestrator needs its API token (api.token):");
    if (token) {
      state.token = token;
      sessionStorage.setItem("fog-token", token);
      return control(action, name, force);
    }
  } else if (response.status === 409 && !force && /force=true/.test(body.error || "")) {
    if (window.confirm(`${body.error}\n\n${action} ${name} with force?`)) return control(action, name, true);
  }
  say(response.ok ? `${action} ${name}: ${body.status || "done"}` : `${action} ${name}: ${body.error || response.status}`);
  refreshSoon();
}

// ---- events --------------------------------------------------------------------------------------------------

function describe(event) {
  switch (event.type) {
    case "state": return `${event.from} → ${event.to}`;
    case "health": return `${event.from} → ${event.to}${event.detail ? ": " + event.detail : ""}`;
    case "restart": return `reason ${event.reason}${event.attempt ? `, attempt ${event.attempt}` : ""}`;
    case "backoff": return `attempt ${event.attempt} in ${event.delay_seconds.toFixed(1)} s (${event.reason})`;
    case "failed": return `after ${event.attempts} attempts: ${event.error || ""}`;
    case "heartbeat_timeout": return `no heartbeat for ${event.timeout_seconds} s`;
    case "reload": return event.result === "success" ? `applied (${event.config_hash})` : `rejected: ${event.error}`;
    case "reset": return "missed events: state read again";
    default: return "";
  }
}

function showEvent(event) {
  const list = $("#events");
  const time = event.time ? new Date(event.time).toLocaleTimeString() : "";
  list.prepend(element("li", { "data-type": event.type, "data-service": event.service || "" },
    element("span", { class: "time" }, time),
    element("span", { class: "type" }, event.type),
    element("span", { class: "service" }, event.service || ""),
    element("span", { class: "what" }, describe(event))));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function refreshSoon() {
  clearTimeout(refreshSoon.timer);
  refreshSoon.timer = setTimeout(() => refresh().catch((error) => say(String(error))), 150);
}

// What an event says, applied to the page at once (the next read of /services fills in the rest).
function apply(event) {
  const service = event.service && state.services[event.service];
  if (!service) return;
  switch (event.type) {
    case "state": service.status = event.to; break;
    case "health": service.health = event.to; break;
    case "restart":
      service.restart_count = event.restart_count;
      service.last_restart_reason = event.reason;
      service.last_restart = event.time;
      break;
    default: return;
  }
  renderTable();
  paintGraph();
}

function listen() {
  const connection = $("#connection");
  // The stream starts with the events kept so far (listed, not applied: /services is newer), then
  // `caught_up`, then what happens from now on.
  let live = false;
  const source = new EventSource(`${API}/events`);
  source.onerror = () => { live = false; connection.dataset.state = "lost"; connection.textContent = "reconnecting…"; };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "caught_up") {
      live = true;
      connection.dataset.state = "live";
      connection.textContent = "live";
      refreshSoon();
      return;
    }
    showEvent(event);
    if (!live) return;
    apply(event);
    if (event.type === "reload" || event.type === "reset") loadGraph().catch(() => {});
    refreshSoon();
  };
}

async function start() {
  try {
    await loadGraph();
    await refresh();
  } catch (error) {
    say(`cannot read the API: ${error}`);
  }
  listen();
}

start();
