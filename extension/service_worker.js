// personad's extension: its service worker (Manifest V3).
//
// Joins the bus as extension:<name>, a provider of cap:browser, serving
// screenshot and browser_js (commands.js) one at a time, and shows the bus
// events of the topics it was paired with as browser notifications.
//
// Configuration, first found wins:
//   1. config.json beside this file, written by `personad extension pair`
//      ({url, token, name, topics, heartbeat_s}): no UI needed, which is also
//      how the tests load it;
//   2. chrome.storage.local "config", set by the options page.

import { BusConnection } from "./bus.js";
import { browserJs, screenshot } from "./commands.js";
import { ErrorCode, RpcError } from "./protocol.js";

const HANDLERS = { browser_js: browserJs, screenshot };
const KEEPALIVE_ALARM = "personad-keepalive";
const MAX_REMEMBERED_NOTIFICATIONS = 20;

// State for people (the service worker's console) and tests (read over CDP).
const personad = {
  state: "idle",
  detail: "",
  clientId: null,
  source: null,
  notifications: [],
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

function onEvent({ topic, data, publisher }) {
  const id = `personad-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
  const options = {
    type: "basic",
    iconUrl: "icon128.png",
    title: String(topic ?? "personad"),
    message: summary(data).slice(0, 500),
    contextMessage: publisher ? `from ${publisher}` : "",
  };
  chrome.notifications.create(id, options, () => {
    if (chrome.runtime.lastError) console.warn("personad: notification failed", chrome.runtime.lastError.message);
  });
  personad.notifications.push({ id, topic: options.title, message: options.message, publisher });
  personad.notifications.splice(0, personad.notifications.length - MAX_REMEMBERED_NOTIFICATIONS);
}

function onState(state, detail) {
  personad.state = state;
  personad.detail = detail;
  personad.clientId = bus?.clientId ?? null;
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
  bus = new BusConnection(found.config, { onRequest, onEvent, onState });
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
