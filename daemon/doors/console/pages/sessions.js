// Sessions (session.status @ cap:registry): the open ones, and one session's room
// followed live through /v1/events?room=... (insights arrive as room.message).
import { call, follow } from "../api.js";
import { badge, errorBox, figures, fill, h, loading, num, plural, section, statusLine, table, when } from "../ui.js";

export function renderSessions(main, ctx, sessionId) {
  ctx.title(sessionId ? `Session ${sessionId}` : "Sessions");
  const listEl = h("div", {}, loading("Loading sessions"));
  const detailEl = h("div", {});
  fill(main, h("div", { class: "page-head" }, h("h1", {}, "Sessions")), section("Open sessions", listEl), detailEl);

  async function loadList() {
    try {
      const { sessions, insights_shared } = await call("cap:registry", "session.status", {}, { signal: ctx.signal });
      fill(
        listEl,
        h("p", { class: "fine" }, `${sessions.length} open, ${plural(insights_shared, "insight")} shared. Updated every 5 s.`),
        table(
          "Open sessions, oldest first",
          ["Topic", "Session", "Participants", "Insights", "Opened", "By"],
          sessions.map((s) => [
            h("a", { href: `#/sessions/${s.id}`, "aria-current": s.id === sessionId ? "true" : null }, s.topic),
            h("code", {}, s.id),
            s.participants.map((p) => p.client_id).join(", ") || "—",
            num(s.insights),
            when(s.created_at),
            s.created_by,
          ]),
          { empty: "No session is open (session.create opens one).", captionHidden: true },
        ),
      );
    } catch (exc) {
      if (!ctx.signal.aborted) fill(listEl, errorBox(exc, { title: exc.offline ? "The registry is offline" : null }));
    }
  }
  ctx.every(5000, loadList);
  if (sessionId) sessionDetail(detailEl, ctx, sessionId, loadList);
}

async function sessionDetail(el, ctx, sessionId, changed) {
  fill(el, loading(`Opening ${sessionId}`));
  let session;
  try {
    [session] = (await call("cap:registry", "session.status", { session_id: sessionId }, { signal: ctx.signal })).sessions;
  } catch (exc) {
    if (!ctx.signal.aborted) fill(el, section(`Session ${sessionId}`, errorBox(exc)));
    return;
  }
  const live = statusLine();
  const feed = h("ol", { class: "feed", role: "log", "aria-live": "polite", "aria-label": `Messages in ${session.topic}` });
  const seen = new Set(); // insight ids: the history and the live feed may overlap
  const flags = Object.entries(session.context).filter(([k, v]) => v === true).map(([k]) => k.replace(/_/g, " "));
  fill(
    el,
    section(
      `Session: ${session.topic}`,
      figures([
        ["Id", h("code", {}, session.id)],
        ["Room", h("code", {}, session.room)],
        ["Status", badge(session.status, "good")],
        ["Opened", when(session.created_at)],
        ["By", session.created_by],
        ["Participants", session.participants.map((p) => p.client_id).join(", ") || "—"],
        ["Needs", flags.length ? flags.join(", ") : "no flags"],
        ["Notes", session.context.notes || "—"],
      ]),
      h("h3", {}, "Messages and insights"),
      live,
      feed,
    ),
  );

  const add = (sender, data, at) => {
    if (data && data.type === "session.insight") {
      const key = data.insight.id;
      if (seen.has(key)) return;
      seen.add(key);
    }
    feed.append(feedItem(sender, data, at));
  };
  // Earlier insights: the room keeps no history, but its personas keep what they received.
  const persona = session.participants.find((p) => p.persona_id);
  if (persona) {
    try {
      const { sessions } = await call(persona.client_id, "persona.session.list", {}, { signal: ctx.signal });
      const mine = sessions.find((s) => s.session_id === session.id);
      for (const m of mine?.received ?? []) add(m.sender, m.data, m.received_at);
    } catch {
      // The persona may be offline: live messages still come.
    }
  }
  follow(
    { rooms: [session.room] },
    {
      signal: ctx.signal,
      onEvent: (method, params) => {
        if (method === "room.message") {
          add(params.sender, params.data, Date.now() / 1000);
          changed(); // the list's insight count
        }
        else if (method === "room.presence") feed.append(h("li", { class: "presence" }, `${params.member} ${params.change}`));
      },
      onState: (state, error) => {
        if (state === "live") fill(live, badge("live", "good"), ` following room ${session.room}`);
        else if (state === "retrying") fill(live, badge("reconnecting", "warn"), ` ${error ?? ""}`);
        else fill(live, errorBox(error));
      },
    },
  );
}

function feedItem(sender, data, at) {
  if (data && data.type === "session.insight") {
    const i = data.insight;
    return h(
      "li",
      { class: "insight", dataset: { insightId: i.id } },
      h("p", { class: "msg-who" }, badge(i.insight_type, "neutral"), ` ${i.persona_id}`, h("span", { class: "fine" }, ` · relevance ${num(i.relevance_score, 2)} · ${when(i.shared_at)}`)),
      h("p", {}, i.content),
    );
  }
  return h(
    "li",
    { class: "message" },
    h("p", { class: "msg-who" }, sender, h("span", { class: "fine" }, ` · ${when(at)}`)),
    typeof data === "string" ? h("p", {}, data) : h("pre", {}, JSON.stringify(data, null, 2)),
  );
}
