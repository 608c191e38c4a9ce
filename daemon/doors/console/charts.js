// Small SVG charts drawn from the bus's figures: no library, no inline style
// (colours come from classes in style.css, so they follow light and dark).
// Each chart is an image with a text alternative; pages put the numbers in a table too.
import { s } from "./ui.js";

const W = 480;

function frame(label, height) {
  return s("svg", { viewBox: `0 0 ${W} ${height}`, class: "chart", role: "img", "aria-label": label, preserveAspectRatio: "xMinYMin meet" }, s("title", {}, label));
}

function yAxis(svg, { top, bottom, left, yMin, yMax, format, ticks = 4 }) {
  for (let i = 0; i <= ticks; i += 1) {
    const value = yMin + ((yMax - yMin) * i) / ticks;
    const y = bottom - ((bottom - top) * i) / ticks;
    svg.append(
      s("line", { x1: left, x2: W - 8, y1: y, y2: y, class: "grid" }),
      s("text", { x: left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, format(value)),
    );
  }
}

/**
 * A line over points [{label, value|null}] (a null is a gap), optional bars behind
 * it ([{value}], scaled to their own maximum: e.g. records per day).
 */
export function lineChart({ label, points, yMin = 0, yMax, format = (v) => String(Math.round(v)), bars = null, height = 180 }) {
  const svg = frame(label, height);
  const left = 40;
  const top = 12;
  const bottom = height - 26;
  const values = points.map((p) => p.value).filter((v) => v !== null && v !== undefined);
  const max = yMax ?? Math.max(1, ...values);
  yAxis(svg, { top, bottom, left, yMin, yMax: max, format });
  const n = Math.max(points.length, 1);
  const step = (W - 8 - left) / n;
  const x = (i) => left + step * (i + 0.5);
  const y = (v) => bottom - ((bottom - top) * (v - yMin)) / (max - yMin || 1);
  if (bars) {
    const barMax = Math.max(1, ...bars.map((b) => b.value ?? 0));
    bars.forEach((b, i) => {
      const hgt = ((bottom - top) * (b.value ?? 0)) / barMax;
      if (hgt > 0) svg.append(s("rect", { x: x(i) - step * 0.35, y: bottom - hgt, width: step * 0.7, height: hgt, class: "bar-soft" }));
    });
  }
  let path = "";
  let pen = false;
  points.forEach((p, i) => {
    if (p.value === null || p.value === undefined) {
      pen = false;
      return;
    }
    path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)}`;
    pen = true;
    svg.append(s("circle", { cx: x(i), cy: y(p.value), r: 3, class: "dot" }, s("title", {}, `${p.label}: ${format(p.value)}`)));
  });
  if (path) svg.insertBefore(s("path", { d: path, class: "line" }), svg.querySelector("circle"));
  // First and last labels on the x axis: enough to read the window.
  if (points.length > 0) {
    svg.append(s("text", { x: left, y: height - 6, class: "tick" }, points[0].label));
    if (points.length > 1) svg.append(s("text", { x: W - 8, y: height - 6, class: "tick", "text-anchor": "end" }, points.at(-1).label));
  }
  if (values.length === 0) {
    svg.append(s("text", { x: W / 2, y: (top + bottom) / 2, class: "tick", "text-anchor": "middle" }, "no data in this window"));
  }
  return svg;
}

/** Horizontal bars: rows [{label, value, note}] against `max` (default: the largest). */
export function barList({ label, rows, max, format = (v) => String(v) }) {
  const rowH = 26;
  const height = Math.max(rowH, rows.length * rowH) + 4;
  const svg = frame(label, height);
  const left = 150;
  const right = 70;
  const top = Math.max(max ?? 0, ...rows.map((r) => r.value ?? 0), 1e-9);
  rows.forEach((row, i) => {
    const yy = i * rowH + 4;
    const width = ((W - left - right) * Math.max(0, row.value ?? 0)) / top;
    svg.append(
      s("text", { x: left - 8, y: yy + 15, class: "tick label", "text-anchor": "end" }, truncate(row.label, 22)),
      s("rect", { x: left, y: yy + 3, width: W - left - right, height: rowH - 10, class: "track" }),
      s("rect", { x: left, y: yy + 3, width: Math.max(width, 0), height: rowH - 10, class: row.tone ? `bar bar-${row.tone}` : "bar" }),
      s("text", { x: W - right + 6, y: yy + 15, class: "tick" }, row.note ?? format(row.value)),
    );
  });
  return svg;
}

/** A small line of recent values (the bus page's request rate). */
export function sparkline({ label, values: given, height = 48 }) {
  const svg = frame(label, height);
  const values = given.length === 1 ? [given[0], given[0]] : given; // one sample: a level line
  svg.classList.add("spark");
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? (W - 4) / (values.length - 1) : 0;
  const y = (v) => height - 4 - ((height - 8) * v) / max;
  const line = values.map((v, i) => `${i === 0 ? "M" : "L"}${(2 + step * i).toFixed(1)},${y(v).toFixed(1)}`).join("");
  if (values.length > 1) {
    svg.append(
      s("path", { d: `${line}L${2 + step * (values.length - 1)},${height - 2}L2,${height - 2}Z`, class: "area" }),
      s("path", { d: line, class: "line" }),
    );
  }
  return svg;
}

function truncate(text, n) {
  const str = String(text);
  return str.length > n ? `${str.slice(0, n - 1)}…` : str;
}
