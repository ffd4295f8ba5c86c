// Settings (system prompt, sampling, JSON mode, API key), kept in localStorage, and the request
// body they make. Fields left empty are left out (the server's defaults apply); anything else is
// sent as typed, so the server's 400 names a bad value rather than the page hiding it.

import { $ } from "./view.js";

const SETTINGS_KEY = "triode.chat.settings";
const TEXT_INPUTS = {
  systemPrompt: "system-prompt",
  temperature: "temperature",
  maxTokens: "max-tokens",
  apiKey: "api-key",
};
const CHECKBOXES = { jsonMode: "json-mode" };

export function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY)) || {};
  } catch {
    // unreadable or blocked storage: keep the defaults in the HTML
  }
  for (const [name, id] of Object.entries(TEXT_INPUTS)) {
    if (typeof saved[name] === "string") $(id).value = saved[name];
  }
  for (const [name, id] of Object.entries(CHECKBOXES)) {
    if (typeof saved[name] === "boolean") $(id).checked = saved[name];
  }
}

function saveSettings() {
  const values = {};
  for (const [name, id] of Object.entries(TEXT_INPUTS)) values[name] = $(id).value;
  for (const [name, id] of Object.entries(CHECKBOXES)) values[name] = $(id).checked;
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(values));
  } catch {
    // private mode or full storage: the settings still apply to this page
  }
}

// Saves on every change; `onKeyChange` runs when the API key changes.
export function watchSettings(onKeyChange) {
  for (const id of [...Object.values(TEXT_INPUTS), ...Object.values(CHECKBOXES)]) {
    $(id).addEventListener("change", saveSettings);
  }
  $("api-key").addEventListener("change", onKeyChange);
  // Enter in a settings field must not submit (and reload) the page.
  $("settings-form").addEventListener("submit", (event) => event.preventDefault());
}

// The body of a streamed chat completion of `messages` (the system prompt goes first).
export function requestBody(messages, extra = {}) {
  const system = $("system-prompt").value.trim();
  const body = {
    messages: [
      ...(system ? [{ role: "system", content: system }] : []),
      ...messages.map(({ role, content }) => ({ role, content })), // stored extras stay here
    ],
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = $("temperature").value.trim();
  const maxTokens = $("max-tokens").value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  if ($("json-mode").checked) body.response_format = { type: "json_object" };
  return Object.assign(body, extra);
}

// ---- model name --------------------------------------------------------------------------------

export async function showModel() {
  const key = $("api-key").value.trim();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    const response = await fetch("/v1/models", { headers });
    if (response.status === 401) {
      $("model").textContent = "API key needed (Settings)";
      return;
    }
    const models = await response.json();
    $("model").textContent = models.data?.[0]?.id ?? "";
  } catch {
    $("model").textContent = ""; // a reply will show the real problem, if there is one
  }
}
