// The bus's error codes by name (protocol/errors.py ErrorCode, and the services'
// application codes in protocol/commands/), so an error reads as the bus states it:
// "FORBIDDEN (-32003): token 'x' may not call ...". tests/e2e/test_console.py checks
// this table against the Python enums, so a new code cannot be forgotten here.
export const ERROR_CODES = Object.freeze({
  "-32700": "PARSE_ERROR",
  "-32600": "INVALID_REQUEST",
  "-32601": "METHOD_NOT_FOUND",
  "-32602": "INVALID_PARAMS",
  "-32603": "INTERNAL_ERROR",
  "-32001": "TARGET_OFFLINE",
  "-32002": "TIMEOUT",
  "-32003": "FORBIDDEN",
  "-32004": "OVERLOADED",
  "-32005": "CANCELLED",
  "-32006": "UNAUTHENTICATED",
  "-32007": "UNSUPPORTED_VERSION",
  "-32008": "SHUTTING_DOWN",
  "-32009": "CONNECTION_LOST",
  "1001": "SCRIPT_ERROR",
  "1002": "SCRIPT_TIMEOUT",
  "1003": "NOT_SERIALIZABLE",
  "1004": "NAVIGATION_FAILED",
  "1005": "LOAD_TIMEOUT",
  "1006": "ELEMENT_NOT_FOUND",
  "1007": "NO_PAGE",
  "1008": "BROWSER_CRASHED",
  "1009": "BROWSER_UNAVAILABLE",
  "1010": "TOO_LARGE",
  "4101": "MODEL_UNAVAILABLE",
  "4102": "ADAPTER_NOT_FOUND",
  "4103": "ADAPTER_INCOMPATIBLE",
  "4104": "ADAPTER_CORRUPT",
  "4105": "UNSUPPORTED",
  "4301": "PERSONA_RUNNING",
});

export const TARGET_OFFLINE = -32001;
export const FORBIDDEN = -32003;
export const UNAUTHENTICATED = -32006;

export function codeName(code) {
  return ERROR_CODES[String(code)] ?? "ERROR";
}

/** An error answered by the bus (or by the HTTP door before the bus was reached). */
export class BusError extends Error {
  constructor(code, message, { data = null, status = null } = {}) {
    super(message);
    this.name = "BusError";
    this.code = code;
    this.data = data;
    this.status = status;
  }

  /** "FORBIDDEN (-32003)", or "HTTP 403" for an answer that carried no bus error. */
  get label() {
    if (this.code === null || this.code === undefined) {
      return this.status ? `HTTP ${this.status}` : "NETWORK";
    }
    return `${codeName(this.code)} (${this.code})`;
  }

  toString() {
    return `${this.label}: ${this.message}`;
  }

  get offline() {
    return this.code === TARGET_OFFLINE;
  }
}
