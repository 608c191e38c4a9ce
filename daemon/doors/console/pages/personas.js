// The personas page: the registry's list (persona.list @ cap:registry) with each
// persona's stack and lineage (persona.get) and whether its daemon is on the bus
// (bus.clients); refreshed when the registry publishes registry.persona.
import { call, follow } from "../api.js";
import { badge, errorBox, field, fill, h, loading, plural, section, statusLine, table, when } from "../ui.js";

const PAGE = 50;
const REGISTRY_PUBLISHER = "registry:main"; // anybody may publish on a topic: trust only the registry

export function renderPersonas(main, ctx) {
  ctx.title("Personas");
  const listEl = h("div", {}, loading("Loading personas"));
  const live = statusLine();
  const filter = h("select", { name: "status" },
    h("option", { value: "" }, "any status"),
    ["active", "draft", "archived", "merged"].map((v) => h("option", { value: v }, v)));
  filter.addEventListener("change", () => load());
  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Personas"), live),
    h("div", { class: "toolbar" }, field("Status", filter)),
    section("Registry", listEl),
  );

  let online = new Set();
  let pages = [];

  async function connected() {
    const { clients } = await call("bus", "bus.clients", { kind: "persona" }, { signal: ctx.signal });
    online = new Set(clients.map((c) => c.id));
  }

  async function load(cursor = null) {
    const params = { limit: PAGE, ...(filter.value ? { status: filter.value } : {}), ...(cursor ? { cursor } : {}) };
    let listed;
    try {
      [listed] = await Promise.all([call("cap:registry", "persona.list", params, { signal: ctx.signal }), connected()]);
    } catch (exc) {
      if (ctx.signal.aborted) return;
      await connected().catch(() => {});
      fill(listEl, errorBox(exc, { title: exc.offline ? "The registry is offline" : "The registry refused the list" }), fallback(online));
      return;
    }
    const details = await Promise.all(
      listed.personas.map((p) => call("cap:registry", "persona.get", { persona_id: p.id }, { signal: ctx.signal }).then((r) => r.profile, () => null)),
    );
    const page = { personas: listed.personas.map((p, i) => ({ ...p, profile: details[i] })), next: listed.next_cursor };
    pages = cursor ? [...pages, page] : [page];
    draw();
  }

  function draw() {
    const rows = pages.flatMap((p) => p.personas);
    const next = pages.at(-1)?.next;
    fill(
      listEl,
      table(
        `${plural(rows.length, "persona")}${filter.value ? ` (${filter.value})` : ""}`,
        ["Persona", "Role", "Status", "On the bus", "Stack", "Lineage", "Tags"],
        rows.map((p) => [
          h("a", { href: `#/persona/${p.id}` }, p.name, h("span", { class: "id" }, ` ${p.id}`)),
          p.role,
          badge(p.status, { active: "good", draft: "neutral", archived: "muted", merged: "muted" }[p.status] ?? "neutral"),
          online.has(`persona:${p.id}`) ? badge("connected", "good") : badge("offline", "muted"),
          stackText(p.profile),
          lineageText(p.profile),
          p.tags.length ? p.tags.join(", ") : "—",
        ]),
        { empty: "The registry holds no persona." },
      ),
      next ? h("button", { type: "button", class: "quiet", onclick: () => load(next) }, "Show more") : null,
    );
  }

  load();
  // Connection status changes without any registry event: look again every 5 s.
  ctx.every(5000, async () => {
    if (pages.length === 0) return;
    await connected();
    draw();
  });
  follow(
    { topics: ["registry.persona"] },
    {
      signal: ctx.signal,
      onEvent: (method, params) => {
        if (method === "event" && params.publisher === REGISTRY_PUBLISHER) {
          live.textContent = `${params.data.persona_id}: ${params.data.action} (${params.data.status})`;
          load();
        }
      },
      onState: (state, error) => {
        if (state === "failed") fill(live, `Not following registry changes: ${error}`);
      },
    },
  );
}

export function stackText(profile) {
  if (!profile) return "—";
  if (profile.stack.length === 0) return "base model";
  return profile.stack.map((level) => level.name).join(" → ");
}

export function lineageText(profile) {
  if (!profile) return "—";
  const l = profile.lineage;
  const parts = [];
  if (l.forked_from) parts.push(h("span", {}, "fork of ", h("a", { href: `#/persona/${l.forked_from}` }, l.forked_from)));
  if (l.merged_from.length) {
    parts.push(h("span", {}, "merged from ", l.merged_from.flatMap((id, i) => [i ? " + " : "", h("a", { href: `#/persona/${id}` }, id)])));
  }
  if (l.parent && l.parent !== l.forked_from) parts.push(h("span", {}, "parent ", h("a", { href: `#/persona/${l.parent}` }, l.parent)));
  if (parts.length === 0) parts.push(h("span", {}, "original"));
  return h("span", { class: "lineage", title: `created ${when(l.created_at)}, updated ${when(l.updated_at)}` }, parts.flatMap((p, i) => [i ? "; " : "", p]));
}

/** Without the registry, the personas on the bus are still worth showing. */
function fallback(online) {
  const ids = [...online].sort();
  if (ids.length === 0) return null;
  return h(
    "div",
    {},
    h("p", {}, "Personas connected to the bus now:"),
    h("ul", {}, ids.map((id) => h("li", {}, h("a", { href: `#/persona/${id.slice(8)}` }, id)))),
  );
}
