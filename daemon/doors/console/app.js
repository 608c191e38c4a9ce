// The personad web console: hash routes over the HTTP door of the bus.
// A login link (`personad console`) is http://HOST:PORT/#pair=CODE: the code is taken
// out of the URL at once, exchanged for a token at /v1/pair, and the token kept in
// this tab's sessionStorage. docs/console.md describes every page.
import { login, pair, whenUnauthenticated } from "./api.js";
import { fill, h, errorBox } from "./ui.js";
import { renderLogin } from "./pages/login.js";
import { renderBus } from "./pages/bus.js";
import { renderPersonas } from "./pages/personas.js";
import { renderPersona } from "./pages/persona.js";
import { renderSessions } from "./pages/sessions.js";
import { renderJobs } from "./pages/jobs.js";

const ROUTES = [
  { pattern: /^\/bus$/, page: "bus", render: renderBus },
  { pattern: /^\/personas$/, page: "personas", render: renderPersonas },
  { pattern: /^\/persona\/([a-z0-9][a-z0-9_-]{0,63})(?:\/([a-z]+))?$/, page: "personas", render: renderPersona },
  { pattern: /^\/sessions(?:\/(s-[0-9a-f]{12}))?$/, page: "sessions", render: renderSessions },
  { pattern: /^\/jobs$/, page: "jobs", render: renderJobs },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const account = document.getElementById("account");
const who = document.getElementById("who");

let running = null; // the current page's AbortController
let reason = null; // why the login page is shown (an error, or a note)
let firstRoute = true;

whenUnauthenticated((error) => {
  reason = { error };
  route();
});

// The skip link moves focus without touching the hash (the hash is the route).
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

document.getElementById("logout").addEventListener("click", () => {
  login.forget();
  reason = { note: "Logged out: this tab no longer holds the token." };
  route();
});

function path() {
  const hash = location.hash.replace(/^#/, "");
  return hash.startsWith("/") ? hash : "/bus";
}

/** A page's context: its abort signal (navigation ends its polls and streams) and helpers. */
function context(controller) {
  const signal = controller.signal;
  return {
    signal,
    title(text) {
      document.title = `${text} · personad console`;
    },
    /** Run fn now and every `ms` after it settles, until the page is left; skipped while hidden. */
    every(ms, fn) {
      const tick = async () => {
        if (signal.aborted) return;
        if (!document.hidden) {
          try {
            await fn();
          } catch (exc) {
            if (exc.name !== "AbortError") console.error(exc);
          }
        }
        if (!signal.aborted) setTimeout(tick, ms);
      };
      tick();
    },
    go(hash) {
      location.hash = hash;
    },
    /** Change the hash without re-rendering (a tab or a selection within the page). */
    replace(hash) {
      history.replaceState(null, "", hash);
      markNav();
    },
  };
}

function markNav() {
  const current = ROUTES.find((r) => r.pattern.test(path()))?.page;
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.page === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  running?.abort();
  running = new AbortController();
  const ctx = context(running);
  const current = login.get();
  nav.hidden = account.hidden = current === null;
  if (current === null) {
    renderLogin(main, ctx, { reason, onToken: loggedIn });
    focusHeading();
    return;
  }
  reason = null;
  who.textContent = current.name ? `Signed in as ${current.name}` : "Signed in with a pasted token";
  who.title = current.id ? `token id ${current.id}, grants: ${current.grants.join(", ")}` : "";
  const p = path();
  const found = ROUTES.map((r) => ({ r, m: p.match(r.pattern) })).find((x) => x.m);
  if (!found) {
    history.replaceState(null, "", "#/bus");
    route();
    return;
  }
  markNav();
  fill(main);
  Promise.resolve(found.r.render(main, ctx, ...found.m.slice(1))).catch((exc) => {
    if (exc.name === "AbortError" || ctx.signal.aborted) return;
    main.append(errorBox(exc));
  });
  focusHeading();
}

function focusHeading() {
  // After a navigation (not the first load), move focus to the new page's heading,
  // so keyboard and screen-reader users start at the top of what changed.
  if (firstRoute) {
    firstRoute = false;
    return;
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: false });
  }
}

function loggedIn(token, identity) {
  login.save(token, identity);
  reason = null;
  if (!location.hash.startsWith("#/")) history.replaceState(null, "", "#/bus");
  route();
}

async function boot() {
  const code = new URLSearchParams(location.hash.slice(1)).get("pair");
  if (code !== null) {
    // The code leaves the address bar (and this tab's history) before anything else happens.
    history.replaceState(null, "", `${location.pathname}#/bus`);
    fill(main, h("p", { class: "loading", role: "status" }, "Logging in with the pairing link…"));
    try {
      const paired = await pair(code);
      login.save(paired.token, { name: paired.name, id: paired.id, grants: paired.grants });
    } catch (exc) {
      login.forget();
      reason = { error: exc, title: "The pairing link was refused" };
    }
  }
  window.addEventListener("hashchange", route);
  route();
}

boot().catch((exc) => fill(main, errorBox(exc)));
