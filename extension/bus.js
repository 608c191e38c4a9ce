// One connection to the personad bus, kept up: hello, heartbeat, reconnect.
//
// The handshake follows docs/protocol.md: a WebSocket with the subprotocol
// personad.v1.json, then a `hello` request (id 0) carrying the pairing token
// in its params, since a browser cannot set an Authorization header. The bus
// checks our Origin (chrome-extension://<pinned id>) against its allow list.
//
// Lifetime (MV3, Chrome 116+): WebSocket traffic keeps the service worker
// alive, so a bus.ping every 20 s both proves the bus is there and keeps us
// running. On close we reconnect with exponential backoff and jitter; a
// refused token stops the retries until the configuration changes.

import { AGENT, ErrorCode, PROTOCOL_VERSION, RpcError, SUBPROTOCOL } from "./protocol.js";

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// Hello errors that retrying cannot fix.
const FATAL = new Set([
  ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN, ErrorCode.INVALID_PARAMS, ErrorCode.UNSUPPORTED_VERSION,
]);

export class BusConnection {
  /**
   * @param {{url: string, token: string, name?: string, topics?: string[], heartbeat_s?: number}} config
   * @param {{onRequest: Function, onEvent: Function, onState: Function, onSubscribed?: Function}} handlers
   */
  constructor(config, handlers) {
    this.config = config;
    this.handlers = handlers;
    this.heartbeatMs = Math.max(1, config.heartbeat_s ?? 20) * 1000;
    this.state = "idle";
    this.clientId = null;
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.fatal = null;
    this.nextId = 1;
    this.pending = new Map();
    this.serving = new Set();
    this.cancelled = new Set();
    this.heartbeatTimer = null;
    this.reconnectTimer = null;
    this.stats = { connects: 0, heartbeats: 0, served: 0 };
  }

  start() {
    this.stopped = false;
    this.fatal = null;
    this.#open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeatTimer);
    if (this.ws) this.ws.close(1000, "stopped");
  }

  #setState(state, detail = "") {
    this.state = state;
    this.handlers.onState(state, detail);
  }

  #open() {
    let ws;
    try {
      ws = new WebSocket(this.config.url, [SUBPROTOCOL]);
    } catch (error) {
      this.#setState("refused", `bad bus URL: ${error.message}`);
      return;
    }
    this.ws = ws;
    this.#setState("connecting");
    ws.onopen = () => {
      const params = {
        protocol: PROTOCOL_VERSION,
        // No capabilities: a person's own browser is never a cap:browser
        // provider (the bus would refuse the claim); it is reached as
        // extension:<name>, by callers granted that target.
        kind: "extension",
        token: this.config.token,
        agent: AGENT,
      };
      if (this.config.name) params.name = this.config.name;
      ws.send(JSON.stringify({ jsonrpc: "2.0", id: 0, method: "hello", params }));
    };
    ws.onmessage = (event) => this.#onFrame(ws, event.data);
    ws.onerror = () => {}; // onclose follows with the code
    ws.onclose = (event) => this.#onClose(ws, event);
  }

  #onFrame(ws, text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      ws.close(1000, "not JSON");
      return;
    }
    if (this.state !== "connected") {
      this.#onHelloAnswer(ws, message);
      return;
    }
    if ("method" in message && "id" in message) {
      this.#serve(ws, message);
    } else if ("method" in message) {
      if (message.method === "bus.cancel") {
        if (this.serving.has(message.params?.id)) this.cancelled.add(message.params.id);
      } else if (message.method === "event") {
        this.handlers.onEvent(message.params ?? {});
      }
    } else if ("id" in message) {
      const call = this.pending.get(message.id);
      if (call) {
        this.pending.delete(message.id);
        clearTimeout(call.timer);
        if (message.error) call.reject(new RpcError(message.error.code, message.error.message, message.error.data));
        else call.resolve(message.result);
      }
    }
  }

  #onHelloAnswer(ws, message) {
    if (message.id !== 0) return;
    if (message.error) {
      if (FATAL.has(message.error.code)) {
        this.fatal = message.error.message;
        this.#setState("refused", message.error.message);
      }
      ws.close(1000, "hello refused");
      return;
    }
    this.clientId = message.result.client_id;
    this.attempt = 0;
    this.stats.connects += 1;
    this.#setState("connected", this.clientId);
    this.heartbeatTimer = setInterval(() => this.#heartbeat(ws), this.heartbeatMs);
    const topics = this.config.topics ?? [];
    // Subscriptions belong to a connection: every (re)connect asks again.
    if (topics.length) {
      this.call("bus.subscribe", { topics }).then(
        (result) => this.handlers.onSubscribed?.(result.topics),
        (error) => console.warn("personad: subscribe failed", error),
      );
    }
  }

  async #heartbeat(ws) {
    try {
      await this.call("bus.ping", {}, this.heartbeatMs);
      this.stats.heartbeats += 1;
    } catch {
      if (this.ws === ws) ws.close(1000, "heartbeat lost");
    }
  }

  async #serve(ws, request) {
    let reply;
    this.serving.add(request.id);
    try {
      const result = await this.handlers.onRequest(request.method, request.params ?? {}, request);
      reply = { jsonrpc: "2.0", id: request.id, result };
      this.stats.served += 1;
    } catch (error) {
      const isRpc = error instanceof RpcError;
      if (!isRpc) console.error("personad: handler failed", error);
      const payload = {
        code: isRpc ? error.code : ErrorCode.INTERNAL_ERROR,
        message: isRpc ? error.message : `internal error: ${error?.message ?? error}`,
      };
      if (isRpc && error.data !== undefined) payload.data = error.data;
      reply = { jsonrpc: "2.0", id: request.id, error: payload };
    } finally {
      this.serving.delete(request.id);
    }
    // Cancelled (or timed out at the bus): no answer is expected any more.
    if (this.cancelled.delete(request.id)) return;
    if (this.ws === ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(reply));
  }

  /** Call a method of the bus (or `to` a client); rejects with RpcError. */
  call(method, params = {}, timeoutMs = 30_000, to = undefined) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.state !== "connected") {
      return Promise.reject(new RpcError(-32009, "not connected to the bus"));
    }
    const id = this.nextId++;
    const message = { jsonrpc: "2.0", id, method, params, meta: { deadline_ms: timeoutMs } };
    if (to) message.to = to;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError(ErrorCode.TIMEOUT, `no answer to ${method}`));
      }, timeoutMs + 2000);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify(message));
    });
  }

  #onClose(ws, event) {
    if (this.ws !== ws) return;
    clearInterval(this.heartbeatTimer);
    for (const call of this.pending.values()) {
      clearTimeout(call.timer);
      call.reject(new RpcError(-32009, "connection to the bus lost"));
    }
    this.pending.clear();
    this.ws = null;
    if (this.stopped || this.fatal) {
      if (!this.fatal) this.#setState("stopped");
      return;
    }
    // Exponential backoff with "equal jitter": at least half the step, so
    // extensions do not all come back at once when the bus restarts.
    const step = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = step / 2 + Math.random() * (step / 2);
    this.attempt += 1;
    this.#setState("reconnecting", `closed (${event.code}); retrying in ${Math.round(delay)} ms`);
    this.reconnectTimer = setTimeout(() => this.#open(), delay);
  }
}
