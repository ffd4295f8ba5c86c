// What the two transports share. A turn is carried by one or more *legs*: the request itself,
// then, after a dropped connection, resumptions of the same resumable stream (socket.js and
// sse.js each start and resume legs). A leg resolves to an outcome:
//
//   {kind: "done", usage?}         the stream ended normally
//   {kind: "stopped"}              the user stopped it
//   {kind: "error", error}         the server ended it with an OpenAI error object
//   {kind: "dropped", error, isFinal?}
//                                  the connection was lost (or could not be made) before the end;
//                                  transport.js resumes unless isFinal or it cannot
//
// Resumable streams number their chunks (`seq` on the WebSocket, `id:` in SSE) and the chunks'
// `id` is the stream's id: the turn keeps both, so a resumption asks for exactly what it has not
// shown.

export function once(fn) {
  let isCalled = false;
  return (value) => {
    if (isCalled) return;
    isCalled = true;
    fn(value);
  };
}

export function authHeaders(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// A chunk of the turn's stream, numbered `seq` (undefined on a plain stream): the turn notes
// where it is, for a resumption to start right after it.
// NOTE: no filtering of repeated chunks here: the server replays exactly what follows `after`
// (tests/web/test_resumable.py), and a page that asked for the wrong place should show it.
export function acceptChunk(turn, seq, chunk) {
  if (Number.isInteger(seq)) {
    turn.lastSeq = seq;
    if (!turn.streamId && typeof chunk.id === "string") turn.streamId = chunk.id;
  }
  turn.onChunk(chunk);
}

// Refusals of a resumption worth another try later (a busy server), as opposed to an answer
// (an unknown or expired stream, a sequence number it does not have).
const RETRYABLE_CODES = new Set(["server_overloaded", "too_many_generations"]);
const RETRYABLE_STATUSES = new Set([429, 502, 503, 504]);

export function isRetryable(error) {
  return RETRYABLE_CODES.has(error?.code) || RETRYABLE_STATUSES.has(error?.status);
}

// Stops a resumable stream for every reader (DELETE /v1/streams/{id}): how a stop reaches a
// generation that no open connection carries. Best effort; `keepalive` lets it outlive the page.
export function cancelStream(streamId, key) {
  fetch(`/v1/streams/${encodeURIComponent(streamId)}`, {
    method: "DELETE",
    headers: authHeaders(key),
    keepalive: true,
  }).catch(() => {});
}
