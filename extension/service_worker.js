// personad's extension: its service worker (Manifest V3).
//
// Joins the bus as extension:<name>, a provider of cap:browser, serving
// screenshot and browser_js (commands.js) one at a time, and shows the bus
// events of the topics it was paired with as browser notifications. It also
// always subscribes to persona.graduated and shows a graduation, but only one
// the bus says academy:main published (graduation.js).
//
// Configuration, first found wins:
//   1. config.json beside this file, written by `personad extension pair`
//      ({url, token, name, topics, heartbeat_s}): no UI needed, which is also
//      how the tests load it;
//   2. chrome.storage.local "config", set by the options page.

import { BusConnection } from "./bus.js";
import { browserJs, screenshot } from "./commands.js";
import { ACADEMY_CLIENT, BadGraduation, GRADUATED_TOPIC, checkGraduated, graduationNotice } from "./graduation.js";
import { ErrorCode, RpcError } from "./protocol.js";

const HANDLERS = { browser_js: browserJs, screenshot };
const KEEPALIVE_ALARM = "personad-keepalive";
const MAX_REMEMBERED_NOTIFICATIONS = 20;
const MAX_REMEMBERED_IGNORED = 50;

// State for people (the service worker's console) and tests (read over CDP).
const personad = {
  state: "idle",
  detail: "",
  clientId: null,
  source: null,
  notifications: [],
  // This connection's subscriptions, as the bus last answered bus.subscribe.
  subscriptions: [],
  // Events acted on by nobody: forged or malformed graduations, with why.
  ignored: [],
  get stats() {
    return bus ? bus.stats : null;
  },
};
globalThis.personad = personad;

let bus = null;
let starting = null;
let queue = Promise.resolve();

// One command at a time: they share the work tab and its debugger session.
function oneAtATime(work) {
  const run = queue.then(work, work);
  queue = run.catch(() => {});
  return run;
}

async function onRequest(method, params) {
  const handler = HANDLERS[method];
  if (!handler) throw new RpcError(ErrorCode.METHOD_NOT_FOUND, `${method} is not served by the extension`);
  return oneAtATime(() => handler(params));
}

function summary(data) {
  if (typeof data === "string") return data;
  if (data && typeof data.text === "string") return data.text;
  if (data && typeof data.message === "string") return data.message;
  return JSON.stringify(data ?? null);
}

function remember(list, entry, limit) {
  list.push(entry);
  list.splice(0, list.length - limit);
}

function notify(id, options, publisher) {
  chrome.notifications.create(id, { type: "basic", iconUrl: "icon128.png", ...options }, () => {
    if (chrome.runtime.lastError) console.warn("personad: notification failed", chrome.runtime.lastError.message);
  });
  remember(
    personad.notifications,
    { id, topic: options.title, title: options.title, message: options.message, publisher },
    MAX_REMEMBERED_NOTIFICATIONS,
  );
}

function ignore(topic, publisher, field, reason) {
  console.warn(`personad: ${topic} from ${publisher} ignored: ${reason}`);
  remember(personad.ignored, { topic, publisher, field, reason }, MAX_REMEMBERED_IGNORED);
}

function onGraduated(data, publisher) {
  // The bus stamps publisher; anything else in the event is the publisher's word.
  if (publisher !== ACADEMY_CLIENT) {
    ignore(GRADUATED_TOPIC, publisher, "publisher", `publisher ${publisher} is not ${ACADEMY_CLIENT}`);
    return;
  }
  let event;
  try {
    event = checkGraduated(data);
  } catch (error) {
    if (!(error instanceof BadGraduation)) throw error;
    ignore(GRADUATED_TOPIC, publisher, error.field, error.message);
    return;
  }
  const { id, ...options } = graduationNotice(event);
  notify(id, options, publisher);
}

function onEvent({ topic, data, publisher }) {
  try {
    // Never through the generic path below, even under a pattern such as
    // persona.*: that would show a forged graduation as if it were news.
    if (topic === GRADUATED_TOPIC) {
      onGraduated(data, publisher);
      return;
    }
    const id = `personad-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
    notify(id, {
      title: String(topic ?? "personad"),
      message: summary(data).slice(0, 500),
      contextMessage: publisher ? `from ${publisher}` : "",
    }, publisher);
  } catch (error) {
    // One odd event must not take the connection's message handler down.
    console.error("personad: event not shown", error);
  }
}

function onSubscribed(topics) {
  personad.subscriptions = topics;
}

function onState(state, detail) {
  personad.state = state;
  personad.detail = detail;
  personad.clientId = bus?.clientId ?? null;
  if (state !== "connected") personad.subscriptions = [];
  if (state === "refused") console.error(`personad: the bus refused us: ${detail}`);
}

async function loadConfig() {
  try {
    const response = await fetch(chrome.runtime.getURL("config.json"), { cache: "no-store" });
    if (response.ok) return { source: "config.json", config: await response.json() };
  } catch {
    // no config.json: not paired by the CLI
  }
  const { config } = await chrome.storage.local.get("config");
  return config ? { source: "options", config } : null;
}

async function connect() {
  if (bus) return;
  const found = await loadConfig();
  if (!found?.config?.url || !found?.config?.token) {
    onState("unpaired", "run `personad extension pair`, or set the bus URL and token in the options page");
    return;
  }
  personad.source = found.source;
  // Graduations are shown whatever topics the pairing chose; bus.js
  // subscribes on every (re)connect.
  const topics = [...new Set([...(found.config.topics ?? []), GRADUATED_TOPIC])];
  bus = new BusConnection({ ...found.config, topics }, { onRequest, onEvent, onState, onSubscribed });
  bus.start();
}

function start() {
  starting ??= connect().finally(() => {
    starting = null;
  });
  return starting;
}

async function restart() {
  if (bus) bus.stop();
  bus = null;
  await start();
}

chrome.runtime.onStartup.addListener(start);
chrome.runtime.onInstalled.addListener(start);
chrome.storage.onChanged.addListener((changes, area) => {
  if (area === "local" && changes.config) restart();
});
// A safety net: should the worker have been stopped, the alarm wakes it and
// the top-level start() below connects again.
chrome.alarms.create(KEEPALIVE_ALARM, { periodInMinutes: 1 });
chrome.alarms.onAlarm.addListener((alarm) => {
  if (alarm.name === KEEPALIVE_ALARM) start();
});
chrome.runtime.onMessage.addListener((message, _sender, reply) => {
  if (message === "personad.status") {
    reply({ state: personad.state, detail: personad.detail, clientId: personad.clientId, source: personad.source });
  }
});

start();
