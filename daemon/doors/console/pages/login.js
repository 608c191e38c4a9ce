// The login page: how to get a link, a field for a link or code, a field for a token.
import { checkToken, pair } from "../api.js";
import { errorBox, field, fill, h, statusLine } from "../ui.js";

export function renderLogin(main, ctx, { reason, onToken }) {
  ctx.title("Log in");
  const linkInput = h("input", { type: "text", name: "pairing", autocomplete: "off", spellcheck: "false", required: true });
  const tokenInput = h("input", { type: "password", name: "token", autocomplete: "off", spellcheck: "false", required: true });
  const linkStatus = statusLine();
  const tokenStatus = statusLine();

  const linkForm = h(
    "form",
    { class: "stack", "aria-labelledby": "pair-title" },
    h("h2", { id: "pair-title" }, "With a login link"),
    h("p", {}, "On the machine that runs the bus, run:"),
    h("pre", { class: "command" }, h("code", {}, "personad console")),
    h(
      "p",
      {},
      "It prints a one-time link (valid for 10 minutes) such as ",
      h("code", {}, `${location.origin}/#pair=…`),
      ". Open it in this browser, or paste it (or just its code) here.",
    ),
    field("Login link or pairing code", linkInput),
    h("button", { type: "submit" }, "Log in"),
    linkStatus,
  );
  linkForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = codeFrom(linkInput.value);
    if (!code) {
      fill(linkStatus, "Paste the whole link, or the code after #pair=.");
      return;
    }
    fill(linkStatus, "Logging in…");
    try {
      const paired = await pair(code);
      linkInput.value = "";
      onToken(paired.token, { name: paired.name, id: paired.id, grants: paired.grants });
    } catch (exc) {
      fill(linkStatus, errorBox(exc));
    }
  });

  const tokenForm = h(
    "form",
    { class: "stack", "aria-labelledby": "token-title" },
    h("h2", { id: "token-title" }, "With a token"),
    h("p", {}, "A token from ", h("code", {}, "personad token add"), " works too; its grants decide what each page may show."),
    field("Bus token", tokenInput),
    h("button", { type: "submit" }, "Use this token"),
    tokenStatus,
  );
  tokenForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = tokenInput.value.trim();
    fill(tokenStatus, "Checking the token…");
    try {
      await checkToken(token);
      tokenInput.value = "";
      onToken(token, {});
    } catch (exc) {
      fill(tokenStatus, errorBox(exc));
    }
  });

  fill(
    main,
    h(
      "div",
      { class: "login" },
      h("h1", {}, "Log in to personad"),
      reason?.note ? h("p", { class: "note", role: "status" }, reason.note) : null,
      reason?.error ? errorBox(reason.error, { title: reason.title ?? "The bus refused the token" }) : null,
      h("div", { class: "login-forms" }, h("section", { class: "card" }, linkForm), h("section", { class: "card" }, tokenForm)),
      h(
        "p",
        { class: "fine" },
        "The token is kept in this tab's session storage only: closing the tab or logging out forgets it, and it never appears in a URL. ",
        "A token made by a login link stays valid on the bus until ",
        h("code", {}, "personad token revoke <id>"),
        " (",
        h("code", {}, "personad token list"),
        " shows it).",
      ),
    ),
  );
}

/** The code from a pasted link (…#pair=CODE) or the code itself. */
function codeFrom(text) {
  const value = text.trim();
  const at = value.indexOf("#");
  if (at >= 0) return new URLSearchParams(value.slice(at + 1)).get("pair") ?? "";
  return /^[A-Za-z0-9_-]{8,}$/.test(value) ? value : "";
}
