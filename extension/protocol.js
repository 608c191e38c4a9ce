// personad's wire protocol, the part this extension speaks.
//
// A port of protocol/ (Python): codes from protocol/errors.py and
// protocol/commands/browser.py, limits and params checks from
// protocol/commands/browser.py. tests/daemon/browser/test_protocol_models.py
// checks that the codes here equal the Python ones.

export const PROTOCOL_VERSION = 1;
// JSON in text frames; bytes travel as {"$bytes": "<base64>"} (protocol/codec.py).
export const SUBPROTOCOL = "personad.v1.json";
export const AGENT = "personad-extension/0.1.0";

// JSON-RPC 2.0 §5.1 and the bus's own codes (protocol/errors.py, ErrorCode).
export const ErrorCode = Object.freeze({
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  TARGET_OFFLINE: -32001,
  TIMEOUT: -32002,
  FORBIDDEN: -32003,
  OVERLOADED: -32004,
  CANCELLED: -32005,
  UNAUTHENTICATED: -32006,
  UNSUPPORTED_VERSION: -32007,
});

// Browser providers' codes (protocol/commands/browser.py, BrowserErrorCode).
export const BrowserErrorCode = Object.freeze({
  SCRIPT_ERROR: 1001,
  SCRIPT_TIMEOUT: 1002,
  NOT_SERIALIZABLE: 1003,
  NAVIGATION_FAILED: 1004,
  LOAD_TIMEOUT: 1005,
  ELEMENT_NOT_FOUND: 1006,
  NO_PAGE: 1007,
  BROWSER_CRASHED: 1008,
  BROWSER_UNAVAILABLE: 1009,
  TOO_LARGE: 1010,
});

// Limits (protocol/commands/browser.py).
export const MAX_SCRIPT_BYTES = 64 * 1024;
export const MAX_URL_CHARS = 8192;
export const MAX_SELECTOR_CHARS = 1024;
export const MIN_VIEWPORT = 16;
export const MAX_VIEWPORT = 4096;
export const MAX_SCRIPT_TIMEOUT_MS = 120_000;
export const MAX_LOAD_TIMEOUT_MS = 120_000;
export const DEFAULT_SCRIPT_TIMEOUT_MS = 5_000;
export const DEFAULT_LOAD_TIMEOUT_MS = 15_000;
// Below the bus's 16 MiB message limit, leaving room for base64 and the envelope.
export const MAX_RESULT_BYTES = 11 * 1024 * 1024;

/** An error answer: thrown by handlers, sent as {code, message, data}. */
export class RpcError extends Error {
  constructor(code, message, data = undefined) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

function invalid(message) {
  return new RpcError(ErrorCode.INVALID_PARAMS, `invalid params: ${message}`);
}

function checkKeys(params, allowed) {
  if (params === null || typeof params !== "object" || Array.isArray(params)) {
    throw invalid("params must be an object (named members)");
  }
  for (const key of Object.keys(params)) {
    // StrictModel: an unknown member is an error, never silently ignored.
    if (!allowed.includes(key)) throw invalid(`${key}: Extra inputs are not permitted`);
  }
}

function checkInt(params, key, min, max, fallback) {
  const value = params[key] ?? fallback;
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${key}: must be an integer from ${min} to ${max}`);
  }
  return value;
}

function checkBool(params, key, fallback) {
  const value = params[key] ?? fallback;
  if (typeof value !== "boolean") throw invalid(`${key}: must be a boolean`);
  return value;
}

// Only the web and a blank page: file:// would read the disk, chrome:// the
// settings, javascript: run code under a screenshot grant.
const URL_RE = /^https?:\/\/[^\s/?#]+[^\s]*$/i;

function checkUrl(params, key, required = false) {
  const value = params[key];
  if (value === undefined || value === null) {
    if (required) throw invalid(`${key}: Field required`);
    return null;
  }
  if (typeof value !== "string" || value.length > MAX_URL_CHARS || !(value === "about:blank" || URL_RE.test(value))) {
    throw invalid(`${key}: must be an http:// or https:// URL, or about:blank`);
  }
  return value;
}

function checkViewport(params) {
  const viewport = params.viewport;
  if (viewport === undefined || viewport === null) return null;
  checkKeys(viewport, ["width", "height"]);
  return {
    width: checkInt(viewport, "width", MIN_VIEWPORT, MAX_VIEWPORT, NaN),
    height: checkInt(viewport, "height", MIN_VIEWPORT, MAX_VIEWPORT, NaN),
  };
}

/** browser_js params, checked as protocol.commands.browser.BrowserJsParams does. */
export function checkBrowserJs(params) {
  checkKeys(params, ["script", "url", "await_promise", "timeout_ms", "load_timeout_ms"]);
  const script = params.script;
  if (typeof script !== "string" || script.length === 0) throw invalid("script: a non-empty string is required");
  if (new TextEncoder().encode(script).length > MAX_SCRIPT_BYTES) {
    throw invalid(`script: over ${MAX_SCRIPT_BYTES} bytes in UTF-8`);
  }
  return {
    script,
    url: checkUrl(params, "url"),
    await_promise: checkBool(params, "await_promise", true),
    timeout_ms: checkInt(params, "timeout_ms", 1, MAX_SCRIPT_TIMEOUT_MS, DEFAULT_SCRIPT_TIMEOUT_MS),
    load_timeout_ms: checkInt(params, "load_timeout_ms", 100, MAX_LOAD_TIMEOUT_MS, DEFAULT_LOAD_TIMEOUT_MS),
  };
}

/** screenshot params, checked as protocol.commands.browser.ScreenshotParams does. */
export function checkScreenshot(params) {
  checkKeys(params, [
    "url", "viewport", "full_page", "selector", "format", "quality", "load_timeout_ms", "filename", "return_bytes",
  ]);
  const format = params.format ?? "png";
  if (format !== "png" && format !== "jpeg") throw invalid("format: must be 'png' or 'jpeg'");
  const quality = checkInt(params, "quality", 0, 100, undefined);
  if (quality !== undefined && format !== "jpeg") throw invalid("quality applies to format 'jpeg' only");
  const selector = params.selector ?? null;
  if (selector !== null && (typeof selector !== "string" || !selector || selector.length > MAX_SELECTOR_CHARS)) {
    throw invalid(`selector: a string of 1 to ${MAX_SELECTOR_CHARS} characters`);
  }
  const fullPage = checkBool(params, "full_page", false);
  if (fullPage && selector !== null) throw invalid("give full_page or selector, not both");
  checkBool(params, "return_bytes", false);
  return {
    url: checkUrl(params, "url"),
    viewport: checkViewport(params),
    full_page: fullPage,
    selector,
    format,
    quality,
    load_timeout_ms: checkInt(params, "load_timeout_ms", 100, MAX_LOAD_TIMEOUT_MS, DEFAULT_LOAD_TIMEOUT_MS),
  };
}

/** {"$bytes": base64} for a Uint8Array: how bytes travel in JSON frames. */
export function bytesValue(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return { $bytes: btoa(binary) };
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
