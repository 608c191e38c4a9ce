// The console's only way to the bus: the HTTP door on the bus's own port
// (POST /v1/call/{target}/{method}, GET /v1/events, POST /v1/pair), with the
// token from this tab's sessionStorage in an Authorization header.
import { BusError, FORBIDDEN, UNAUTHENTICATED } from "./errors.js";
import { readEvents } from "./sse.js";

const STORE_KEY = "personad.console";

/** The login of this tab: kept in sessionStorage, so it ends with the tab and never reaches a URL. */
export const login = {
  get() {
    try {
      const raw = sessionStorage.getItem(STORE_KEY);
      const value = raw === null ? null : JSON.parse(raw);
      return value && typeof value.token === "string" ? value : null;
    } catch {
      return null;
    }
  },
  save(token, identity = {}) {
    sessionStorage.setItem(STORE_KEY, JSON.stringify({ token, ...identity }));
  },
  forget() {
    sessionStorage.removeItem(STORE_KEY);
  },
};

let onUnauthenticated = () => {};

/** What to do when the bus refuses the token (401): the app goes back to its login page. */
export function whenUnauthenticated(handler) {
  onUnauthenticated = handler;
}

async function send(path, { method = "POST", body, accept = "application/json", signal, deadlineMs, auth = true, token, reportRefusal = true } = {}) {
  const current = token ? null : auth ? login.get() : null;
  const headers = { Accept: accept };
  const bearer = token ?? current?.token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (deadlineMs) headers["X-Deadline-Ms"] = String(deadlineMs);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new BusError(null, `the bus did not answer (${exc.message})`);
  }
  if (response.status === 401 && current && reportRefusal) {
    const error = await errorOf(response);
    // Several calls may be refused at once: the first one logs out and says why.
    if (login.get()?.token === current.token) {
      login.forget();
      onUnauthenticated(error);
    }
    throw error;
  }
  return response;
}

/** The bus's error object from a failed answer; plain text (a /metrics refusal) becomes its message. */
async function errorOf(response) {
  const text = await response.text();
  try {
    const doc = JSON.parse(text);
    if (doc && doc.error) {
      return new BusError(doc.error.code, doc.error.message, { data: doc.error.data, status: response.status });
    }
  } catch {
    // not JSON: fall through
  }
  const code = response.status === 401 ? UNAUTHENTICATED : null;
  return new BusError(code, text.trim() || response.statusText, { status: response.status });
}

function callPath(target, method) {
  return `/v1/call/${encodeURIComponent(target)}/${encodeURIComponent(method)}`;
}

/** One bus call; resolves to its result or throws BusError as the bus stated it. */
export async function call(target, method, params, { signal, deadlineMs } = {}) {
  const response = await send(callPath(target, method), { body: params ?? {}, signal, deadlineMs });
  if (!response.ok) throw await errorOf(response);
  const doc = await response.json();
  if (doc.error) throw new BusError(doc.error.code, doc.error.message, { data: doc.error.data, status: response.status });
  return doc.result;
}

/** A call whose target streams progress: onProgress(method, params) for each, then the result. */
export async function callStreamed(target, method, params, { signal, deadlineMs, onProgress } = {}) {
  const response = await send(callPath(target, method), {
    body: params ?? {},
    accept: "text/event-stream",
    signal,
    deadlineMs,
  });
  if (!response.ok || !(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
    throw await errorOf(response);
  }
  let outcome = null;
  await readEvents(response, (event, data) => {
    if (event === "progress" && onProgress) onProgress(data.method, data.params);
    else if (event === "result") outcome = { result: data.result };
    else if (event === "error") outcome = { error: data.error };
  });
  if (outcome === null) throw new BusError(-32009, "the stream ended before its answer");
  if (outcome.error) {
    const e = outcome.error;
    throw new BusError(e.code, e.message, { data: e.data });
  }
  return outcome.result;
}

/**
 * Follow /v1/events for topics and rooms until `signal` aborts; reconnects after a drop.
 * onEvent(method, params) for each notification; onState("live" | "retrying", error?).
 */
export async function follow({ topics = [], rooms = [] }, { signal, onEvent, onState = () => {}, retryMs = 2000 }) {
  const query = new URLSearchParams();
  for (const t of topics) query.append("topic", t);
  for (const r of rooms) query.append("room", r);
  while (!signal.aborted) {
    let error = null;
    try {
      const response = await send(`/v1/events?${query}`, { method: "GET", accept: "text/event-stream", signal });
      if (!response.ok) throw await errorOf(response);
      await readEvents(response, (event, data) => {
        if (event === "ready") onState("live");
        else if (event === "error") error = new BusError(data.error.code, data.error.message);
        else onEvent(event, data.params ?? data);
      });
    } catch (exc) {
      if (signal.aborted || exc.name === "AbortError") return;
      error = exc;
      if (exc.code === UNAUTHENTICATED || (exc.status && exc.status < 500 && exc.status !== 429)) {
        onState("failed", exc); // a refusal does not get better by asking again
        return;
      }
    }
    onState("retrying", error);
    await pause(retryMs, signal);
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** Redeem a one-time pairing code (from `personad console`) for a token. */
export async function pair(code) {
  const response = await send("/v1/pair", { body: { code }, auth: false });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** Whether the bus accepts `token` (a FORBIDDEN bus.ping still proves it valid); throws BusError if not. */
export async function checkToken(token) {
  const response = await send(callPath("bus", "bus.ping"), { body: {}, token });
  if (response.ok) return;
  const error = await errorOf(response);
  if (error.code !== FORBIDDEN) throw error;
}

export async function health({ signal } = {}) {
  const response = await send("/healthz", { method: "GET", signal, auth: false });
  return response.json(); // 503 while shutting down still carries the health document
}

/** /metrics as text; needs the token's `metrics` grant (a refusal is thrown as HTTP 403). */
export async function metrics({ signal } = {}) {
  // Its 401 wording ("needs a bearer token") would mislead: the /v1 calls report a refused token.
  const response = await send("/metrics", { method: "GET", accept: "text/plain", signal, reportRefusal: false });
  if (!response.ok) throw await errorOf(response);
  return response.text();
}
