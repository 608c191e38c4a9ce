// screenshot and browser_js, served in the user's own browser.
//
// The same commands, params and results as the headless worker
// (protocol/commands/browser.py), with two differences that come from living
// in a real browser:
//
// * there is no browser context per requester: everything runs in the
//   extension's work tab, in a window of its own (so the user's tabs are left
//   alone), with the user's profile. Pairing is what grants that trust.
// * browser_js goes through chrome.debugger + Runtime.evaluate (MV3 forbids
//   evaluating code strings any other way); screenshot through
//   chrome.tabs.captureVisibleTab, or, for a viewport, an element or the full
//   page, through chrome.debugger + Page.captureScreenshot as the worker does.

import {
  BrowserErrorCode, ErrorCode, MAX_RESULT_BYTES, RpcError, base64ToBytes, bytesValue, checkBrowserJs,
  checkScreenshot,
} from "./protocol.js";

const WORK_TAB_KEY = "workTab";
const WORK_WINDOW = { width: 1280, height: 800 };
const MAX_FULL_PAGE_HEIGHT = 16_384;
const CDP_VERSION = "1.3";

// -- the work tab ------------------------------------------------------------

async function findWorkTab() {
  const { [WORK_TAB_KEY]: tabId } = await chrome.storage.session.get(WORK_TAB_KEY);
  if (tabId === undefined) return null;
  try {
    return await chrome.tabs.get(tabId);
  } catch {
    return null; // the user closed it
  }
}

async function workTab() {
  const existing = await findWorkTab();
  if (existing) return existing;
  // A window of its own: its one tab is always the visible tab of that window,
  // which is what captureVisibleTab takes.
  const window = await chrome.windows.create({ url: "about:blank", focused: false, ...WORK_WINDOW });
  let tab = window.tabs[0];
  // Let its first about:blank finish, so that none of its events is taken
  // for those of the page we load next.
  for (let i = 0; i < 50 && tab.status !== "complete"; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    tab = await chrome.tabs.get(tab.id);
  }
  await chrome.storage.session.set({ [WORK_TAB_KEY]: tab.id });
  return tab;
}

/**
 * Load url in the tab and wait for that document to complete (or fail).
 *
 * webNavigation: onCommitted names the new document (documentId, Chrome 106+);
 * only that document's onCompleted counts, so a late event of the page we
 * leave cannot end the wait early. Errors come before any commit.
 */
function load(tabId, url, timeoutMs) {
  return new Promise((resolve, reject) => {
    let documentId = null;
    const cleanup = () => {
      clearTimeout(timer);
      chrome.webNavigation.onCommitted.removeListener(onCommitted);
      chrome.webNavigation.onCompleted.removeListener(onCompleted);
      chrome.webNavigation.onErrorOccurred.removeListener(onError);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new RpcError(BrowserErrorCode.LOAD_TIMEOUT, `${url} did not finish loading within ${timeoutMs} ms`));
    }, timeoutMs);
    const ours = (details) => details.tabId === tabId && details.frameId === 0;
    const onCommitted = (details) => {
      if (ours(details) && (details.url !== "about:blank" || url === "about:blank")) documentId = details.documentId;
    };
    const onCompleted = (details) => {
      if (ours(details) && documentId !== null && details.documentId === documentId) {
        cleanup();
        resolve();
      }
    };
    const onError = (details) => {
      // ERR_ABORTED is the page we navigate away from, not ours.
      if (ours(details) && details.error !== "net::ERR_ABORTED") {
        cleanup();
        reject(new RpcError(BrowserErrorCode.NAVIGATION_FAILED, `could not load ${url}: ${details.error}`,
          { url, error: details.error }));
      }
    };
    chrome.webNavigation.onCommitted.addListener(onCommitted);
    chrome.webNavigation.onCompleted.addListener(onCompleted);
    chrome.webNavigation.onErrorOccurred.addListener(onError);
    chrome.tabs.update(tabId, { url }).catch((error) => {
      cleanup();
      reject(new RpcError(BrowserErrorCode.NAVIGATION_FAILED, `could not load ${url}: ${error.message}`));
    });
  });
}

async function withDebugger(tabId, work) {
  const target = { tabId };
  try {
    await chrome.debugger.attach(target, CDP_VERSION);
  } catch (error) {
    throw new RpcError(ErrorCode.INTERNAL_ERROR, `cannot debug the work tab: ${error.message}`);
  }
  try {
    return await work((method, params = {}) => chrome.debugger.sendCommand(target, method, params));
  } finally {
    await chrome.debugger.detach(target).catch(() => {});
  }
}

// -- browser_js ----------------------------------------------------------------

function exceptionText(result) {
  const details = result.exceptionDetails ?? {};
  const exception = details.exception ?? {};
  return String(exception.description ?? exception.value ?? details.text ?? "exception");
}

/** A Runtime.evaluate result as a JSON value (as daemon/browser/worker.py's _js_value). */
function jsValue(result, url) {
  const details = result.exceptionDetails;
  if (details) {
    const full = exceptionText(result);
    throw new RpcError(BrowserErrorCode.SCRIPT_ERROR, `the page's script threw: ${full.split("\n")[0].slice(0, 500)}`, {
      exception: full.slice(0, 4000),
      text: details.text,
      line_number: details.lineNumber,
      column_number: details.columnNumber,
      url,
    });
  }
  const remote = result.result ?? {};
  if ("value" in remote) return remote.value;
  if (remote.type === "undefined") return null;
  if (remote.unserializableValue === "-0") return -0;
  const what = remote.unserializableValue ?? remote.type ?? "value";
  throw new RpcError(BrowserErrorCode.NOT_SERIALIZABLE,
    `the script's value (${what}) cannot be returned as JSON; convert it first, e.g. String(value)`);
}

export async function browserJs(params) {
  const p = checkBrowserJs(params);
  let tab = await workTab();
  if (p.url) await load(tab.id, p.url, p.load_timeout_ms);
  const result = await withDebugger(tab.id, async (send) => {
    const started = performance.now();
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new RpcError(BrowserErrorCode.SCRIPT_TIMEOUT,
        `the script did not finish within ${p.timeout_ms} ms`)), p.timeout_ms + 100);
    });
    try {
      return await Promise.race([
        send("Runtime.evaluate", {
          expression: p.script,
          returnByValue: true,
          awaitPromise: p.await_promise,
          // V8 terminates synchronous code itself; the race covers promises.
          timeout: p.timeout_ms,
          userGesture: true,
        }),
        timeout,
      ]);
    } catch (error) {
      if (error instanceof RpcError) throw error;
      const message = String(error.message);
      const timedOut = performance.now() - started >= p.timeout_ms;
      if (message.includes("terminated") || (timedOut && message.includes("Internal error"))) {
        throw new RpcError(BrowserErrorCode.SCRIPT_TIMEOUT, `the script did not finish within ${p.timeout_ms} ms`);
      }
      if (message.includes("by value") || message.includes("reference chain")) {
        throw new RpcError(BrowserErrorCode.NOT_SERIALIZABLE,
          `the script's value cannot be returned as JSON (${message}); return plain data`);
      }
      throw new RpcError(ErrorCode.INTERNAL_ERROR, `Chromium refused Runtime.evaluate: ${message}`);
    } finally {
      clearTimeout(timer);
    }
  });
  tab = await chrome.tabs.get(tab.id);
  const value = jsValue(result, tab.url);
  if (JSON.stringify(value ?? null).length > MAX_RESULT_BYTES) {
    throw new RpcError(BrowserErrorCode.TOO_LARGE, "the script's value is too large for one message");
  }
  return { value, url: tab.url };
}

// -- screenshot ----------------------------------------------------------------

function imageSize(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length >= 24 && view.getUint32(0) === 0x89504e47 && view.getUint32(12) === 0x49484452) {
    return { format: "png", width: view.getUint32(16), height: view.getUint32(20) }; // IHDR
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    for (let pos = 2; pos + 9 <= bytes.length;) {
      if (bytes[pos] !== 0xff) break;
      const marker = bytes[pos + 1];
      if (marker === 0xff) { pos += 1; continue; }
      if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { pos += 2; continue; }
      // SOFn (ITU T.81 Table B.1), not DHT/JPG/DAC.
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { format: "jpeg", height: view.getUint16(pos + 5), width: view.getUint16(pos + 7) };
      }
      pos += 2 + view.getUint16(pos + 2);
    }
  }
  throw new RpcError(ErrorCode.INTERNAL_ERROR, "the browser returned an unreadable image");
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function elementClip(send, selector, url) {
  // Document coordinates (viewport rect + scroll), as the worker computes them.
  const expression = `(() => { const el = document.querySelector(${JSON.stringify(selector)});
    if (el === null) return null; const r = el.getBoundingClientRect();
    return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height}; })()`;
  const result = await send("Runtime.evaluate", { expression, returnByValue: true });
  if (result.exceptionDetails) {
    throw new RpcError(ErrorCode.INVALID_PARAMS, `invalid selector ${JSON.stringify(selector)}: ${exceptionText(result)}`);
  }
  const box = result.result?.value;
  if (!box) throw new RpcError(BrowserErrorCode.ELEMENT_NOT_FOUND, `no element matches ${JSON.stringify(selector)} on ${url}`);
  if (box.width <= 0 || box.height <= 0) {
    throw new RpcError(BrowserErrorCode.ELEMENT_NOT_FOUND, `the element ${JSON.stringify(selector)} has no size (hidden?)`);
  }
  return { ...box, scale: 1 };
}

async function captureWithDebugger(tab, p) {
  return withDebugger(tab.id, async (send) => {
    if (p.viewport) {
      await send("Emulation.setDeviceMetricsOverride",
        { width: p.viewport.width, height: p.viewport.height, deviceScaleFactor: 1, mobile: false });
    }
    try {
      const capture = { format: p.format, fromSurface: true };
      if (p.quality !== undefined) capture.quality = p.quality;
      if (p.selector) {
        capture.clip = await elementClip(send, p.selector, tab.url);
        capture.captureBeyondViewport = true;
      } else if (p.full_page) {
        const metrics = await send("Page.getLayoutMetrics");
        const size = metrics.cssContentSize ?? metrics.contentSize;
        capture.clip = {
          x: 0, y: 0, width: Math.max(1, Math.ceil(size.width)),
          height: Math.max(1, Math.min(Math.ceil(size.height), MAX_FULL_PAGE_HEIGHT)), scale: 1,
        };
        capture.captureBeyondViewport = true;
      }
      return (await send("Page.captureScreenshot", capture)).data;
    } finally {
      if (p.viewport) await send("Emulation.clearDeviceMetricsOverride").catch(() => {});
    }
  });
}

export async function screenshot(params) {
  const p = checkScreenshot(params);
  let tab = p.url ? await workTab() : await findWorkTab();
  if (!tab) throw new RpcError(BrowserErrorCode.NO_PAGE, "no page is open in the extension's work tab: give a url");
  if (p.url) await load(tab.id, p.url, p.load_timeout_ms);
  tab = await chrome.tabs.get(tab.id);
  let base64;
  if (p.viewport || p.selector || p.full_page) {
    base64 = await captureWithDebugger(tab, p);
  } else {
    const options = { format: p.format };
    if (p.quality !== undefined) options.quality = p.quality;
    const dataUrl = await chrome.tabs.captureVisibleTab(tab.windowId, options);
    base64 = dataUrl.slice(dataUrl.indexOf(",") + 1);
  }
  if (base64.length * 0.75 > MAX_RESULT_BYTES) {
    throw new RpcError(BrowserErrorCode.TOO_LARGE, `the ${p.format} is over ${MAX_RESULT_BYTES} bytes: use jpeg or a selector`);
  }
  const bytes = base64ToBytes(base64);
  const { format, width, height } = imageSize(bytes);
  return { data: bytesValue(bytes), sha256: await sha256Hex(bytes), width, height, format, url: tab.url };
}
