// The director's dashboard: polls status.json every second, shows each
// service's real servers, and charts weight and health over the last minutes.
// No framework and nothing from elsewhere: the page ships with the director.
"use strict";

const POLL_INTERVAL_MS = 1000;
const WINDOW_SECONDS = 300;
const MIN_SPAN_SECONDS = 2;
const COLOURS = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599", "#c2255c", "#5f3dc4"];
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 600, height: 140, left: 34, right: 8, top: 8, bottom: 18 };

// service name -> server -> [{time, weight, health}], oldest first
const history = new Map();
// server -> colour, stable while the page lives
const colours = new Map();

function colourOf(server) {
  if (!colours.has(server)) {
    colours.set(server, COLOURS[colours.size % COLOURS.length]);
  }
  return colours.get(server);
}

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  if (text !== null) {
    node.textContent = text;
  }
  return node;
}

function svgElement(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    node.setAttribute(name, value);
  }
  return node;
}

function shown(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function seconds(value) {
  if (value === null || value === undefined) {
    return "-";
  }
  if (value < 60) {
    return `${value.toFixed(1)}s`;
  }
  if (value < 3600) {
    return `${Math.floor(value / 60)}m${String(Math.floor(value % 60)).padStart(2, "0")}s`;
  }
  return `${Math.floor(value / 3600)}h${String(Math.floor((value % 3600) / 60)).padStart(2, "0")}m`;
}

function addPoint(serviceName, server, point, now) {
  if (!history.has(serviceName)) {
    history.set(serviceName, new Map());
  }
  const servers = history.get(serviceName);
  if (!servers.has(server)) {
    servers.set(server, []);
  }
  const points = servers.get(server);
  if (points.length && points[points.length - 1].time >= point.time) {
    return;
  }
  points.push(point);
  while (points.length && points[0].time < now - WINDOW_SECONDS) {
    points.shift();
  }
}

// The weight charted: the kernel's, or the policy's when the kernel has none
// (observe mode, or not written yet).
function chartedWeight(kernel, desired) {
  return kernel !== null ? kernel : desired;
}

function ago(span) {
  return span >= 60 ? `${Math.round(span / 60)}m` : `${Math.round(span)}s`;
}

function remember(status) {
  const now = status.director.time;
  for (const service of status.services) {
    for (const server of service.servers) {
      addPoint(service.name, server.server, {
        time: now,
        weight: chartedWeight(server.kernel_weight, server.desired_weight),
        health: server.health ? server.health.value : null,
      }, now);
    }
  }
}

// The director keeps the last minutes, so the charts open on the recent past.
async function loadHistory() {
  try {
    const response = await fetch("history.json", { cache: "no-store" });
    if (!response.ok) {
      return;
    }
    const past = await response.json();
    const now = past.samples.length ? past.samples[past.samples.length - 1].time : 0;
    for (const sample of past.samples) {
      for (const [serviceName, servers] of Object.entries(sample.services)) {
        for (const [server, [kernel, desired, health]] of Object.entries(servers)) {
          addPoint(serviceName, server, { time: sample.time, weight: chartedWeight(kernel, desired), health }, now);
        }
      }
    }
  } catch (error) {
    // Charts then start empty and fill as the page polls; the status itself matters more.
  }
}

function serverRow(server) {
  const row = element("tr", { "data-server": server.server });
  const name = element("td", { "data-field": "server" });
  const swatch = element("span", { class: "swatch" });
  swatch.style.background = colourOf(server.server);
  name.append(swatch, server.server);
  const agent = server.agent.stopped ? "stopped" : server.agent.state;
  const health = server.health ? `${server.health.value}` : "-";
  const override = server.override ? ` (${server.override})` : "";
  const counters = server.counters || {};
  row.append(
    name,
    element("td", { "data-field": "agent", class: `state-${server.agent.state}` },
      server.agent.for === null ? agent : `${agent} ${seconds(server.agent.for)}`),
    element("td", { "data-field": "health", class: "number" }, health),
    element("td", { "data-field": "health-age", class: "number" }, server.health ? seconds(server.health.age) : "-"),
    element("td", { "data-field": "kernel-weight", class: "number" }, shown(server.kernel_weight)),
    element("td", server.pending
      ? { "data-field": "desired-weight", class: "number pending", title: "the kernel does not have this weight yet" }
      : { "data-field": "desired-weight", class: "number" }, shown(server.desired_weight)),
    element("td", { "data-field": "base-weight", class: "number" }, shown(server.base_weight)),
    element("td", { "data-field": "reason" }, shown(server.reason) + override),
    element("td", { "data-field": "detail", class: "detail" }, server.detail),
    element("td", { "data-field": "active", class: "number" }, shown(counters.active_connections)),
    element("td", { "data-field": "inactive", class: "number" }, shown(counters.inactive_connections)),
    element("td", { "data-field": "rate", class: "number" }, shown(counters.connection_rate)),
  );
  return row;
}

function serverTable(service) {
  const table = element("table");
  const head = element("tr");
  const columns = [
    ["server", ""], ["agent", ""], ["health", "number"], ["age", "number"], ["kernel weight", "number"],
    ["policy weight", "number"], ["base", "number"], ["reason", ""], ["why", ""],
    ["active", "number"], ["inactive", "number"], ["conn/s", "number"],
  ];
  for (const [title, kind] of columns) {
    head.append(element("th", kind ? { class: kind } : {}, title));
  }
  table.append(element("thead"), element("tbody"));
  table.tHead.append(head);
  for (const server of service.servers) {
    table.tBodies[0].append(serverRow(server));
  }
  return table;
}

function chart(title, serviceName, field, fixedTop, now) {
  const servers = history.get(serviceName) || new Map();
  let top = fixedTop;
  if (top === null) {
    top = 1;
    for (const points of servers.values()) {
      for (const point of points) {
        if (point[field] !== null && point[field] > top) {
          top = point[field];
        }
      }
    }
  }
  // The time axis spans what is known, up to the window, so a page opened
  // on a young director shows lines rather than a dot at the right edge.
  let oldest = now;
  for (const points of servers.values()) {
    if (points.length && points[0].time < oldest) {
      oldest = points[0].time;
    }
  }
  const span = Math.min(Math.max(now - oldest, MIN_SPAN_SECONDS), WINDOW_SECONDS);
  const plotWidth = CHART.width - CHART.left - CHART.right;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const x = (time) => CHART.left + plotWidth * (1 - (now - time) / span);
  const y = (value) => CHART.top + plotHeight * (1 - value / top);
  const svg = svgElement("svg", {
    class: "chart", viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img",
    "aria-label": `${title} of ${serviceName}`, "data-chart": field,
  });
  for (const share of [0, 0.5, 1]) {
    const level = y(top * share);
    svg.append(svgElement("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right, y1: level, y2: level }));
    const label = svgElement("text", { class: "axis", x: CHART.left - 4, y: level + 3, "text-anchor": "end" });
    label.textContent = String(Math.round(top * share));
    svg.append(label);
  }
  for (const [text, anchor, position] of [[`-${ago(span)}`, "start", CHART.left], ["now", "end", CHART.width - CHART.right]]) {
    const label = svgElement("text", { class: "axis", x: position, y: CHART.height - 4, "text-anchor": anchor });
    label.textContent = text;
    svg.append(label);
  }
  for (const [server, points] of servers) {
    const known = points.filter((point) => point[field] !== null);
    const coordinates = known.map((point) => `${x(point.time).toFixed(1)},${y(point[field]).toFixed(1)}`);
    if (known.length === 1) {
      // One sample is a moment; a short level line makes it visible.
      coordinates.unshift(`${(x(known[0].time) - 6).toFixed(1)},${y(known[0][field]).toFixed(1)}`);
    }
    if (coordinates.length) {
      svg.append(svgElement("polyline", { points: coordinates.join(" "), stroke: colourOf(server), "data-server": server }));
    }
  }
  const figure = element("figure");
  figure.append(svg, element("figcaption", {}, title));
  return figure;
}

function serviceSection(service, now) {
  const section = element("section", { class: "service", "data-service": service.name });
  const header = element("header");
  header.append(
    element("h2", {}, `${service.name}  ${service.virtual_service}`),
    element("span", { class: "quiet" }, `${service.scheduler}, ${service.mode} mode` +
      (service.in_kernel ? "" : ", not in the kernel")),
  );
  if (service.panic) {
    header.append(element("span", { class: "badge panic", "data-field": "panic" },
      `PANIC: ${service.serving} of ${service.considered} serving`));
  }
  section.append(header, serverTable(service));
  const charts = element("div", { class: "charts" });
  charts.append(
    chart("weight (kernel, or policy when observing)", service.name, "weight", null, now),
    chart("health (0..100)", service.name, "health", 100, now),
  );
  section.append(charts);
  return section;
}

function total(counts) {
  return Object.values(counts).reduce((sum, count) => sum + count, 0);
}

// A director of a VRRP pair: its state, and whether it follows the master.
function renderPair(pair) {
  const badge = document.getElementById("vrrp");
  badge.hidden = !pair;
  if (!pair) {
    return;
  }
  badge.textContent = `VRRP ${pair.vrrp_state}` + (pair.following ? ": following the master" : "");
  badge.className = `badge vrrp-${pair.vrrp_state.toLowerCase()}`;
  const priority = pair.priority === null ? null : `priority ${pair.priority}`;
  badge.title = [priority, `peer ${pair.peer}`, pair.last_error].filter((part) => part).join("; ");
}

function render(status) {
  const mode = document.getElementById("mode");
  mode.textContent = status.director.observe ? "OBSERVE: weights not written" : "LIVE";
  mode.className = status.director.observe ? "badge observe" : "badge live";
  renderPair(status.pair);
  const summary = {
    agents: status.agents.length,
    passes: status.passes.total,
    failed: status.passes.failed,
    writes: status.passes.writes,
    "last-pass": status.passes.last ? `${seconds(status.passes.last.age)} ago` : "none yet",
    refused: total(status.necp.refused) + total(status.necp.connections_refused),
  };
  for (const [field, value] of Object.entries(summary)) {
    document.querySelector(`#summary [data-field="${field}"]`).textContent = String(value);
  }
  const services = document.getElementById("services");
  const sections = status.services.map((service) => serviceSection(service, status.director.time));
  if (!sections.length) {
    sections.push(element("p", { class: "quiet" }, "No services are configured."));
  }
  services.replaceChildren(...sections);
}

function problem(text) {
  const banner = document.getElementById("problem");
  banner.hidden = text === null;
  banner.textContent = text || "";
}

async function poll() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    if (!response.ok) {
      throw new Error(`status.json answered ${response.status}`);
    }
    const status = await response.json();
    remember(status);
    render(status);
    problem(null);
  } catch (error) {
    problem(`Cannot read the director's status (${error.message}); retrying every second.`);
  } finally {
    setTimeout(poll, POLL_INTERVAL_MS);
  }
}

document.getElementById("window").textContent = String(WINDOW_SECONDS / 60);
loadHistory().then(poll);
