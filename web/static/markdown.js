// Markdown for model replies: marked parses, DOMPurify sanitizes, highlight.js colours code.
// All three are vendored, pinned files (vendor/README.md) loaded before this module as globals.
//
// What a reply can do is deliberately small: raw HTML in it is shown as text (a reply about
// `<div>` must not lose the tag), images become links (nothing is fetched from elsewhere; the
// page's CSP forbids it anyway), links open in a new tab without an opener, and no style or
// script survives the sanitizer. Fenced code becomes a monospace block with its language, syntax
// colours when highlight.js knows the language, and a Copy button.

const { marked, DOMPurify, hljs } = window;

function escapeHtml(text) {
  return text
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");
}

const parser = new marked.Marked({
  gfm: true,
  breaks: true, // chat replies use single newlines as line breaks
  renderer: {
    html: ({ text }) => escapeHtml(text),
    image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
  },
});

const SANITIZE = {
  FORBID_TAGS: ["style", "img", "form", "svg", "math"],
  FORBID_ATTR: ["style"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// highlight.js must never guess: a block without a known language stays plain.
hljs.configure({ ignoreUnescapedHTML: true });

function enhanceCode(fragment) {
  for (const code of fragment.querySelectorAll("pre > code")) {
    const pre = code.parentElement;
    const language = /\blanguage-([\w+#.-]+)/.exec(code.className)?.[1] ?? "";
    if (language && hljs.getLanguage(language)) hljs.highlightElement(code);
    const block = document.createElement("div");
    block.className = "code-block";
    const head = document.createElement("div");
    head.className = "code-head";
    const name = document.createElement("span");
    name.className = "code-language";
    name.textContent = language || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy ${language || "the"} code`);
    head.append(name, copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }
}

// Replaces `element`'s children with `source` rendered. Model text never reaches innerHTML: it
// goes through the parser and then the sanitizer, which returns DOM nodes.
export function renderMarkdown(element, source) {
  const fragment = DOMPurify.sanitize(parser.parse(source), SANITIZE);
  enhanceCode(fragment);
  element.replaceChildren(fragment);
}

// The text of the code block a Copy button belongs to, exactly as the model wrote it.
export function codeOfCopyButton(button) {
  return button.closest(".code-block")?.querySelector("pre > code")?.textContent ?? "";
}

// Copies `text`; navigator.clipboard needs a secure context (https or localhost), so a page
// served over plain http to another host falls back to a selected, hidden textarea.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  const isCopied = document.execCommand("copy");
  area.remove();
  if (!isCopied) throw new Error("the browser refused to copy");
}
