// How a turn reaches the server: the WebSocket API (/v1/ws), or Server-Sent Events over fetch
// (POST /v1/chat/completions, stream: true) when the socket cannot connect. `?transport=sse` or
// `?transport=ws` forces one.
//
// streamTurn(turn, body, apiKey) resolves to an outcome {kind: "done" | "stopped" | "error",
// usage?, error?} and calls turn.onChunk(chunk) for every chunk object (the same shape over both
// transports). It sets turn.stop(), which cancels on the server (a `cancel` message, or closing
// the SSE connection), and turn.settle(outcome), which ends the turn.

const WS_CONNECT_TIMEOUT_MS = 3000;

const connection = {
  socket: null, // the open WebSocket, reused across turns
  key: null, // the API key `socket` was opened with
  turn: null, // the turn streaming over it, if any
};

export function once(fn) {
  let isCalled = false;
  return (value) => {
    if (isCalled) return;
    isCalled = true;
    fn(value);
  };
}

export function forcedTransport() {
  const value = new URLSearchParams(location.search).get("transport");
  return value === "ws" || value === "sse" ? value : null;
}

// ---- WebSocket ---------------------------------------------------------------------------------

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

async function connectedSocket(key) {
  const current = connection.socket;
  if (current && current.readyState === WebSocket.OPEN && connection.key === key) return current;
  if (current) current.close();
  connection.socket = await openSocket(key);
  connection.key = key;
  return connection.socket;
}

function onSocketMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return; // not ours to show: the server only sends JSON
  }
  const turn = connection.turn;
  // `id: null` errors are about a message that started nothing: ours, if a turn is waiting.
  if (!turn || (message.id !== turn.id && message.id !== null)) return;
  if (message.type === "chunk") turn.onChunk(message.chunk);
  else if (message.type === "done")
    turn.settle({ kind: message.cancelled ? "stopped" : "done", usage: message.usage });
  else if (message.type === "error") turn.settle({ kind: "error", error: message.error });
}

function onSocketClosed(socket, event) {
  if (connection.socket === socket) connection.socket = null;
  const turn = connection.turn;
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
    connection.turn = turn;
    turn.settle = once((outcome) => {
      if (connection.turn === turn) connection.turn = null;
      resolve(outcome);
    });
    turn.stop = () => socket.send(JSON.stringify({ type: "cancel", id: turn.id }));
    turn.sentAt = performance.now();
    socket.send(JSON.stringify({ type: "chat.completion", id: turn.id, request: body }));
  });
}

// ---- SSE (fetch streaming) ---------------------------------------------------------------------

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
    buffer = lines.pop(); // an incomplete last line waits for more bytes
    for (const line of lines) {
      if (line.startsWith("data:")) {
        dataLines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } else if (line === "" && dataLines.length) {
        // a blank line ends an event
        const data = dataLines.join("\n");
        dataLines = [];
        if (data === "[DONE]") return true;
        onData(data);
      }
    }
  }
}

async function streamOverSse(turn, body, key) {
  const aborter = new AbortController();
  let outcome = null;
  const settled = new Promise((resolve) => (turn.settle = once(resolve)));
  // Closing the connection is how an SSE client cancels: the server aborts on disconnect.
  turn.stop = () => aborter.abort();
  const headers = { "Content-Type": "application/json" };
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
      else turn.onChunk(chunk);
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

// ---- one turn ----------------------------------------------------------------------------------

// Streams `body` for `turn`; `showTransport(text)` says which transport carried it.
export async function streamTurn(turn, body, key, showTransport) {
  const forced = forcedTransport();
  const socket = forced === "sse" ? null : await connectedSocket(key);
  if (turn.isStopRequested) return { kind: "stopped" }; // stopped while the socket connected
  if (socket) {
    showTransport("via WebSocket");
    return streamOverWebSocket(turn, socket, body);
  }
  if (forced === "ws") return { kind: "error", error: { message: "the WebSocket could not connect" } };
  showTransport(forced ? "via SSE" : "via SSE (WebSocket unavailable)");
  return streamOverSse(turn, body, key);
}
