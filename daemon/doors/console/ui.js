// DOM helpers. Everything the bus says is put in the page as text (textContent),
// never parsed as HTML, and nothing is styled inline (the CSP allows neither).
import { BusError } from "./errors.js";

const SVG_NS = "http://www.w3.org/2000/svg";

/** h("p", {class: "x", onclick: f}, "text", child): an element; null/false children are skipped. */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** The same for SVG elements. */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let ids = 0;
/** A page-unique id for label/aria wiring. */
export function uid(prefix = "c") {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled form field: the label names the control (for = id). */
export function field(labelText, control, hint, { grow = false } = {}) {
  const id = control.id || uid("f");
  control.id = id;
  const hintEl = hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: grow ? "field grow" : "field" }, h("label", { for: id }, labelText), control, hintEl);
}

/** The error as the bus stated it: its code's name, the number and the message (data folded away). */
export function errorBox(error, { title } = {}) {
  const box = h("div", { class: "error", role: "alert" });
  if (error instanceof BusError) {
    const heading = title ?? (error.offline ? "Offline" : null);
    box.append(
      heading ? h("p", { class: "error-title" }, heading) : "",
      h("p", {}, h("strong", { class: "error-code" }, error.label), ": ", h("span", { class: "error-message" }, error.message)),
    );
    if (error.data !== null && error.data !== undefined) {
      box.append(h("details", {}, h("summary", {}, "data"), h("pre", {}, JSON.stringify(error.data, null, 2))));
    }
  } else {
    box.append(h("p", {}, h("strong", { class: "error-code" }, "console error"), ": ", String(error?.message ?? error)));
  }
  return box;
}

/** A loading placeholder that a screen reader announces politely. */
export function loading(what = "Loading") {
  return h("p", { class: "loading", role: "status" }, `${what}…`);
}

export function badge(text, tone = "neutral", label) {
  return h("span", { class: `badge badge-${tone}`, "aria-label": label ?? null }, text);
}

/** A table with a caption; rows are arrays of cells (text or nodes). */
export function table(caption, headers, rows, { empty = "Nothing yet.", captionHidden = false } = {}) {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", { class: captionHidden ? "visually-hidden" : null }, caption),
      h("thead", {}, h("tr", {}, headers.map((label) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell) => h("td", {}, cell ?? "—"))))),
    ),
  );
}

/** Definition list of figures: [[term, value], ...]. */
export function figures(pairs, label) {
  return h(
    "dl",
    { class: "figures", "aria-label": label ?? null },
    pairs.map(([term, value]) => h("div", { class: "figure" }, h("dt", {}, term), h("dd", {}, value ?? "—"))),
  );
}

/** A section with a heading (h2), which names it for assistive technology. */
export function section(title, ...children) {
  const id = uid("s");
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

// -- formatting -------------------------------------------------------------------

const numberFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** "1 goal", "3 goals". */
export function plural(n, one, many = `${one}s`) {
  return `${numberFmt.format(n)} ${n === 1 ? one : many}`;
}

export function num(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (digits !== undefined) return Number(value).toFixed(digits);
  return numberFmt.format(value);
}

export function pct(value) {
  if (value === null || value === undefined) return "—";
  return `${(value * 100).toFixed(value >= 0.995 || value === 0 ? 0 : 1)} %`;
}

/** A Unix time (seconds) or an RFC 3339 string as a local date and time. */
export function when(value) {
  if (value === null || value === undefined || value === 0) return "—";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : dateFmt.format(date);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A "status" line (role=status): what a form did, announced without stealing focus. */
export function statusLine() {
  return h("p", { class: "status-line", role: "status" });
}

/**
 * ARIA tabs: a tablist of buttons with a roving tabindex (arrows, Home, End), each
 * with a panel rendered on first show and kept afterwards (a chat keeps streaming).
 * tabs: [{key, label, render(panel)}]; onSelect(key) after a change.
 */
export function tabs(label, list, selected, onSelect) {
  const bar = h("div", { class: "tabs", role: "tablist", "aria-label": label });
  const panels = h("div", { class: "tab-panels" });
  const entries = list.map((tab) => {
    const tabId = uid("tab");
    const panelId = uid("panel");
    const button = h("button", { type: "button", role: "tab", id: tabId, "aria-controls": panelId, class: "tab" }, tab.label);
    const panel = h("div", { role: "tabpanel", id: panelId, "aria-labelledby": tabId, tabindex: "0", class: "tab-panel", hidden: true });
    bar.append(button);
    panels.append(panel);
    return { ...tab, button, panel, rendered: false };
  });
  function select(key, { focus = false, notify = true } = {}) {
    for (const entry of entries) {
      const on = entry.key === key;
      entry.button.setAttribute("aria-selected", String(on));
      entry.button.tabIndex = on ? 0 : -1;
      entry.panel.hidden = !on;
      if (on && !entry.rendered) {
        entry.rendered = true;
        entry.render(entry.panel);
      }
      if (on && focus) entry.button.focus();
    }
    if (notify) onSelect?.(key);
  }
  entries.forEach((entry, index) => {
    entry.button.addEventListener("click", () => select(entry.key));
    entry.button.addEventListener("keydown", (event) => {
      const last = entries.length - 1;
      const to = { ArrowRight: index === last ? 0 : index + 1, ArrowLeft: index === 0 ? last : index - 1, Home: 0, End: last }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      select(entries[to].key, { focus: true });
    });
  });
  select(entries.some((e) => e.key === selected) ? selected : entries[0].key, { notify: false });
  return h("div", { class: "tabbed" }, bar, panels);
}
