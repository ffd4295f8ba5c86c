// Conversations kept in the browser (localStorage), so a reload or a closed tab loses nothing.
//
// One JSON document under STORE_KEY: {version, currentId, conversations: [...]}, each
// conversation {id, title, isTitleEdited, createdAt, updatedAt, messages}, each message
// {role: "user" | "assistant", content, finish?: "stop" | "length" | "stopped" | "interrupted"}.
// A message is stored once its turn ends; a failed turn is not stored (its text goes back to the
// composer).
// Another tab's changes arrive through the `storage` event (see onChange).

export const STORE_KEY = "triode.chat.conversations";
const VERSION = 1;
const TITLE_LENGTH = 48;

function emptyDocument() {
  return { version: VERSION, currentId: null, conversations: [] };
}

function isConversation(value) {
  return (
    value &&
    typeof value.id === "string" &&
    typeof value.title === "string" &&
    Array.isArray(value.messages) &&
    value.messages.every(
      (m) => (m.role === "user" || m.role === "assistant") && typeof m.content === "string",
    )
  );
}

function readDocument() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY));
    if (saved && saved.version === VERSION && Array.isArray(saved.conversations)) {
      saved.conversations = saved.conversations.filter(isConversation);
      return saved;
    }
  } catch {
    // unreadable or blocked storage: start empty
  }
  return emptyDocument();
}

function newId() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

// The first line of the first question, shortened: until the user renames it.
export function titleFrom(text) {
  const line = text.trim().split("\n")[0].trim();
  return line.length > TITLE_LENGTH ? `${line.slice(0, TITLE_LENGTH - 1)}…` : line || "New chat";
}

export class ConversationStore {
  constructor() {
    this.doc = readDocument();
    this.saveError = null; // the last failed save (full or blocked storage), shown to the user
  }

  // Newest activity first; a conversation shows up once its first turn is stored.
  list() {
    return this.doc.conversations
      .filter((c) => c.messages.length)
      .sort((a, b) => b.updatedAt - a.updatedAt);
  }

  get(id) {
    return this.doc.conversations.find((c) => c.id === id) ?? null;
  }

  current() {
    return this.get(this.doc.currentId);
  }

  select(id) {
    if (!this.get(id)) return null;
    this.doc.currentId = id;
    this.save();
    return this.current();
  }

  // An empty conversation is only kept once its first turn ends (see addMessages).
  create() {
    const now = Date.now();
    const conversation = {
      id: newId(),
      title: "New chat",
      isTitleEdited: false,
      createdAt: now,
      updatedAt: now,
      messages: [],
    };
    this.doc.conversations.push(conversation);
    this.doc.currentId = conversation.id;
    return conversation;
  }

  // Appends finished messages and saves; names the conversation after its first question.
  addMessages(conversation, messages) {
    conversation.messages.push(...messages);
    if (!conversation.isTitleEdited && conversation.title === "New chat") {
      const first = conversation.messages.find((m) => m.role === "user");
      if (first) conversation.title = titleFrom(first.content);
    }
    this.touch(conversation);
  }

  // Drops messages from `index` on (regenerate, edit).
  truncate(conversation, index) {
    conversation.messages.length = Math.max(0, index);
    this.touch(conversation);
  }

  touch(conversation) {
    conversation.updatedAt = Date.now();
    this.save();
  }

  rename(id, title) {
    const conversation = this.get(id);
    const trimmed = title.trim();
    if (!conversation || !trimmed) return;
    conversation.title = trimmed;
    conversation.isTitleEdited = true;
    this.save();
  }

  remove(id) {
    this.doc.conversations = this.doc.conversations.filter((c) => c.id !== id);
    if (this.doc.currentId === id) this.doc.currentId = null;
    this.save();
  }

  // Conversations with no finished turn are not written (a "New chat" nobody used).
  save() {
    const doc = { ...this.doc, conversations: this.doc.conversations.filter((c) => c.messages.length) };
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify(doc));
      this.saveError = null;
      return true;
    } catch (error) {
      this.saveError = error;
      return false;
    }
  }

  // Another tab saved: take its document (calls `handler` with no arguments).
  onChange(handler) {
    window.addEventListener("storage", (event) => {
      if (event.key !== STORE_KEY) return;
      this.doc = readDocument();
      handler();
    });
  }
}
