// triode chat page: streams chat completions over the WebSocket API (/v1/ws) and falls back to
// Server-Sent Events over fetch (POST /v1/chat/completions, stream: true) when the socket
// cannot connect. `?transport=sse` or `?transport=ws` forces one. Model output is only ever
// set as text (Text nodes, textContent), never parsed as HTML.
"use strict";

const SETTINGS_KEY = "triode.chat.settings";
const WS_CONNECT_TIMEOUT_MS = 3000;
// A cancel the server never answers (a dead socket) still frees the page after this long.
const STOP_GRACE_MS = 5000;

const $ = (id) => document.getElementById(id);

const chat = {
  history: [],     // finished turns as {role, content}; the system prompt is added per request
  turn: null,      // the reply in progress, or null
  socket: null,    // the open WebSocket, reused across turns
  socketKey: null, // the API key `socket` was opened with
  numTurns: 0,
};

// ---- settings -----------------------------------------------------------------------------------

const SETTING_INPUTS = {
  systemPrompt: "system-prompt",
  temperature: "temperature",
  maxTokens: "max-tokens",
  apiKey: "api-key",
};

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY)) || {};
  } catch {
    // unreadable or blocked storage: keep the defaults in the HTML
  }
  for (const [name, id] of Object.entries(SETTING_INPUTS)) {
    if (typeof saved[name] === "string") $(id).value = saved[name];
  }
}

function saveSettings() {
  const values = {};
  for (const [name, id] of Object.entries(SETTING_INPUTS)) values[name] = $(id).value;
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(values));
  } catch {
    // private mode or full storage: the settings still apply to this page
  }
}

function apiKey() {
  return $("api-key").value.trim();
}

// The request body. Fields left empty are left out (the server's defaults apply); anything else
// is sent as typed, so the server's 400 names a bad value rather than the page hiding it.
function buildRequest(messages) {
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const temperature = $("temperature").value.trim();
  const maxTokens = $("max-tokens").value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  return body;
}

function requestMessages(userText) {
  const system = $("system-prompt").value.trim();
  const messages = system ? [{ role: "system", content: system }] : [];
  return [...messages, ...chat.history, { role: "user", content: userText }];
}

// ---- conversation view ------------------------------------------------------------------------

function isScrolledToBottom() {
  const view = $("conversation");
  return view.scrollHeight - view.scrollTop - view.clientHeight < 40;
}

function addBubble(className, text = "") {
  const stick = isScrolledToBottom();
  $("empty-hint").hidden = true;
  const bubble = document.createElement("div");
  bubble.className = className;
  bubble.textContent = text;
  $("conversation").append(bubble);
  if (stick) bubble.scrollIntoView({ block: "end" });
  return bubble;
}

function addNote(text) {
  addBubble("note", text);
}

// An error in the conversation: the server's message, then what it was (status, code).
function showError(error) {
  const bubble = addBubble("message error");
  const title = document.createElement("strong");
  title.textContent = "Error: ";
  bubble.append(title, error.message || "unknown error");
  const details = [error.status && `HTTP ${error.status}`, error.code || error.type];
  if (error.retryAfter) details.push(`retry after ${error.retryAfter} s`);
  const shown = details.filter(Boolean).join(" · ");
  if (shown) bubble.append(` (${shown})`);
  if (error.status === 401 || error.code === "invalid_api_key") {
    bubble.append(" Set the server's API key under Settings.");
    $("settings").open = true;
  }
}

function appendReplyText(turn, text) {
  const stick = isScrolledToBottom();
  turn.textNode.appendData(text);  // a Text node: model output is never parsed as HTML
  turn.text += text;
  if (stick) turn.bubble.scrollIntoView({ block: "end" });
}

function setBusy(isBusy) {
  document.body.dataset.state = isBusy ? "streaming" : "idle";
  $("send").disabled = isBusy;
  $("stop").disabled = !isBusy;
}

// ---- live figures -----------------------------------------------------------------------------

function formatNumber(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// TTFT counts from sending the request; tokens/s is the decode rate after the first token.
// While streaming the token count is the number of text chunks (about one token each); the
// server's usage replaces it when the reply ends.
function updateStats(turn) {
  const numTokens = turn.usage ? turn.usage.completion_tokens : turn.numTextChunks;
  const ttftMs = turn.firstAt - turn.sentAt;
  const decodeS = (turn.lastAt - turn.firstAt) / 1000;
  const rate = numTokens > 1 && decodeS > 0 ? (numTokens - 1) / decodeS : NaN;
  $("ttft").textContent = Number.isFinite(ttftMs) ? `${Math.round(ttftMs)} ms` : "–";
  $("tps").textContent = formatNumber(rate, 1);
  $("num-tokens").textContent = String(numTokens ?? "–");
}

function resetStats() {
  for (const id of ["ttft", "tps", "num-tokens"]) $(id).textContent = "–";
}

// ---- one turn ---------------------------------------------------------------------------------

function startTurn(userText) {
  chat.numTurns += 1;
  const userBubble = addBubble("message user", userText);
  const bubble = addBubble("message assistant streaming");
  const textNode = document.createTextNode("");
  bubble.append(textNode);
  const turn = {
    id: `chat-${chat.numTurns}`,
    userText,
    userBubble,
    bubble,
    textNode,
    text: "",
    numTextChunks: 0,
    usage: null,
    sentAt: NaN,
    firstAt: NaN,
    lastAt: NaN,
    isStopRequested: false,
    isDiscarded: false,  // "New chat" during the reply: drop it silently
    stop: () => {},      // set by the transport
    settle: () => {},    // set by the transport: ends the turn with an outcome
  };
  chat.turn = turn;
  resetStats();
  setBusy(true);
  return turn;
}

// One streamed chunk object (the same shape over both transports).
function handleChunk(turn, chunk) {
  if (chunk.usage) turn.usage = chunk.usage;
  const text = chunk.choices?.[0]?.delta?.content;
  if (!text) return;
  const now = performance.now();
  if (!Number.isFinite(turn.firstAt)) turn.firstAt = now;
  turn.lastAt = now;
  turn.numTextChunks += 1;
  appendReplyText(turn, text);
  updateStats(turn);
}

// outcome: {kind: "done" | "stopped" | "error", usage?, error?}
function finishTurn(turn, outcome) {
  chat.turn = null;
  setBusy(false);
  turn.bubble.classList.remove("streaming");
  if (outcome.usage) turn.usage = outcome.usage;
  if (turn.isDiscarded) return;
  updateStats(turn);
  const hasText = turn.text.length > 0;
  if (outcome.kind === "done" || (outcome.kind === "stopped" && hasText)) {
    // What the user saw is what the model will see as its own previous turn.
    chat.history.push({ role: "user", content: turn.userText });
    chat.history.push({ role: "assistant", content: turn.text });
    if (outcome.kind === "stopped") addNote("stopped");
  } else {
    // Nothing usable: keep the turn out of the history and give the text back for a retry.
    turn.userBubble.classList.add("failed");
    if (!hasText) turn.bubble.remove();
    if (outcome.kind === "stopped") addNote("stopped before the first token");
    if (outcome.kind === "error") showError(outcome.error);
    if ($("prompt").value === "") $("prompt").value = turn.userText;
  }
  $("prompt").focus();
}

function stopTurn() {
  const turn = chat.turn;
  if (!turn || turn.isStopRequested) return;
  turn.isStopRequested = true;
  turn.stop();
  setTimeout(() => turn.settle({ kind: "stopped" }), STOP_GRACE_MS);
}

// ---- WebSocket transport ----------------------------------------------------------------------

function socketUrl() {
  const url = new URL("/v1/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url;
}

// Browsers cannot set headers on a WebSocket: the key travels as a `bearer.<key>` subprotocol
// (kept out of URLs and logs); the server answers with `triode`, never echoing the key. A key
// that is not a valid subprotocol token makes the constructor throw: SSE then carries it.
function socketProtocols(key) {
  return key ? ["triode", `bearer.${key}`] : ["triode"];
}

// Resolves to an open socket, or null when none can be opened (refused, 401, timeout).
function openSocket(key) {
  return new Promise((resolve) => {
    let socket;
    try {
      socket = new WebSocket(socketUrl(), socketProtocols(key));
    } catch {
      resolve(null);
      return;
    }
    const fail = () => {
      clearTimeout(timer);
      socket.onopen = socket.onerror = socket.onclose = null;
      socket.close();
      resolve(null);
    };
    const timer = setTimeout(fail, WS_CONNECT_TIMEOUT_MS);
    socket.onerror = fail;
    socket.onclose = fail;
    socket.onopen = () => {
      clearTimeout(timer);
      socket.onerror = null;
      socket.onmessage = onSocketMessage;
      socket.onclose = (event) => onSocketClosed(socket, event);
      resolve(socket);
    };
  });
}

async function connectedSocket() {
  const key = apiKey();
  const current = chat.socket;
  if (current && current.readyState === WebSocket.OPEN && chat.socketKey === key) return current;
  if (current) current.close();
  chat.socket = await openSocket(key);
  chat.socketKey = key;
  return chat.socket;
}

function onSocketMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return;  // not ours to show: the server only sends JSON
  }
  const turn = chat.turn;
  // `id: null` errors are about a message that started nothing: ours, if a turn is waiting.
  if (!turn || (message.id !== turn.id && message.id !== null)) return;
  if (message.type === "chunk") handleChunk(turn, message.chunk);
  else if (message.type === "done")
    turn.settle({ kind: message.cancelled ? "stopped" : "done", usage: message.usage });
  else if (message.type === "error") turn.settle({ kind: "error", error: message.error });
}

function onSocketClosed(socket, event) {
  if (chat.socket === socket) chat.socket = null;
  const turn = chat.turn;
  if (turn && turn.socket === socket) {
    const message =
      event.code === 1001
        ? "the server is shutting down"
        : `the connection to the server closed (code ${event.code})`;
    turn.settle({ kind: "error", error: { message, code: "connection_closed" } });
  }
}

function streamOverWebSocket(turn, socket, body) {
  return new Promise((resolve) => {
    turn.socket = socket;
    turn.settle = once(resolve);
    turn.stop = () => socket.send(JSON.stringify({ type: "cancel", id: turn.id }));
    turn.sentAt = performance.now();
    socket.send(JSON.stringify({ type: "chat.completion", id: turn.id, request: body }));
  });
}

// ---- SSE transport (fetch streaming) ----------------------------------------------------------

async function errorFromResponse(response) {
  const error = { status: response.status, message: response.statusText };
  try {
    Object.assign(error, (await response.json()).error);
  } catch {
    // not an OpenAI error body (a proxy's page?): the status line is all there is
  }
  error.retryAfter = response.headers.get("Retry-After");
  return error;
}

// Calls onData with the data of each event; returns true once `[DONE]` arrives.
async function readEvents(reader, onData) {
  const decoder = new TextDecoder();
  let buffer = "";
  let dataLines = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();  // an incomplete last line waits for more bytes
    for (const line of lines) {
      if (line.startsWith("data:")) {
        dataLines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } else if (line === "" && dataLines.length) {  // a blank line ends an event
        const data = dataLines.join("\n");
        dataLines = [];
        if (data === "[DONE]") return true;
        onData(data);
      }
    }
  }
}

async function streamOverSse(turn, body) {
  const aborter = new AbortController();
  let outcome = null;
  const settled = new Promise((resolve) => (turn.settle = once(resolve)));
  // Closing the connection is how an SSE client cancels: the server aborts on disconnect.
  turn.stop = () => aborter.abort();
  const headers = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const run = async () => {
    turn.sentAt = performance.now();
    let response;
    try {
      response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: aborter.signal,
      });
    } catch (err) {
      if (aborter.signal.aborted) throw err;
      return { kind: "error", error: { message: `could not reach the server (${err.message})` } };
    }
    if (!response.ok) return { kind: "error", error: await errorFromResponse(response) };
    const reader = response.body.getReader();
    const isDone = await readEvents(reader, (data) => {
      const chunk = JSON.parse(data);
      // An error after the stream began arrives as a chunk holding only `error`.
      if (chunk.error) outcome = { kind: "error", error: chunk.error };
      else handleChunk(turn, chunk);
    });
    if (outcome) return outcome;
    if (isDone) return { kind: "done" };
    return { kind: "error", error: { message: "the stream ended before [DONE]" } };
  };
  run().then(turn.settle, (err) => {
    if (aborter.signal.aborted) turn.settle({ kind: "stopped" });
    else turn.settle({ kind: "error", error: { message: `the stream broke (${err.message})` } });
  });
  return settled;
}

// ---- sending ----------------------------------------------------------------------------------

function once(fn) {
  let isCalled = false;
  return (value) => {
    if (isCalled) return;
    isCalled = true;
    fn(value);
  };
}

function forcedTransport() {
  const value = new URLSearchParams(location.search).get("transport");
  return value === "ws" || value === "sse" ? value : null;
}

function showTransport(text) {
  $("transport").textContent = text;
}

async function send() {
  const text = $("prompt").value;
  if (chat.turn || text.trim() === "") return;
  $("prompt").value = "";
  const body = buildRequest(requestMessages(text));
  const turn = startTurn(text);
  const forced = forcedTransport();
  const socket = forced === "sse" ? null : await connectedSocket();
  let outcome;
  if (turn.isStopRequested) {
    outcome = { kind: "stopped" };  // stopped while the socket was still connecting
  } else if (socket) {
    showTransport("via WebSocket");
    outcome = await streamOverWebSocket(turn, socket, body);
  } else if (forced === "ws") {
    outcome = { kind: "error", error: { message: "the WebSocket could not connect" } };
  } else {
    showTransport(forced ? "via SSE" : "via SSE (WebSocket unavailable)");
    outcome = await streamOverSse(turn, body);
  }
  finishTurn(turn, outcome);
}

function newChat() {
  if (chat.turn) {
    chat.turn.isDiscarded = true;
    stopTurn();
  }
  chat.history = [];
  for (const node of [...$("conversation").children]) {
    if (node.id !== "empty-hint") node.remove();
  }
  $("empty-hint").hidden = false;
  resetStats();
  $("prompt").focus();
}

// ---- model name -------------------------------------------------------------------------------

async function showModel() {
  const key = apiKey();
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
    $("model").textContent = "";  // a reply will show the real problem, if there is one
  }
}

// ---- wiring -----------------------------------------------------------------------------------

function onPromptKey(event) {
  // Enter sends; Shift+Enter inserts a line; Enter that confirms an IME composition does neither.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
}

function init() {
  loadSettings();
  for (const id of Object.values(SETTING_INPUTS)) $(id).addEventListener("change", saveSettings);
  $("api-key").addEventListener("change", showModel);
  // Enter in a settings field must not submit (and reload) the page.
  $("settings-form").addEventListener("submit", (event) => event.preventDefault());
  // Settings start open beside the conversation on wide screens, folded away on phones.
  const wide = window.matchMedia("(min-width: 761px)");
  $("settings").open = wide.matches;
  wide.addEventListener("change", (event) => ($("settings").open = event.matches));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", onPromptKey);
  $("stop").addEventListener("click", stopTurn);
  $("new-chat").addEventListener("click", newChat);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") stopTurn();
  });
  showModel();
  $("prompt").focus();
}

init();
