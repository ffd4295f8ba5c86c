// Drives a triode server with the real Vercel AI SDK (`ai`), as a useChat frontend would:
// an AbstractChat (useChat's engine, without React) over DefaultChatTransport (HTTP + SSE) or
// WebSocketChatTransport. Prints one JSON line with what happened; tests/web/test_ai_sdk.py
// checks it against the server.
//
//   node ai_sdk_chat.mjs SCENARIO TRANSPORT BASE_URL API_KEY PROMPT BODY_JSON
//
// SCENARIO: chat (one turn), abort (stop after the first text), resume (the connection drops
// after a few chunks; resumeStream() completes the message). TRANSPORT: http or ws.

import { AbstractChat, DefaultChatTransport, WebSocketChatTransport } from 'ai';

const [scenario, transportKind, baseUrl, apiKey, prompt, bodyJson] = process.argv.slice(2);
const body = JSON.parse(bodyJson);

class ArrayState {
  constructor() {
    this.status = 'ready';
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new ArrayState() });
  }
}

// Text parts seen so far, and a way to wait for the n-th one.
let numTextDeltas = 0;
const waiters = [];
function countChunk(chunk) {
  if (chunk.type === 'text-delta') {
    numTextDeltas += 1;
    for (const waiter of waiters.filter(w => numTextDeltas >= w.n)) waiter.resolve();
  }
}
function textDeltas(n) {
  return new Promise(resolve => waiters.push({ n, resolve }));
}

// The HTTP drop: a fetch whose response body is cut (and its connection closed) on demand.
let dropConnection = () => {};
async function droppableFetch(url, init) {
  const controller = new AbortController();
  init?.signal?.addEventListener('abort', () => controller.abort(init.signal.reason));
  const response = await fetch(url, { ...init, signal: controller.signal });
  if (init?.method === 'POST') {
    dropConnection = () => controller.abort(new TypeError('network connection lost'));
  }
  return response;
}

function counting(stream) {
  return stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        countChunk(chunk);
        controller.enqueue(chunk);
      },
    }),
  );
}

function makeTransport() {
  if (transportKind === 'http') {
    const transport = new DefaultChatTransport({
      api: `${baseUrl}/v1/ai-sdk/chat`,
      headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
      body,
      fetch: droppableFetch,
    });
    return wrap(transport, () => dropConnection());
  }
  const transport = new WebSocketChatTransport({
    url: `${baseUrl.replace(/^http/, 'ws')}/v1/ai-sdk/ws`,
    params: apiKey ? { api_key: apiKey } : {},
    body,
  });
  return wrap(transport, () => transport.close());
}

// The transport, with every chunk counted on its way to the chat.
function wrap(transport, drop) {
  return {
    resumeStreamIsReplay: transport.resumeStreamIsReplay,
    drop,
    close: () => transport.close?.(),
    sendMessages: async options => counting(await transport.sendMessages(options)),
    reconnectToStream: async options => {
      const stream = await transport.reconnectToStream(options);
      return stream && counting(stream);
    },
  };
}

const transport = makeTransport();
const errors = [];
let finished = null;
const chat = new Chat({
  id: `chat-${scenario}-${transportKind}-${Date.now()}`,
  transport,
  onError: error => errors.push(String(error?.message ?? error)),
  onFinish: ({ message, isAbort, isDisconnect, isError }) => {
    finished = { isAbort, isDisconnect, isError, messageId: message.id };
  },
});

function assistantText() {
  const last = chat.messages.at(-1);
  if (!last || last.role !== 'assistant') return null;
  return last.parts.filter(p => p.type === 'text').map(p => p.text).join('');
}

const result = { scenario, transport: transportKind };
const sent = chat.sendMessage({ text: prompt });
// Waits for a number of text deltas, or for the turn to end without them (an error).
const deltasOrEnd = n => Promise.race([textDeltas(n), sent]);
if (scenario === 'abort') {
  await deltasOrEnd(1);
  await chat.stop();
  await sent;
} else if (scenario === 'resume') {
  await deltasOrEnd(3);
  transport.drop();
  await sent;
  result.statusAfterDrop = chat.status;
  result.textAfterDrop = assistantText();
  await new Promise(resolve => setTimeout(resolve, 1000));
  await chat.resumeStream();
} else {
  await sent;
}
result.status = chat.status;
result.text = assistantText();
result.messageId = chat.messages.at(-1)?.id;
result.numMessages = chat.messages.length;
result.errors = errors;
result.finished = finished;
transport.close();
console.log(JSON.stringify(result));
process.exit(0);
