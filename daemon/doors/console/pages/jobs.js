// Jobs: PersonaHub's (hub.status @ cap:hub) and the Academy's runs (academy.status @
// cap:academy), with live progress from the topics hub.progress and academy.progress.
import { call, follow } from "../api.js";
import { badge, duration, errorBox, field, fill, h, loading, num, plural, section, statusLine, table, when } from "../ui.js";
import { runsTable } from "./persona_insights.js";

// Anybody may publish on any topic; progress counts only from the services themselves.
const PUBLISHERS = { "hub.progress": "hub:main", "academy.progress": "academy:main", "persona.graduated": "academy:main" };
const ENDED = new Set(["done", "failed", "cancelled"]);

export function renderJobs(main, ctx) {
  ctx.title("Jobs");
  const live = statusLine();
  const hubEl = h("div", {}, loading("Asking PersonaHub"));
  const academyEl = h("div", {}, loading("Asking the Academy"));
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), live),
    section("PersonaHub jobs", newJobForm(ctx, () => loadHub()), hubEl),
    section("Academy runs", academyEl),
  );

  const jobs = new Map(); // job_id -> JobStatus, updated by hub.progress
  const runs = new Map(); // run_id -> RunStatus
  const runProgress = new Map(); // run_id -> academy.progress params

  async function loadHub() {
    try {
      const { jobs: list } = await call("cap:hub", "hub.status", {}, { signal: ctx.signal });
      jobs.clear();
      for (const job of list) jobs.set(job.job_id, job);
      drawHub();
    } catch (exc) {
      if (!ctx.signal.aborted) fill(hubEl, errorBox(exc, { title: exc.offline ? "PersonaHub is offline" : null }));
    }
  }
  async function loadAcademy() {
    try {
      const status = await call("cap:academy", "academy.status", {}, { signal: ctx.signal });
      runs.clear();
      for (const run of status.runs) runs.set(run.run_id, run);
      drawAcademy();
    } catch (exc) {
      if (!ctx.signal.aborted) fill(academyEl, errorBox(exc, { title: exc.offline ? "The Academy is offline" : null }));
    }
  }

  function drawHub() {
    const list = [...jobs.values()].sort((a, b) => b.created_at - a.created_at);
    fill(
      hubEl,
      table(
        `${plural(list.length, "job")}, newest first`,
        ["Job", "State", "Progress", "Made", "Failed", "Rate", "Left", "Kept", "Created", "Finished", ""],
        list.map((job) => {
          const f = job.figures;
          const running = !ENDED.has(job.state);
          return [
            h("code", {}, job.job_id),
            badge(job.state, { generating: "warn", checking: "warn", done: "good", failed: "bad", cancelled: "muted" }[job.state]),
            h(
              "span",
              { class: "progress-cell", dataset: { job: job.job_id, state: job.state, done: f.done, total: f.total } },
              h("progress", { max: f.total || 1, value: f.done, "aria-label": `${job.job_id}: ${f.done} of ${f.total} slots` }),
              ` ${f.done} / ${f.total}`,
            ),
            num(f.made),
            num(f.failed),
            `${num(f.rate, 2)}/s`,
            running && f.eta_s !== null ? duration(f.eta_s) : "—",
            job.kept === null ? "—" : num(job.kept),
            when(job.created_at),
            when(job.finished_at),
            running
              ? h("button", { type: "button", class: "quiet danger", "aria-label": `Cancel ${job.job_id}`, onclick: () => cancel(job.job_id) }, "Cancel")
              : job.error
                ? h("span", { class: "fine" }, job.error)
                : "",
          ];
        }),
        { empty: "No job yet: start one above, or run personad hub run." },
      ),
    );
  }
  function drawAcademy() {
    fill(academyEl, runsTable([...runs.values()], `${plural(runs.size, "run")} since the Academy started, newest first`, runProgress));
  }
  async function cancel(jobId) {
    try {
      const job = await call("cap:hub", "hub.cancel", { job_id: jobId }, { signal: ctx.signal });
      jobs.set(job.job_id, job);
      drawHub();
    } catch (exc) {
      hubEl.prepend(errorBox(exc));
    }
  }

  loadHub();
  loadAcademy();
  // A slow safety net: events carry the live figures, this catches what a dropped stream missed.
  ctx.every(15000, async () => {
    await Promise.all([loadHub(), loadAcademy()]);
  });

  follow(
    { topics: Object.keys(PUBLISHERS) },
    {
      signal: ctx.signal,
      onEvent: (method, params) => {
        if (method !== "event" || PUBLISHERS[params.topic] !== params.publisher) return;
        const data = params.data;
        if (params.topic === "hub.progress") {
          const job = jobs.get(data.job_id);
          if (!job || ENDED.has(data.state)) {
            loadHub(); // a new job, or one that ended: its final figures (kept, quality) come from hub.status
            return;
          }
          job.state = data.state;
          job.figures = { ...job.figures, ...data.figures, done: data.done, total: data.total, rate: data.rate, eta_s: data.eta_s };
          drawHub();
        } else if (params.topic === "academy.progress") {
          runProgress.set(data.run_id, data);
          const run = runs.get(data.run_id);
          if (!run) {
            loadAcademy();
            return;
          }
          run.phase = data.phase;
          run.round = data.round;
          if (data.phase === "done") loadAcademy();
          else drawAcademy();
        } else {
          loadAcademy();
        }
      },
      onState: (state, error) => {
        if (state === "live") fill(live, badge("live", "good"), " following hub.progress and academy.progress");
        else if (state === "retrying") fill(live, badge("reconnecting", "warn"), ` ${error ?? ""}`);
        else fill(live, errorBox(error));
      },
    },
  );
}

function newJobForm(ctx, started) {
  const count = h("input", { type: "number", name: "count", min: 1, max: 100000, step: 1, value: 10, required: true, inputmode: "numeric" });
  const path = h("select", { name: "path" }, ["structured", "persona", "text"].map((p) => h("option", { value: p }, p)));
  const quality = h("select", { name: "quality" }, ["fast", "standard", "thorough"].map((q) => h("option", { value: q, selected: q === "standard" }, q)));
  const seed = h("input", { type: "number", name: "seed", min: 0, step: 1, value: 0, inputmode: "numeric" });
  const status = statusLine();
  const form = h(
    "form",
    { class: "inline-form", "aria-label": "Start a PersonaHub job" },
    field("Personas", count),
    field("Path", path),
    field("Quality", quality),
    field("Seed", seed),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Start job")),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(status, "Starting…");
    try {
      const job = await call(
        "cap:hub",
        "hub.run",
        { requirements: { count: Number(count.value), paths: { [path.value]: 1.0 }, quality: quality.value, seed: Number(seed.value) }, wait: false },
        { signal: ctx.signal },
      );
      fill(status, `Started ${job.job_id}.`);
      started(job);
    } catch (exc) {
      fill(status, errorBox(exc));
    }
  });
  return form;
}
