// The conversation and the conversation list as DOM: what each message shows, its buttons and
// markers. No state lives here; chat.js decides what to draw and handles the buttons (through
// event delegation on data-action attributes).

import { copyText, renderMarkdown } from "./markdown.js";

export const $ = (id) => document.getElementById(id);

export const FINISH_NOTES = {
  length: "Stopped at the token limit.",
  stopped: "Stopped by you.",
  interrupted: "Cut off: the connection dropped and the reply could not be resumed.",
};
// What screen readers hear when a reply ends (other endings: "Reply finished.").
export const FINISH_NEWS = {
  length: "Reply stopped at the token limit.",
  stopped: "Reply stopped.",
  interrupted: "The connection dropped and the reply could not be resumed",
};
// Replies that end with a Continue action (when they are the last message).
const CONTINUABLE = new Set(["length", "interrupted"]);

function button(action, text, label) {
  const element = document.createElement("button");
  element.type = "button";
  element.dataset.action = action;
  element.textContent = text;
  if (label) element.setAttribute("aria-label", label);
  return element;
}

export function isScrolledToBottom() {
  const view = $("conversation");
  return view.scrollHeight - view.scrollTop - view.clientHeight < 40;
}

export function clearConversation() {
  for (const node of [...$("conversation").children]) {
    if (node.id !== "empty-hint") node.remove();
  }
  $("empty-hint").hidden = false;
}

function append(element) {
  const stick = isScrolledToBottom();
  $("empty-hint").hidden = true;
  $("conversation").append(element);
  if (stick) element.scrollIntoView({ block: "end" });
  return element;
}

// A user message: plain text, exactly as typed (never markdown, never HTML).
export function userMessage(text, index = null) {
  const article = document.createElement("article");
  article.className = "message user";
  article.setAttribute("aria-label", "You");
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  article.append(content);
  if (index !== null) {
    article.dataset.index = String(index);
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(
      button("copy-message", "Copy", "Copy your message"),
      button("edit", "Edit", "Edit your message and ask again"),
    );
    article.append(actions);
  }
  return append(article);
}

// An assistant message: markdown. `options.isLast` adds Regenerate (and Continue after a
// token-limit stop or a connection that could not be resumed); a streaming message (index null) has no buttons yet and is aria-busy, so
// screen readers read it once, when it is complete.
export function assistantMessage(text, index = null, options = {}) {
  const article = document.createElement("article");
  article.className = "message assistant";
  article.setAttribute("aria-label", "Assistant");
  const content = document.createElement("div");
  content.className = "content markdown";
  renderMarkdown(content, text);
  article.append(content);
  if (index === null) {
    article.classList.add("streaming");
    article.setAttribute("aria-busy", "true");
    return append(article);
  }
  article.dataset.index = String(index);
  const note = FINISH_NOTES[options.finish];
  if (note) {
    const marker = document.createElement("p");
    marker.className = `marker ${options.finish}`;
    marker.append(note);
    if (CONTINUABLE.has(options.finish) && options.isLast) {
      marker.append(" ", button("continue", "Continue", "Continue this reply"));
    }
    article.append(marker);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(button("copy-message", "Copy", "Copy this reply"));
  if (options.isLast) actions.append(button("regenerate", "Regenerate", "Regenerate this reply"));
  article.append(actions);
  return append(article);
}

export function addNote(text) {
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = text;
  return append(note);
}

// An error in the conversation: the server's message, then what it was (status, code).
export function showError(error) {
  const bubble = document.createElement("div");
  bubble.className = "message error";
  bubble.setAttribute("role", "alert");
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
  return append(bubble);
}

// The connection's state while a reply is being resumed. The line is a live region of its own:
// screen readers hear "reconnecting" as it is shown.
export function showReconnecting(attempt) {
  const line = $("connection-status");
  line.hidden = false;
  line.textContent = `Connection lost. Reconnecting…${attempt > 1 ? ` (attempt ${attempt})` : ""}`;
}

export function hideConnectionStatus() {
  $("connection-status").hidden = true;
  $("connection-status").textContent = "";
}

export function showResumed() {
  hideConnectionStatus();
  announce("Reconnected; the reply continues.");
}

// Copies `text` and says how it went on the button and to screen readers.
export async function copyFrom(button, text) {
  try {
    await copyText(text);
    button.textContent = "Copied";
    announce("Copied to the clipboard.");
  } catch (error) {
    button.textContent = "Copy failed";
    announce(`Copying failed: ${error.message}`);
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

// Short news for screen readers (the visually hidden status region).
export function announce(text) {
  const status = $("status");
  status.textContent = "";
  // A changed text node is what a live region announces; clear first so a repeat is news.
  requestAnimationFrame(() => (status.textContent = text));
}

// ---- live figures ------------------------------------------------------------------------------

function formatNumber(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// TTFT counts from sending the request; tokens/s is the decode rate after the first token.
// While streaming the token count is the number of text chunks (about one token each); the
// server's usage replaces it when the reply ends.
export function updateStats(turn) {
  const numTokens = turn.usage ? turn.usage.completion_tokens : turn.numTextChunks;
  const ttftMs = turn.firstAt - turn.sentAt;
  const decodeS = (turn.lastAt - turn.firstAt) / 1000;
  const rate = numTokens > 1 && decodeS > 0 ? (numTokens - 1) / decodeS : NaN;
  $("ttft").textContent = Number.isFinite(ttftMs) ? `${Math.round(ttftMs)} ms` : "–";
  $("tps").textContent = formatNumber(rate, 1);
  $("num-tokens").textContent = String(numTokens ?? "–");
}

export function resetStats() {
  for (const id of ["ttft", "tps", "num-tokens"]) $(id).textContent = "–";
}

// ---- the conversation list ---------------------------------------------------------------------

export function renderConversationList(conversations, currentId) {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const conversation of conversations) {
    const item = document.createElement("li");
    item.className = "conversation-item";
    item.dataset.id = conversation.id;
    const open = button("open-conversation", conversation.title);
    open.className = "title";
    open.title = conversation.title;
    if (conversation.id === currentId) {
      item.classList.add("current");
      open.setAttribute("aria-current", "page");
    }
    item.append(
      open,
      button("rename-conversation", "✎", `Rename “${conversation.title}”`),
      button("delete-conversation", "✕", `Delete “${conversation.title}”`),
    );
    list.append(item);
  }
  $("storage-note").hidden = conversations.length > 0;
}

// Swaps an item's title for a text field; `done(newTitle | null)` runs once (null: cancelled).
export function startRename(item, title, done) {
  const input = document.createElement("input");
  input.type = "text";
  input.value = title;
  input.className = "rename-input";
  input.setAttribute("aria-label", "Conversation title (Enter saves, Esc cancels)");
  let isDone = false;
  const finish = (value) => {
    if (isDone) return;
    isDone = true;
    done(value);
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(input.value);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // Esc here cancels the rename, not a reply
      finish(null);
    }
  });
  input.addEventListener("blur", () => finish(input.value));
  item.querySelector(".title").replaceWith(input);
  input.focus();
  input.select();
}

// Swaps a question for a box holding its text: Enter (or Send) calls onSend(text), Esc (or
// Cancel) onCancel().
export function showEditor(article, text, { onSend, onCancel }) {
  const editor = document.createElement("form");
  editor.className = "edit-form";
  const area = document.createElement("textarea");
  area.value = text;
  area.rows = Math.min(8, text.split("\n").length + 1);
  area.setAttribute("aria-label", "Edit your message (Enter sends, Esc cancels)");
  const send = document.createElement("button");
  send.type = "submit";
  send.textContent = "Send";
  const cancel = button("cancel-edit", "Cancel");
  editor.append(area, send, cancel);
  article.replaceChildren(editor);
  cancel.addEventListener("click", onCancel);
  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    onSend(area.value);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      editor.requestSubmit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // Esc here cancels the edit, not a reply
      onCancel();
    }
  });
  area.focus();
}
