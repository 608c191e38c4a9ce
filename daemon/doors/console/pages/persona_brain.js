// A persona's brain in the console: memories (memory.recall, memory.remember,
// memory.forget) and goals (goals.list), each a call to persona:<id>.
import { call } from "../api.js";
import { badge, errorBox, field, fill, h, loading, num, pct, plural, statusLine, table, uid, when } from "../ui.js";

export function memoriesPanel(panel, ctx, target) {
  const query = h("input", { type: "search", name: "query", maxlength: 1024, autocomplete: "off" });
  const kind = h("input", { type: "text", name: "kind", maxlength: 32, autocomplete: "off", pattern: "[a-z][a-z0-9_.\\-]{0,31}" });
  const limit = h("select", { name: "limit" }, [10, 25, 50, 100].map((n) => h("option", { value: n }, String(n))));
  const found = statusLine();
  const results = h("ol", { class: "memories" });
  const searchForm = h(
    "form",
    { class: "inline-form", role: "search", "aria-label": "Search memories" },
    field("Search memories", query, "Words to find; empty lists the most recent and relevant.", { grow: true }),
    field("Kind", kind),
    field("Most results", limit),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Search")),
  );

  async function search() {
    fill(found, "Searching…");
    const params = { query: query.value, limit: Number(limit.value) };
    if (kind.value.trim()) params.kinds = [kind.value.trim()];
    try {
      const { hits } = await call(target, "memory.recall", params, { signal: ctx.signal });
      fill(results, hits.map((hit) => memoryItem(hit)));
      fill(found, hits.length === 0 ? "No memory matches." : `${plural(hits.length, "memory", "memories")} found.`);
    } catch (exc) {
      if (ctx.signal.aborted) return;
      fill(results);
      fill(found, errorBox(exc));
    }
  }

  function memoryItem(hit) {
    const forget = h("button", { type: "button", class: "quiet danger", "aria-label": `Forget memory ${hit.id}` }, "Forget");
    const item = h(
      "li",
      { class: "memory", dataset: { memoryId: hit.id } },
      h("p", { class: "memory-text" }, hit.content),
      h(
        "p",
        { class: "memory-meta" },
        badge(hit.kind),
        hit.pinned ? badge("pinned", "good") : null,
        ` #${hit.id}`,
        hit.subject ? ` · about ${hit.subject}` : "",
        hit.source ? ` · from ${hit.source}` : "",
        ` · relevance ${num(hit.relevance, 2)} · ${when(hit.created_at)} · score ${num(hit.score, 2)}`,
      ),
      h("div", { class: "buttons" }, forget),
    );
    // Forgetting cannot be undone: the first press asks, the second does it.
    forget.addEventListener("click", async () => {
      if (forget.dataset.armed !== "yes") {
        forget.dataset.armed = "yes";
        forget.textContent = "Confirm forget";
        forget.setAttribute("aria-label", `Confirm: forget memory ${hit.id} for good`);
        forget.focus();
        return;
      }
      forget.disabled = true;
      try {
        const { removed } = await call(target, "memory.forget", { ids: [hit.id] }, { signal: ctx.signal });
        item.remove();
        fill(found, removed ? `Forgot memory ${hit.id}.` : `Memory ${hit.id} was already gone.`);
      } catch (exc) {
        forget.disabled = false;
        item.append(errorBox(exc));
      }
    });
    return item;
  }

  searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });

  const content = h("textarea", { name: "content", rows: 3, required: true });
  const subject = h("input", { type: "text", name: "subject", maxlength: 128, autocomplete: "off" });
  const newKind = h("input", { type: "text", name: "kind", value: "note", maxlength: 32, required: true, pattern: "[a-z][a-z0-9_.\\-]{0,31}" });
  const relevance = h("input", { type: "number", name: "relevance", min: 0, max: 1, step: 0.05, value: 0.5, inputmode: "decimal" });
  const pinned = h("input", { type: "checkbox", name: "pinned", id: uid("pin") });
  const remembered = statusLine();
  const titleId = uid("remember");
  const rememberForm = h(
    "form",
    { class: "stack", "aria-labelledby": titleId },
    h("h3", { id: titleId }, "Remember something"),
    field("Memory", content),
    h("div", { class: "row" }, field("About (subject)", subject), field("Kind", newKind), field("Relevance (0 to 1)", relevance)),
    h("div", { class: "check" }, pinned, h("label", { for: pinned.id }, "Pinned (retention never removes it)")),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Remember")),
    remembered,
  );
  rememberForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const params = { content: content.value, kind: newKind.value, relevance: Number(relevance.value), pinned: pinned.checked, source: "console" };
    if (subject.value.trim()) params.subject = subject.value.trim();
    fill(remembered, "Storing…");
    try {
      const { id } = await call(target, "memory.remember", params, { signal: ctx.signal });
      content.value = "";
      fill(remembered, `Remembered as memory ${id}; it is on disk.`);
      search();
    } catch (exc) {
      fill(remembered, errorBox(exc));
    }
  });

  fill(panel, h("h2", { class: "visually-hidden" }, "Memories"), searchForm, found, results, h("section", { class: "card sub" }, rememberForm));
  search();
}

export function goalsPanel(panel, ctx, target) {
  const status = h("select", { name: "status" }, h("option", { value: "" }, "all"), ["active", "paused", "done", "abandoned"].map((v) => h("option", { value: v }, v)));
  const out = h("div", {}, loading("Loading goals"));
  async function load() {
    try {
      const { goals } = await call(target, "goals.list", status.value ? { status: status.value } : {}, { signal: ctx.signal });
      fill(
        out,
        table(
          `${plural(goals.length, "goal")}, highest priority first`,
          ["Goal", "Status", "Priority", "Progress", "Due", "Updated"],
          goals.map((g) => [
            h("div", {}, h("strong", {}, g.title), g.description ? h("p", { class: "fine" }, g.description) : null),
            badge(g.status, g.status === "active" ? "good" : g.status === "done" ? "neutral" : "muted"),
            num(g.priority, 2),
            h("span", { class: "progress-cell" }, h("progress", { max: 1, value: g.progress, "aria-label": `${g.title}: ${pct(g.progress)} done` }), ` ${pct(g.progress)}`),
            when(g.due_at),
            when(g.updated_at),
          ]),
          { empty: "No goals." },
        ),
      );
    } catch (exc) {
      if (!ctx.signal.aborted) fill(out, errorBox(exc));
    }
  }
  status.addEventListener("change", load);
  fill(panel, h("h2", { class: "visually-hidden" }, "Goals"), h("div", { class: "toolbar" }, field("Status", status)), out);
  load();
}
