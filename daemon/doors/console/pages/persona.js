// A persona's page: its profile from the registry, whether it is on the bus, and tabs
// for chat (streamed), memories, goals, analytics, plugins and Academy history.
import { call, callStreamed } from "../api.js";
import { barList } from "../charts.js";
import { badge, duration, errorBox, field, figures, fill, h, loading, num, tabs } from "../ui.js";
import { lineageText, stackText } from "./personas.js";
import { goalsPanel, memoriesPanel } from "./persona_brain.js";
import { academyPanel, analyticsPanel, pluginsPanel } from "./persona_insights.js";

/** Conversations of this tab, by persona: kept while navigating, gone with the tab. */
const conversations = new Map();
const CHAT_DEADLINE_MS = 300_000; // a long reply on a busy CPU

export async function renderPersona(main, ctx, id, tab) {
  ctx.title(id);
  const target = `persona:${id}`;
  let displayName = id; // the profile's name once it is known
  const head = h("div", { class: "persona-head" }, loading(`Loading ${id}`));
  const panels = [
    { key: "chat", label: "Chat", render: (p) => chatPanel(p, ctx, id, () => displayName) },
    { key: "memories", label: "Memories", render: (p) => memoriesPanel(p, ctx, target) },
    { key: "goals", label: "Goals", render: (p) => goalsPanel(p, ctx, target) },
    { key: "analytics", label: "Analytics", render: (p) => analyticsPanel(p, ctx, target) },
    { key: "plugins", label: "Plugins", render: (p) => pluginsPanel(p, ctx, target) },
    { key: "academy", label: "Academy", render: (p) => academyPanel(p, ctx, id) },
  ];
  fill(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/personas" }, "Personas"), " / ", id),
    head,
    tabs(`${id}'s pages`, panels, tab ?? "chat", (key) => ctx.replace(`#/persona/${id}/${key}`)),
  );

  const [profile, clients, status, lora] = await Promise.allSettled([
    call("cap:registry", "persona.get", { persona_id: id }, { signal: ctx.signal }),
    call("bus", "bus.clients", { kind: "persona" }, { signal: ctx.signal }),
    call(target, "persona.status", {}, { signal: ctx.signal, deadlineMs: 5000 }),
    // The stack it runs now (it may load one by itself at start); the
    // registry's profile says only what it was given.
    call(target, "lora.status", {}, { signal: ctx.signal, deadlineMs: 5000 }),
  ]);
  if (ctx.signal.aborted) return;
  const online = clients.status === "fulfilled" ? clients.value.clients.some((c) => c.id === target) : null;
  const p = profile.status === "fulfilled" ? profile.value.profile : null;
  const st = status.status === "fulfilled" ? status.value : null;
  const live = lora.status === "fulfilled" ? lora.value : null;
  const stack = live
    ? live.stack.length ? `${live.stack.map((s) => s.name).join(" → ")} (${live.mode})` : "base model"
    : p ? stackText(p) : "—";
  const name = p?.name ?? st?.name ?? id;
  displayName = name;
  ctx.title(name);
  fill(
    head,
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, name, h("span", { class: "id" }, ` ${target}`)),
      h(
        "p",
        { class: "badges" },
        online === null ? badge("connection unknown", "muted") : online ? badge("connected", "good") : badge("offline", "warn"),
        p ? badge(p.status, p.status === "active" ? "good" : "neutral", `registry status ${p.status}`) : null,
      ),
    ),
    p ? h("p", { class: "role" }, p.role) : null,
    (p?.description || st?.description) ? h("p", { class: "description" }, p?.description || st?.description) : null,
    online === false
      ? h(
          "p",
          { class: "note", role: "status" },
          `${target} is not on the bus: its chat, memories, goals, analytics, plugins and Academy history answer only while its daemon runs.`,
        )
      : null,
    h(
      "div",
      { class: "grid-2" },
      figures(
        [
          ["Stack", stack],
          ["Lineage", p ? lineageText(p) : "—"],
          ["Model", p ? p.model || "the inference service's default" : "—"],
          ["Style", p ? `${p.communication.style}, ${p.communication.detail_level}` : "—"],
          ["Tags", p?.tags.length ? p.tags.join(", ") : "—"],
          ...(st ? [["Up for", duration(st.uptime_s)], ["Requests in flight", num(st.inflight)]] : []),
        ],
        "Profile",
      ),
      p ? h("figure", { class: "traits" }, barList({ label: `${name}'s traits, 0 to 100`, rows: Object.entries(p.traits).map(([k, v]) => ({ label: k, value: v })), max: 100 }), h("figcaption", {}, "Traits (0–100, 50 neutral)")) : null,
    ),
    profile.status === "rejected" ? errorBox(profile.reason, { title: profile.reason.offline ? "The registry is offline" : "The registry did not give the profile" }) : null,
  );
}

function chatPanel(panel, ctx, id, nameOf) {
  const target = `persona:${id}`;
  const history = conversations.get(id) ?? [];
  conversations.set(id, history);
  const log = h("ol", { class: "chat-log", role: "log", "aria-live": "polite", "aria-label": `Conversation with ${target}` });
  for (const message of history) log.append(messageView(message).el);
  const empty = h("p", { class: "empty chat-empty" }, "Say something to start the conversation.");
  empty.hidden = history.length > 0;

  const input = h("textarea", { name: "message", rows: 3, required: true, maxlength: 32000, class: "chat-input" });
  const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, value: 0.7, inputmode: "decimal" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, max: 2048, step: 1, value: 256, inputmode: "numeric" });
  const sendButton = h("button", { type: "submit" }, "Send");
  const stopButton = h("button", { type: "button", class: "quiet", disabled: true }, "Stop");
  let controller = null;
  stopButton.addEventListener("click", () => controller?.abort());

  const form = h(
    "form",
    { class: "chat-form", "aria-label": `Message to ${target}` },
    field(`Message to ${id}`, input, "Enter sends, Shift+Enter starts a new line."),
    h(
      "div",
      { class: "chat-controls" },
      field("Temperature", temperature),
      field("Most tokens", maxTokens),
      h("div", { class: "buttons" }, sendButton, stopButton),
    ),
  );
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    empty.hidden = true;
    const mine = { who: "you", text };
    history.push(mine);
    log.append(messageView(mine).el);
    const reply = { who: "persona", name: nameOf(), text: "", pieces: 0, streaming: true };
    history.push(reply);
    const view = messageView(reply);
    log.append(view.el);
    view.el.scrollIntoView({ block: "nearest" });
    input.value = "";
    controller = new AbortController();
    const stopWith = () => controller?.abort();
    ctx.signal.addEventListener("abort", stopWith, { once: true });
    sendButton.disabled = true;
    stopButton.disabled = false;
    try {
      const result = await callStreamed(
        target,
        "chat",
        { message: text, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) },
        {
          signal: controller.signal,
          deadlineMs: CHAT_DEADLINE_MS,
          onProgress: (method, params) => {
            if (method !== "chat.token") return;
            reply.text += params.text;
            reply.pieces += 1;
            view.add(params.text);
          },
        },
      );
      reply.text = result.reply;
      reply.result = result;
    } catch (exc) {
      reply.error = exc.name === "AbortError" ? "stopped" : exc;
    } finally {
      reply.streaming = false;
      view.done();
      ctx.signal.removeEventListener("abort", stopWith);
      controller = null;
      sendButton.disabled = false;
      stopButton.disabled = true;
    }
  });
  fill(panel, h("h2", { class: "visually-hidden" }, "Chat"), empty, log, form);
}

/** One message in the log; a reply grows piece by piece (add) and gets its figures at the end (done). */
function messageView(message) {
  const text = h("p", { class: "msg-text" }, message.text);
  const meta = h("div", { class: "msg-meta" });
  const el = h("li", { class: `msg msg-${message.who}` }, h("p", { class: "msg-who" }, message.who === "you" ? "You" : message.name), text, meta);
  function done() {
    el.removeAttribute("aria-busy");
    el.classList.remove("streaming");
    if (message.result && text.textContent !== message.result.reply) text.textContent = message.result.reply;
    el.dataset.pieces = String(message.pieces ?? 0);
    if (message.result) fill(meta, replyFigures(message.result, message.pieces));
    else if (message.error === "stopped") fill(meta, h("p", {}, "Stopped."));
    else if (message.error) fill(meta, errorBox(message.error));
  }
  if (message.streaming) {
    el.setAttribute("aria-busy", "true");
    el.classList.add("streaming");
  } else if (message.who !== "you") {
    done();
  }
  return { el, add: (piece) => text.append(piece), done };
}

function replyFigures(r, pieces) {
  const stack = r.stack.length ? r.stack.map((s) => s.name).join(" → ") : "base model";
  return h(
    "details",
    { class: "reply-figures" },
    h(
      "summary",
      {},
      `${r.completion_tokens} tokens in ${num(r.timings.total_ms / 1000, 1)} s (${num(r.timings.tokens_per_s, 1)} tokens/s), ${r.finish_reason}, stack ${stack}`,
    ),
    figures([
      ["Model", r.model],
      ["Stack", r.stack.length ? `${stack} (${r.mode})` : stack],
      ["Finish", r.finish_reason],
      ["Prompt tokens", num(r.prompt_tokens)],
      ["Completion tokens", num(r.completion_tokens)],
      ["Pieces streamed", num(pieces ?? 0)],
      ["Memories used", `${num(r.memories_used)} (${num(r.memory_ms, 0)} ms to recall)`],
      ["Queued", `${num(r.timings.queued_ms, 0)} ms`],
      ["Prefill", `${num(r.timings.prefill_ms, 0)} ms`],
      ["Decode", `${num(r.timings.decode_ms, 0)} ms`],
      ["Total", `${num(r.timings.total_ms, 0)} ms`],
      ["Logged", r.logged ? "yes, as an interaction" : "no"],
    ]),
  );
}

