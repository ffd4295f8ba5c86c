// How a turn reaches the server: the WebSocket API (/v1/ws, socket.js), or Server-Sent Events
// over fetch (sse.js) when the socket cannot connect. `?transport=sse` or `?transport=ws` forces
// one.
//
// Every turn asks for a resumable stream (`resumable: true`; README "Resumable streams"), so a
// dropped connection loses nothing: the page reconnects with backoff and resumes after the last
// chunk it showed, over the transport that carried the turn, until the server's window for the
// stream has passed. A server that turns resumable streams off (400 naming `resumable`) gets
// plain streams from then on. `?resume_window_s=N` asks the server to hold a dropped reply N
// seconds (its default: 30).
//
// streamTurn(turn, body, key, hooks) resolves to an outcome {kind: "done" | "stopped" | "error",
// usage?, error?, isInterrupted?} (isInterrupted: the connection dropped and the reply could not
// be resumed) and calls turn.onChunk(chunk) for every chunk (the same shape over both
// transports). It keeps turn.stop(), which stops the generation on the server, and
// turn.settle(outcome), which ends the current leg. hooks: showTransport(text),
// onReconnecting(attempt), onResumed().

import { cancelStream } from "./legs.js";
import { connectedSocket, resumeOverWebSocket, startOverWebSocket } from "./socket.js";
import { resumeOverSse, startOverSse } from "./sse.js";

const DEFAULT_RESUME_WINDOW_S = 30;
// Attempts go on this long past the window: the server's clock starts when it notices the drop,
// and its answer (404 once the stream expired) is better than a guess.
const GIVE_UP_GRACE_MS = 10000;
const FIRST_RETRY_DELAY_MS = 250;
const MAX_RETRY_DELAY_MS = 4000;

const WEB_SOCKET = { start: startOverWebSocket, resume: resumeOverWebSocket };
const SSE = { start: startOverSse, resume: resumeOverSse };

let isResumeRefused = false; // this server turned resumable streams off: plain ones from now on

function forcedTransport() {
  const value = new URLSearchParams(location.search).get("transport");
  return value === "ws" || value === "sse" ? value : null;
}

// The window the page asks for (`?resume_window_s=`), or null for the server's default.
function requestedWindowS() {
  const value = Number(new URLSearchParams(location.search).get("resume_window_s"));
  return Number.isFinite(value) && value > 0 ? value : null;
}

function resumableBody(body) {
  if (isResumeRefused) return body;
  const window = requestedWindowS();
  return { ...body, resumable: true, ...(window ? { resume_window_s: window } : {}) };
}

function isResumeRefusal(outcome) {
  const param = outcome.kind === "error" ? outcome.error?.param : null;
  return param === "resumable" || param === "resume_window_s";
}

// Waits `ms` (less if the browser comes back online); a stop ends the wait.
function pause(turn, ms) {
  return new Promise((resolve) => {
    const wake = () => turn.settle({ kind: "dropped" });
    const timer = setTimeout(wake, ms);
    addEventListener("online", wake);
    let isSettled = false;
    turn.settle = (outcome) => {
      if (isSettled) return;
      isSettled = true;
      clearTimeout(timer);
      removeEventListener("online", wake);
      resolve(outcome);
    };
    turn.stop = () => turn.settle({ kind: "stopped" });
  });
}

// Carries on after dropped legs until the stream ends, the user stops, or it cannot resume.
async function resumeAfterDrops(turn, transport, outcome, key, hooks) {
  const giveUpMs = (requestedWindowS() ?? DEFAULT_RESUME_WINDOW_S) * 1000 + GIVE_UP_GRACE_MS;
  let attempt = 0; // attempts since the last drop
  let droppedAt = 0;
  let hasDropped = false;
  const onResumed = () => {
    attempt = 0;
    hooks.onResumed();
  };
  while (outcome.kind === "dropped") {
    hasDropped = true;
    if (turn.isStopRequested) {
      // Stopped while no connection carried the turn: stop it on the server all the same.
      if (turn.streamId) cancelStream(turn.streamId, key);
      return { kind: "stopped" };
    }
    if (!turn.streamId || outcome.isFinal) {
      return { kind: "error", error: outcome.error, isInterrupted: true };
    }
    if (attempt === 0) droppedAt = performance.now();
    else if (performance.now() - droppedAt > giveUpMs) {
      const message = `could not reconnect within ${giveUpMs / 1000} s (${outcome.error?.message})`;
      return { kind: "error", error: { message, code: "connection_lost" }, isInterrupted: true };
    }
    attempt += 1;
    hooks.onReconnecting(attempt);
    const delay = Math.min(FIRST_RETRY_DELAY_MS * 2 ** (attempt - 1), MAX_RETRY_DELAY_MS);
    const waited = await pause(turn, delay);
    if (waited.kind === "stopped") continue; // the loop's first check cancels it
    const previous = outcome;
    outcome = await transport.resume(turn, key, onResumed);
    if (outcome.kind === "dropped" && !outcome.error) outcome.error = previous.error;
  }
  // A refused resumption (an expired or unknown stream) or an error that stopped the stream
  // after the drop ends the reply where it was cut off.
  if (hasDropped && outcome.kind === "error") outcome.isInterrupted = true;
  return outcome;
}

export async function streamTurn(turn, body, key, hooks) {
  const forced = forcedTransport();
  const socket = forced === "sse" ? null : await connectedSocket(key);
  if (turn.isStopRequested) return { kind: "stopped" }; // stopped while the socket connected
  let transport = SSE;
  if (socket) {
    hooks.showTransport("via WebSocket");
    transport = WEB_SOCKET;
  } else if (forced === "ws") {
    return { kind: "error", error: { message: "the WebSocket could not connect" } };
  } else {
    hooks.showTransport(forced ? "via SSE" : "via SSE (WebSocket unavailable)");
  }
  let outcome = await transport.start(turn, resumableBody(body), key);
  if (isResumeRefusal(outcome) && !isResumeRefused) {
    isResumeRefused = true;
    outcome = await transport.start(turn, body, key);
  }
  return resumeAfterDrops(turn, transport, outcome, key, hooks);
}
