// The bus page: who is connected, what they serve, requests in flight, and request
// and error rates computed between two polls of /metrics (every 2 s).
import { call, health, metrics } from "../api.js";
import { sparkline } from "../charts.js";
import { badge, duration, errorBox, figures, fill, h, num, pct, plural, section, table, when } from "../ui.js";

const POLL_MS = 2000;
const HISTORY = 60; // two minutes of rates in the sparkline

export function renderBus(main, ctx) {
  ctx.title("Bus");
  const healthEl = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const ratesEl = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const clientsEl = h("div", {}, h("p", { class: "loading" }, "Loading…"));
  const capsEl = h("div", {});
  const updated = h("p", { class: "fine" });
  // Announced only when the bus's state changes, not at every poll.
  const announce = h("p", { class: "visually-hidden", role: "status" });
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Bus"), updated, announce),
    h(
      "div",
      { class: "grid-2" },
      section("Health", healthEl),
      section("Requests", ratesEl),
    ),
    section("Connected clients", clientsEl),
    section("Capabilities", capsEl),
  );

  let previous = null; // {time, ok, error, byCode}
  const history = [];
  let lastAnnounced = "";

  ctx.every(POLL_MS, async () => {
    const [healthDoc, clients, text] = await Promise.allSettled([
      health({ signal: ctx.signal }),
      call("bus", "bus.clients", {}, { signal: ctx.signal }),
      metrics({ signal: ctx.signal }),
    ]);
    if (ctx.signal.aborted) return;
    renderHealth(healthEl, healthDoc);
    renderClients(clientsEl, capsEl, clients);
    const now = performance.now() / 1000;
    if (text.status === "fulfilled") {
      const parsed = parseMetrics(text.value);
      const sample = {
        time: now,
        ok: sum(parsed, "personad_bus_requests_total", (l) => l.outcome === "ok"),
        error: sum(parsed, "personad_bus_requests_total", (l) => l.outcome === "error"),
        byCode: Object.fromEntries(
          parsed.filter((m) => m.name === "personad_bus_errors_total" && m.labels.code).map((m) => [m.labels.code, m.value]),
        ),
        events: sum(parsed, "personad_bus_events_delivered_total"),
      };
      renderRates(ratesEl, previous, sample, history);
      previous = sample;
    } else {
      fill(ratesEl, errorBox(text.reason, { title: "/metrics is not readable with this token" }), h("p", { class: "fine" }, "Rates need the token's metrics grant (admin tokens have it)."));
    }
    updated.textContent = `Live: updated ${new Date().toLocaleTimeString()}, every ${POLL_MS / 1000} s`;
    const state = healthDoc.status === "fulfilled" ? healthDoc.value.status : "unreachable";
    if (state !== lastAnnounced) {
      announce.textContent = `Bus ${state}`;
      lastAnnounced = state;
    }
  });
}

function renderHealth(el, outcome) {
  if (outcome.status !== "fulfilled") {
    fill(el, errorBox(outcome.reason, { title: "The bus did not answer /healthz" }));
    return;
  }
  const doc = outcome.value;
  const kinds = Object.entries(doc.clients ?? {}).map(([kind, n]) => `${n} ${kind}`).join(", ") || "none";
  fill(
    el,
    figures(
      [
        ["Status", badge(doc.status, doc.status === "ok" ? "good" : "warn")],
        ["Version", `${doc.version} (protocol ${doc.protocol})`],
        ["Uptime", duration(doc.uptime_s)],
        ["Connections", num(doc.connections)],
        ["Clients", kinds],
        ["Requests in flight", num(doc.inflight)],
      ],
      "Bus health",
    ),
  );
}

function renderRates(el, previous, sample, history) {
  if (previous === null) {
    fill(
      el,
      figures([
        ["Requests answered", num(sample.ok + sample.error)],
        ["Error answers", num(sample.error)],
      ]),
      h("p", { class: "fine" }, "Rates appear after the next poll."),
    );
    return;
  }
  const dt = Math.max(sample.time - previous.time, 1e-3);
  const okRate = Math.max(0, sample.ok - previous.ok) / dt;
  const errRate = Math.max(0, sample.error - previous.error) / dt;
  const total = okRate + errRate;
  history.push(total);
  if (history.length > HISTORY) history.shift();
  const codes = Object.keys({ ...previous.byCode, ...sample.byCode }).sort();
  fill(
    el,
    figures(
      [
        ["Requests/s", h("span", { class: "rate", dataset: { rate: total.toFixed(3) } }, num(total, 2))],
        ["Errors/s", num(errRate, 2)],
        ["Error share (last poll)", total > 0 ? pct(errRate / total) : "—"],
        ["Answered since start", num(sample.ok + sample.error)],
        ["Error answers since start", num(sample.error)],
        ["Events delivered/s", num(Math.max(0, sample.events - previous.events) / dt, 2)],
      ],
      "Request rates",
    ),
    sparkline({ label: `Requests per second over the last ${history.length} polls, now ${total.toFixed(2)}`, values: history }),
    table(
      "Error answers by code",
      ["Code", "Total", "Per second now"],
      codes.map((code) => [code, num(sample.byCode[code] ?? 0), num(Math.max(0, (sample.byCode[code] ?? 0) - (previous.byCode[code] ?? 0)) / dt, 2)]),
      { empty: "No error answers since the bus started." },
    ),
  );
}

function renderClients(el, capsEl, outcome) {
  if (outcome.status !== "fulfilled") {
    fill(el, errorBox(outcome.reason));
    fill(capsEl);
    return;
  }
  const clients = [...outcome.value.clients].sort((a, b) => a.id.localeCompare(b.id));
  const now = Date.now() / 1000;
  // A federated bus (--nats) lists every node's clients, each with its node,
  // and names the nodes that did not answer in time.
  const federated = clients.some((c) => c.node) || outcome.value.missing_nodes?.length > 0;
  const missing = outcome.value.missing_nodes ?? [];
  fill(
    el,
    missing.length
      ? h("p", { class: "error", role: "status" },
          `No answer from ${plural(missing.length, "node")} (${missing.join(", ")}): their clients are not listed.`)
      : null,
    table(
      plural(clients.length, "connected client"),
      ["Client", "Kind", ...(federated ? ["Node"] : []), "Capabilities", "In flight", "Codec", "Token", "Connected"],
      clients.map((c) => [
        clientLink(c.id),
        c.kind,
        ...(federated ? [c.node ?? "—"] : []),
        c.capabilities.length ? c.capabilities.join(", ") : "—",
        num(c.inflight),
        c.codec,
        c.token ?? "—",
        h("span", { title: when(c.connected_at) }, `${duration(now - c.connected_at)} ago`),
      ]),
      { empty: "No client is connected." },
    ),
  );
  const byCap = new Map();
  for (const c of clients) for (const cap of c.capabilities) byCap.set(cap, [...(byCap.get(cap) ?? []), c.id]);
  fill(
    capsEl,
    table(
      "Capabilities and their providers",
      ["Capability", "Target", "Providers"],
      [...byCap.entries()].sort().map(([cap, ids]) => [cap, h("code", {}, `cap:${cap}`), ids.join(", ")]),
      { empty: "No client serves a capability.", captionHidden: true },
    ),
  );
}

function clientLink(id) {
  if (id.startsWith("persona:")) return h("a", { href: `#/persona/${id.slice(8)}` }, id);
  return h("code", {}, id);
}

/** Prometheus text (0.0.4) into [{name, labels, value}]: enough of the format for the bus's own metrics. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const lm of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[lm[1]] = lm[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
      }
    }
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

function sum(samples, name, where = () => true) {
  return samples.filter((m) => m.name === name && where(m.labels)).reduce((a, m) => a + m.value, 0);
}
