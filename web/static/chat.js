// triode chat page: conversations kept in the browser, replies streamed and rendered as markdown
// as they arrive. transport.js carries a turn (WebSocket, or SSE as a fallback), markdown.js
// renders and sanitizes model text, store.js keeps the conversations, view.js draws them.
//
// A turn is one request: a new question, a regenerated last reply, an edited question asked
// again, or a reply continued after it stopped at the token limit. A finished turn (or one the
// user stopped after some text, or one cut off by a connection that could not be resumed) is
// stored; a failed one changes nothing stored. A dropped connection is resumed by transport.js
// while a status line says so.

import { codeOfCopyButton, renderMarkdown } from "./markdown.js";
import { loadSettings, requestBody, showModel, watchSettings } from "./settings.js";
import { ConversationStore } from "./store.js";
import { streamTurn } from "./transport.js";
import {
  $,
  FINISH_NEWS,
  addNote,
  announce,
  assistantMessage,
  clearConversation,
  copyFrom,
  hideConnectionStatus,
  isScrolledToBottom,
  renderConversationList,
  resetStats,
  showEditor,
  showError,
  showReconnecting,
  showResumed,
  startRename,
  updateStats,
  userMessage,
} from "./view.js";

// A cancel the server never answers (a dead socket) still frees the page after this long.
const STOP_GRACE_MS = 5000;

const store = new ConversationStore();
const chat = {
  conversation: null, // the conversation on screen (store.current(), or a new empty one)
  turn: null, // the turn in progress, or null
  numTurns: 0,
};

// ---- drawing -----------------------------------------------------------------------------------

function renderConversation() {
  clearConversation();
  const messages = chat.conversation.messages;
  const last = messages.length - 1;
  messages.forEach((message, index) => {
    if (message.role === "user") userMessage(message.content, index);
    else assistantMessage(message.content, index, { finish: message.finish, isLast: index === last });
  });
}

function renderList() {
  renderConversationList(store.list(), chat.conversation?.id);
  if (store.saveError) {
    $("storage-note").hidden = false;
    $("storage-note").textContent = `Not saved: ${store.saveError.message}`;
  }
}

function show(conversation) {
  chat.conversation = conversation;
  renderConversation();
  renderList();
}

// Another conversation on screen: the last reply's figures no longer apply.
function switchTo(conversation) {
  discardTurn();
  show(conversation);
  resetStats();
}

function setBusy(isBusy) {
  document.body.dataset.state = isBusy ? "streaming" : "idle";
  $("send").disabled = isBusy;
  $("stop").disabled = !isBusy;
  for (const element of document.querySelectorAll("#conversation [data-action]")) {
    element.disabled = isBusy;
  }
}

// ---- one turn ----------------------------------------------------------------------------------

// plan: {messages (the conversation to send), bubble (the assistant element to stream into),
// prefix (text already in it: Continue), extra (more body fields), onStored(text, finish),
// onFailed(outcome)}.
async function runTurn(plan) {
  chat.numTurns += 1;
  const turn = {
    id: `chat-${chat.numTurns}`,
    plan,
    content: plan.bubble.querySelector(".content"),
    text: "",
    finishReason: null,
    numTextChunks: 0,
    usage: null,
    sentAt: NaN,
    firstAt: NaN,
    lastAt: NaN,
    isRenderPending: false,
    isStopRequested: false,
    isDiscarded: false, // "New chat" or another conversation during the reply: drop it
    streamId: null, // the resumable stream carrying the reply, once its first chunk says so
    lastSeq: -1, // the sequence number of the last chunk shown
    stop: () => {},
    settle: () => {},
  };
  turn.onChunk = (chunk) => onChunk(turn, chunk);
  chat.turn = turn;
  resetStats();
  setBusy(true);
  announce("Replying…");
  const body = requestBody(plan.messages, plan.extra);
  const outcome = await streamTurn(turn, body, $("api-key").value.trim(), {
    showTransport: (text) => ($("transport").textContent = text),
    onReconnecting: showReconnecting,
    onResumed: showResumed,
  });
  finishTurn(turn, outcome);
}

function onChunk(turn, chunk) {
  if (chunk.usage) turn.usage = chunk.usage;
  const choice = chunk.choices?.[0];
  if (choice?.finish_reason) turn.finishReason = choice.finish_reason;
  const text = choice?.delta?.content;
  if (!text) return;
  const now = performance.now();
  if (!Number.isFinite(turn.firstAt)) turn.firstAt = now;
  turn.lastAt = now;
  turn.numTextChunks += 1;
  turn.text += text;
  updateStats(turn);
  // Markdown is re-rendered at most once per painted frame, however fast chunks arrive.
  if (turn.isRenderPending) return;
  turn.isRenderPending = true;
  requestAnimationFrame(() => {
    turn.isRenderPending = false;
    if (turn.isDiscarded) return;
    const stick = isScrolledToBottom();
    renderMarkdown(turn.content, turn.plan.prefix + turn.text);
    if (stick) turn.plan.bubble.scrollIntoView({ block: "end" });
  });
}

// outcome: {kind: "done" | "stopped" | "error", usage?, error?}
function finishTurn(turn, outcome) {
  chat.turn = null;
  setBusy(false);
  hideConnectionStatus();
  if (outcome.usage) turn.usage = outcome.usage;
  if (turn.isDiscarded) return;
  updateStats(turn);
  const hasText = turn.text.length > 0;
  const isInterrupted = outcome.kind === "error" && outcome.isInterrupted && hasText;
  if (outcome.kind === "done" || (outcome.kind === "stopped" && hasText) || isInterrupted) {
    // What the user saw is what the model will see as its own previous turn.
    const finish = isInterrupted
      ? "interrupted"
      : outcome.kind === "stopped"
        ? "stopped"
        : turn.finishReason || "stop";
    turn.plan.onStored(turn.text, finish);
    show(chat.conversation);
    const news = FINISH_NEWS[finish] ?? "Reply finished.";
    announce(isInterrupted ? `${news}: ${outcome.error?.message}` : news);
  } else {
    renderConversation(); // nothing stored changed
    turn.plan.onFailed?.(outcome);
    if (outcome.kind === "stopped") addNote("Stopped before the first token.");
    if (outcome.kind === "error") showError(outcome.error);
    announce(outcome.kind === "error" ? "The reply failed." : "Reply stopped.");
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

function discardTurn() {
  if (!chat.turn) return;
  chat.turn.isDiscarded = true;
  stopTurn();
}

// ---- what starts a turn ------------------------------------------------------------------------

function currentConversation() {
  if (!chat.conversation) chat.conversation = store.create();
  return chat.conversation;
}

// A new question, or an edited one replacing the messages from `fromIndex` on.
function ask(text, fromIndex = null) {
  const conversation = currentConversation();
  const kept = fromIndex === null ? conversation.messages : conversation.messages.slice(0, fromIndex);
  if (fromIndex !== null) {
    clearConversation();
    kept.forEach((m, i) =>
      m.role === "user" ? userMessage(m.content, i) : assistantMessage(m.content, i, m),
    );
  }
  userMessage(text);
  const bubble = assistantMessage("");
  runTurn({
    messages: [...kept, { role: "user", content: text }],
    bubble,
    prefix: "",
    onStored: (reply, finish) => {
      if (fromIndex !== null) store.truncate(conversation, fromIndex);
      store.addMessages(conversation, [
        { role: "user", content: text },
        { role: "assistant", content: reply, finish },
      ]);
    },
    onFailed: () => {
      // Keep the turn out of the history and give the text back for a retry.
      userMessage(text).classList.add("failed");
      if ($("prompt").value === "") $("prompt").value = text;
    },
  });
}

function regenerate() {
  const conversation = chat.conversation;
  const last = conversation.messages.length - 1;
  if (conversation.messages[last]?.role !== "assistant") return;
  const kept = conversation.messages.slice(0, last);
  const bubble = document.querySelector(`#conversation .message[data-index="${last}"]`);
  const fresh = assistantMessage("");
  bubble.replaceWith(fresh);
  runTurn({
    messages: kept,
    bubble: fresh,
    prefix: "",
    onStored: (reply, finish) => {
      store.truncate(conversation, last);
      store.addMessages(conversation, [{ role: "assistant", content: reply, finish }]);
    },
  });
}

// Continue a reply that stopped at the token limit (or was cut off by a connection that could
// not be resumed), in the same message: the conversation is sent ending with that partial reply,
// for the server to carry on from (vLLM's `continue_final_message`; the chat template then
// leaves the reply open).
function continueReply() {
  const conversation = chat.conversation;
  const last = conversation.messages.length - 1;
  const message = conversation.messages[last];
  if (message?.role !== "assistant") return;
  const bubble = document.querySelector(`#conversation .message[data-index="${last}"]`);
  const live = assistantMessage(message.content);
  bubble.replaceWith(live);
  runTurn({
    messages: conversation.messages,
    bubble: live,
    prefix: message.content,
    extra: { add_generation_prompt: false, continue_final_message: true },
    onStored: (more, finish) => {
      message.content += more;
      message.finish = finish;
      store.touch(conversation);
    },
  });
}

function send() {
  const text = $("prompt").value;
  if (chat.turn || text.trim() === "") return;
  $("prompt").value = "";
  ask(text);
}

// Edit a question in place: its text in a box, then ask again from there (later messages go).
function startEdit(article) {
  const index = Number(article.dataset.index);
  const close = () => {
    renderConversation();
    const selector = `#conversation .message[data-index="${index}"] [data-action="edit"]`;
    document.querySelector(selector)?.focus();
  };
  showEditor(article, chat.conversation.messages[index].content, {
    onSend: (text) => {
      if (!chat.turn && text.trim() !== "") ask(text, index);
    },
    onCancel: close,
  });
}

// ---- buttons in the conversation and the list --------------------------------------------------

function onConversationClick(event) {
  const button = event.target.closest("button");
  if (!button || button.disabled) return;
  if (button.classList.contains("copy-code")) {
    copyFrom(button, codeOfCopyButton(button));
    return;
  }
  const article = button.closest(".message");
  const index = Number(article?.dataset.index);
  const action = button.dataset.action;
  if (action === "copy-message") copyFrom(button, chat.conversation.messages[index].content);
  else if (action === "edit") startEdit(article);
  else if (action === "regenerate" && !chat.turn) regenerate();
  else if (action === "continue" && !chat.turn) continueReply();
}

function onListClick(event) {
  const button = event.target.closest("button");
  const item = button?.closest(".conversation-item");
  if (!item) return;
  const { id } = item.dataset;
  const conversation = store.get(id);
  const action = button.dataset.action;
  if (action === "open-conversation") {
    switchTo(store.select(id));
  } else if (action === "rename-conversation") {
    startRename(item, conversation.title, (title) => {
      if (title !== null) store.rename(id, title);
      renderList();
      $("conversation-list").querySelector(`[data-id="${id}"] .title`)?.focus();
    });
  } else if (action === "delete-conversation") {
    if (!confirm(`Delete the conversation “${conversation.title}”?`)) return;
    store.remove(id);
    if (chat.conversation?.id === id) {
      switchTo(store.create());
    } else {
      renderList();
    }
    $("new-chat").focus();
  }
}

function newChat() {
  switchTo(store.create());
  $("prompt").focus();
}

// ---- wiring ------------------------------------------------------------------------------------

function onPromptKey(event) {
  // Enter sends; Shift+Enter inserts a line; Enter that confirms an IME composition does neither.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
}

// Side panels start open beside the conversation on wide screens, folded away on phones.
function foldPanelsByWidth() {
  const wide = window.matchMedia("(min-width: 761px)");
  const apply = (isWide) => {
    $("settings").open = isWide;
    $("history").open = isWide;
  };
  apply(wide.matches);
  wide.addEventListener("change", (event) => apply(event.matches));
}

function init() {
  loadSettings();
  watchSettings(showModel);
  foldPanelsByWidth();
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", onPromptKey);
  $("stop").addEventListener("click", stopTurn);
  $("new-chat").addEventListener("click", newChat);
  $("conversation").addEventListener("click", onConversationClick);
  $("conversation-list").addEventListener("click", onListClick);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") stopTurn();
  });
  // A resumable generation outlives its connection; leaving the page mid-reply stops it.
  addEventListener("pagehide", stopTurn);
  store.onChange(() => {
    // Another tab changed the list; the conversation on screen follows unless it is streaming.
    const same = store.get(chat.conversation?.id);
    if (!chat.turn) show(same ?? store.current() ?? store.create());
    else renderList();
  });
  show(store.current() ?? store.create());
  showModel();
  $("prompt").focus();
}

init();
