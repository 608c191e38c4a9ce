// How a persona is doing: analytics (persona.analytics, drawn as SVG charts),
// its plugins (persona.plugins) and its Academy history (persona.evolution, and the
// Academy's runs for it from academy.status @ cap:academy).
import { call } from "../api.js";
import { barList, lineChart } from "../charts.js";
import { badge, errorBox, field, figures, fill, h, loading, num, pct, plural, section, table, when } from "../ui.js";

const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

export function analyticsPanel(panel, ctx, target) {
  const windowSelect = h("select", { name: "window" }, [7, 30, 90, 365].map((d) => h("option", { value: d, selected: d === 30 }, `${d} days`)));
  const out = h("div", {}, loading("Loading analytics"));
  async function load() {
    fill(out, loading("Loading analytics"));
    try {
      const a = await call(target, "persona.analytics", { window: Number(windowSelect.value) }, { signal: ctx.signal });
      fill(out, analyticsView(a));
    } catch (exc) {
      if (!ctx.signal.aborted) fill(out, errorBox(exc));
    }
  }
  windowSelect.addEventListener("change", load);
  fill(panel, h("h2", { class: "visually-hidden" }, "Analytics"), h("div", { class: "toolbar" }, field("Window", windowSelect)), out);
  load();
}

function analyticsView(a) {
  const g = a.growth_stats;
  const points = a.performance_trend.map((p) => ({ label: dayFmt.format(new Date(p.start * 1000)), value: p.average_score }));
  const trendTable = table(
    "Performance trend",
    ["From", "Records", "Average score", "Success rate"],
    a.performance_trend.filter((p) => p.records > 0).map((p) => [when(p.start), num(p.records), num(p.average_score, 1), pct(p.success_rate)]),
    { empty: "No records in this window." },
  );
  return h(
    "div",
    { class: "stack" },
    figures(
      [
        ["Tier", badge(a.tier, "good")],
        ["Records", num(a.total_records)],
        ["Sessions", num(a.total_sessions)],
        ["Average score", num(a.average_score, 1)],
        ["Success rate", pct(a.success_rate)],
        ["Growth rate", g.growth_rate === null ? "—" : `${g.growth_rate >= 0 ? "+" : ""}${pct(g.growth_rate)}`],
        ["Usage streak", plural(g.usage_streak, "day")],
        ["Usage time", `${num(g.total_usage_time_h, 1)} h`],
        ["Knowledge coverage", pct(a.knowledge_coverage)],
        ["Plugins", num(a.active_plugins)],
      ],
      `Analytics over ${a.window_days} days`,
    ),
    h(
      "div",
      { class: "grid-2" },
      h(
        "figure",
        { class: "chart-box" },
        lineChart({
          label: `Average score (0–100) and records per period over ${a.window_days} days`,
          points,
          yMax: 100,
          bars: a.performance_trend.map((p) => ({ value: p.records })),
        }),
        h("figcaption", {}, "Average score per period (line) over records per period (bars)"),
        h("details", {}, h("summary", {}, "The numbers"), trendTable),
      ),
      h(
        "figure",
        { class: "chart-box" },
        a.top_topics.length
          ? barList({
              label: "Top topics by mean score",
              rows: a.top_topics.map((t) => ({ label: t.topic, value: t.score, note: `${num(t.score, 0)} · ${t.records}×`, tone: t.knowledge ? null : "light" })),
              max: 100,
            })
          : h("p", { class: "empty" }, "No topics in this window."),
        h("figcaption", {}, "Top topics: mean score, and how many records name each (lighter: no knowledge matches it)"),
      ),
    ),
    section(
      "What to do next",
      a.recommendations.length
        ? h("ul", { class: "advice" }, a.recommendations.map((r) => h("li", {}, r.message)))
        : h("p", { class: "empty" }, "No recommendation: nothing crossed a threshold."),
      a.growth_opportunities.length
        ? h("div", {}, h("h3", {}, "Growth opportunities"), h("ul", { class: "advice" }, a.growth_opportunities.map((o) => h("li", {}, o.message))))
        : null,
    ),
    a.plugin_performance_impact
      ? section(
          "Plugins' impact",
          table(
            "Plugin runs in this window",
            ["Plugin", "Runs", "Failures", "Success rate", "Mean duration"],
            a.plugin_performance_impact.map((p) => [p.plugin_id, num(p.runs), num(p.failures), pct(p.success_rate), p.mean_duration_s === null ? "—" : `${num(p.mean_duration_s, 2)} s`]),
          ),
        )
      : null,
  );
}

export function pluginsPanel(panel, ctx, target) {
  const out = h("div", {}, loading("Loading plugins"));
  fill(panel, h("h2", { class: "visually-hidden" }, "Plugins"), out);
  call(target, "persona.plugins", {}, { signal: ctx.signal }).then(
    ({ plugins }) =>
      fill(
        out,
        table(
          plural(plugins.length, "installed plugin"),
          ["Plugin", "Version", "Risk", "Permissions", "Runs", "Failures", "Mean run", "Last run", "Signer"],
          plugins.map((p) => [
            h("div", {}, h("strong", {}, p.name), h("span", { class: "id" }, ` ${p.id}`), p.description ? h("p", { class: "fine" }, p.description) : null),
            p.version,
            badge(p.risk, { none: "good", low: "good", medium: "warn", high: "bad" }[p.risk]),
            p.permissions.length ? p.permissions.join(", ") : "none",
            num(p.stats.runs),
            num(p.stats.failures),
            p.stats.mean_duration_s === null ? "—" : `${num(p.stats.mean_duration_s, 2)} s`,
            when(p.stats.last_run_at),
            h("code", { title: p.signer }, `${p.signer.slice(0, 12)}…`),
          ]),
          { empty: "No plugin is installed (persona.plugin.add installs a signed one)." },
        ),
      ),
    (exc) => ctx.signal.aborted || fill(out, errorBox(exc)),
  );
}

export function academyPanel(panel, ctx, id) {
  const history = h("div", {}, loading("Loading evolution history"));
  const runs = h("div", {}, loading("Asking the Academy"));
  fill(panel, h("h2", { class: "visually-hidden" }, "Academy"), section("Evolution history", history), section("Academy runs", runs));
  call(`persona:${id}`, "persona.evolution", { limit: 100 }, { signal: ctx.signal }).then(
    ({ entries }) => {
      const chrono = [...entries].reverse();
      fill(
        history,
        chrono.some((e) => e.pass_after !== null)
          ? h(
              "figure",
              { class: "chart-box" },
              lineChart({
                label: "Exam pass rate after each round, oldest first",
                points: chrono.map((e) => ({ label: e.run_id ? `${e.run_id.slice(4, 10)} r${e.round}` : `#${e.id}`, value: e.pass_after === null ? null : e.pass_after * 100 })),
                yMax: 100,
                format: (v) => `${Math.round(v)}%`,
              }),
              h("figcaption", {}, "Pass rate after each Academy round"),
            )
          : null,
        table(
          `${plural(entries.length, "round")}, newest first`,
          ["When", "Run", "Round", "Domain", "Trigger", "Adapter", "Pass before → after", "Examples", "Outcome"],
          entries.map((e) => [
            when(e.created_at),
            e.run_id ?? "—",
            e.round ?? "—",
            e.domain ?? "—",
            e.trigger,
            e.adapter ?? "—",
            `${pct(e.pass_before)} → ${pct(e.pass_after)}`,
            num(e.examples),
            e.outcome ? badge(e.outcome, { graduated: "good", improved: "good", no_gain: "neutral", failed: "bad", cancelled: "muted" }[e.outcome]) : "—",
          ]),
          { empty: "No Academy round yet (academy.enroll trains a persona)." },
        ),
      );
    },
    (exc) => ctx.signal.aborted || fill(history, errorBox(exc)),
  );
  call("cap:academy", "academy.status", {}, { signal: ctx.signal }).then(
    (status) => {
      const mine = status.runs.filter((r) => r.persona_id === id);
      fill(runs, runsTable(mine, `Runs of ${id} since the Academy started`));
    },
    (exc) => ctx.signal.aborted || fill(runs, errorBox(exc, { title: exc.offline ? "The Academy is offline" : null })),
  );
}

export function runsTable(runs, caption, progress = new Map()) {
  return table(
    caption,
    ["Run", "Persona", "Domain", "Trigger", "State", "Phase", "Round", "Pass rate", "Graduated", "Started", "Finished"],
    runs.map((r) => {
      const live = progress.get(r.run_id);
      return [
        h("code", {}, r.run_id),
        h("a", { href: `#/persona/${r.persona_id}/academy` }, r.persona_id),
        r.domain,
        r.trigger,
        badge(r.state, { running: "warn", graduated: "good", stopped: "neutral", failed: "bad", cancelled: "muted" }[r.state]),
        live && r.state === "running"
          ? h("span", { class: "progress-cell" }, h("progress", { max: live.total || 1, value: live.done, "aria-label": `${r.run_id} ${live.phase}: ${live.done} of ${live.total}` }), ` ${live.detail}`)
          : r.phase,
        num(r.round),
        pct(r.pass_rate),
        r.graduated_adapter ?? "—",
        when(r.started_at),
        when(r.finished_at),
      ];
    }),
    { empty: "No run since the Academy started." },
  );
}
