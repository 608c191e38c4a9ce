// The options page: a manual pairing form, stored in chrome.storage.local.
// The service worker reconnects when it changes (service_worker.js).

const form = document.getElementById("form");
const fields = ["url", "token", "name", "topics"].map((id) => document.getElementById(id));
const [url, token, name, topics] = fields;
const status = document.getElementById("status");

async function showStatus() {
  const state = await chrome.runtime.sendMessage("personad.status").catch(() => null);
  status.textContent = state
    ? `${state.state}${state.clientId ? ` as ${state.clientId}` : ""}${state.detail ? `: ${state.detail}` : ""}` +
      (state.source ? ` (configured by ${state.source})` : "")
    : "the service worker is not running";
}

const { config } = await chrome.storage.local.get("config");
if (config) {
  url.value = config.url ?? "";
  name.value = config.name ?? "";
  topics.value = (config.topics ?? []).join(", ");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const next = {
    url: url.value.trim(),
    token: token.value.trim() || config?.token || "",
    name: name.value.trim() || undefined,
    topics: topics.value.split(",").map((t) => t.trim()).filter(Boolean),
    heartbeat_s: 20,
  };
  await chrome.storage.local.set({ config: next });
  token.value = "";
  setTimeout(showStatus, 500);
});

showStatus();
setInterval(showStatus, 2000);
