// Server-Sent Events over fetch: POST /v1/chat/completions with `stream: true` starts a turn;
// after a drop, GET /v1/streams/{id} with `Last-Event-ID` resumes it (the events of a resumable
// stream carry `id:` lines, their sequence numbers).
//
// Stopping: closing the connection aborts a plain stream on the server, but only detaches from
// a resumable one, so a stop also sends DELETE /v1/streams/{id}. Stopped before the first event
// (whose `id:` says whether the stream is resumable), the leg reads on in the background until
// that event, then cancels accordingly.

import { acceptChunk, authHeaders, cancelStream, isRetryable, once } from "./legs.js";

// How long a stopped leg may keep reading in the background to learn its stream's id.
const STOP_CLEANUP_MS = 30000;

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

// Calls onEvent(data, id) for each event (`id` null when the event has no `id:` line); returns
// true once `[DONE]` arrives, false when the body ends first.
async function readEvents(reader, onEvent) {
  const decoder = new TextDecoder();
  let buffer = "";
  let dataLines = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop(); // an incomplete last line waits for more bytes
    for (const line of lines) {
      if (line.startsWith("data:")) {
        dataLines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } else if (line.startsWith("id:")) {
        id = line.slice(line.startsWith("id: ") ? 4 : 3);
      } else if (line === "" && dataLines.length) {
        // a blank line ends an event
        const data = dataLines.join("\n");
        dataLines = [];
        const eventId = id;
        id = null;
        if (data === "[DONE]") return true;
        onEvent(data, eventId);
      }
    }
  }
}

function dropped(message) {
  return { kind: "dropped", error: { message, code: "connection_closed" } };
}

// One leg: fetch(url, init), then its events; `onAccepted` runs once the server answers 200.
function readLeg(turn, key, url, init, { isResume, onAccepted }) {
  const aborter = new AbortController();
  let isSettled = false;
  const settled = new Promise((resolve) => {
    turn.settle = once((outcome) => {
      isSettled = true;
      resolve(outcome);
    });
  });
  let sawEvent = false; // an event arrived: the stream is known to be plain or resumable
  let isCancelPending = false; // stopped before the first event: cancel once it says how
  const cancel = () => {
    if (turn.streamId) cancelStream(turn.streamId, key);
    aborter.abort();
  };
  turn.stop = () => {
    turn.settle({ kind: "stopped" }); // the page is free at once; cleaning up goes on below
    if (sawEvent || isResume) {
      cancel();
    } else {
      isCancelPending = true;
      setTimeout(() => aborter.abort(), STOP_CLEANUP_MS);
    }
  };
  const run = async () => {
    const response = await fetch(url, { ...init, signal: aborter.signal }).catch((err) => {
      if (aborter.signal.aborted) return null;
      turn.settle(dropped(`could not reach the server (${err.message})`));
      return null;
    });
    if (!response) return;
    if (!response.ok) {
      const error = await errorFromResponse(response);
      const isWorthRetrying = isResume && isRetryable(error);
      turn.settle(isWorthRetrying ? dropped(error.message) : { kind: "error", error });
      return;
    }
    onAccepted();
    let outcome = null;
    const isDone = await readEvents(response.body.getReader(), (data, id) => {
      const chunk = JSON.parse(data);
      sawEvent = true;
      if (isCancelPending) {
        // Stopped before this first event: its `id:` says whether a stream needs cancelling.
        isCancelPending = false;
        if (id !== null && typeof chunk.id === "string") turn.streamId ??= chunk.id;
        cancel();
      }
      if (isSettled) return; // stopped: nothing more is shown
      // An error after the stream began arrives as a chunk holding only `error`.
      if (chunk.error) outcome = { kind: "error", error: chunk.error };
      else acceptChunk(turn, id === null ? undefined : Number(id), chunk);
    });
    if (outcome) turn.settle(outcome);
    else if (isDone) turn.settle({ kind: "done" });
    else turn.settle(dropped("the stream ended before [DONE]"));
  };
  run().catch((err) => {
    if (!aborter.signal.aborted) turn.settle(dropped(`the stream broke (${err.message})`));
  });
  return settled;
}

export function startOverSse(turn, body, key) {
  turn.sentAt = performance.now();
  const init = {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders(key) },
    body: JSON.stringify(body),
  };
  const options = { isResume: false, onAccepted: () => {} };
  return readLeg(turn, key, "/v1/chat/completions", init, options);
}

// Follows the turn's stream from after the last chunk shown.
export function resumeOverSse(turn, key, onResumed) {
  const url = `/v1/streams/${encodeURIComponent(turn.streamId)}`;
  const init = { headers: { "Last-Event-ID": String(turn.lastSeq), ...authHeaders(key) } };
  return readLeg(turn, key, url, init, { isResume: true, onAccepted: onResumed });
}
