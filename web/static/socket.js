// The WebSocket API (/v1/ws): one socket, reused across turns, carries the turn in progress.
// A turn starts with a `chat.completion` message under the turn's id; after a drop it resumes
// on a new socket with `{"type": "resume", "id": STREAM_ID, "after": LAST_SEQ}`, and the
// server's messages then carry the stream's id.

import { acceptChunk, isRetryable, once } from "./legs.js";

const WS_CONNECT_TIMEOUT_MS = 3000;

const connection = {
  socket: null, // the open WebSocket, reused across turns
  key: null, // the API key `socket` was opened with
  turn: null, // the turn streaming over it, if any
};

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

export async function connectedSocket(key) {
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
  if (!turn || (message.id !== turn.wsId && message.id !== null)) return;
  if (message.type === "chunk") {
    turn.onAccepted();
    acceptChunk(turn, message.seq, message.chunk);
  } else if (message.type === "done") {
    turn.onAccepted();
    turn.settle({ kind: message.cancelled ? "stopped" : "done", usage: message.usage });
  } else if (message.type === "error") {
    turn.settle({ kind: "error", error: message.error });
  }
}

function onSocketClosed(socket, event) {
  if (connection.socket === socket) connection.socket = null;
  const turn = connection.turn;
  if (turn && turn.socket === socket) {
    // NOTE: 1001 is the server shutting down: its resumable streams stop with it.
    const isShutdown = event.code === 1001;
    const message = isShutdown
      ? "the server is shutting down"
      : `the connection to the server closed (code ${event.code})`;
    const error = { message, code: "connection_closed" };
    turn.settle({ kind: "dropped", error, isFinal: isShutdown });
  }
}

const couldNotConnect = () => ({
  kind: "dropped",
  error: { message: "the WebSocket could not connect", code: "connection_closed" },
});

// Sends `message` on `socket` and resolves to the leg's outcome; the server's messages for it
// carry `wsId`. `onAccepted` runs at the first chunk or done the server sends for it.
function follow(turn, socket, message, wsId, onAccepted) {
  if (socket.readyState !== WebSocket.OPEN) return Promise.resolve(couldNotConnect());
  return new Promise((resolve) => {
    turn.socket = socket;
    turn.wsId = wsId;
    turn.onAccepted = once(onAccepted);
    connection.turn = turn;
    turn.settle = once((outcome) => {
      if (connection.turn === turn) connection.turn = null;
      resolve(outcome);
    });
    turn.stop = () => {
      if (socket.readyState !== WebSocket.OPEN) return; // the drop's handling cancels it
      socket.send(JSON.stringify({ type: "cancel", id: wsId }));
    };
    socket.send(JSON.stringify(message));
  });
}

export async function startOverWebSocket(turn, body, key) {
  const socket = await connectedSocket(key);
  if (!socket) return couldNotConnect();
  turn.sentAt = performance.now();
  const message = { type: "chat.completion", id: turn.id, request: body };
  return follow(turn, socket, message, turn.id, () => {});
}

// Follows the turn's stream from after the last chunk shown, on an open (or a new) socket.
export async function resumeOverWebSocket(turn, key, onResumed) {
  const socket = await connectedSocket(key);
  if (!socket || turn.isStopRequested) return couldNotConnect();
  const message = { type: "resume", id: turn.streamId, after: turn.lastSeq };
  const outcome = await follow(turn, socket, message, turn.streamId, onResumed);
  // A busy server may take the resumption a little later.
  if (outcome.kind === "error" && isRetryable(outcome.error)) {
    return { kind: "dropped", error: outcome.error };
  }
  return outcome;
}
