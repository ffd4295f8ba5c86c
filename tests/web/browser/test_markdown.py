"""Replies render as markdown while they stream (marked + DOMPurify + highlight.js, vendored and
pinned), safely; fenced code gets a monospace, highlighted block with a Copy button, and every
message a Copy button that puts its text on the clipboard."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import tomllib
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.web.browser.helpers import (
    REPO_ROOT,
    STORE_KEY,
    ask_and_wait,
    click_action,
    configure,
    current_messages,
    open_page,
    page_state,
    performance_events,
    phone_screenshot,
    requested_urls,
    screenshot,
    script_errors,
    wait_for,
)

pytestmark = pytest.mark.slow

VENDOR = REPO_ROOT / "web" / "static" / "vendor"
# Greedy SmolLM2 answers: a numbered list with bold titles, and a fenced Python block.
LIST_QUESTION = "Give three tips for learning to code, as a markdown list with bold titles."
CODE_QUESTION = "Show me a Python hello world program in a code block."

# A past reply holding everything a model could write to attack or break the page.
HOSTILE_REPLY = """\
**Bold** and *italic*, `inline code`, and a list:

1. first
2. second

```python
def add(a, b):
    return a + b  # <b>not a tag</b>
```

<script>window.__pwned = 'script'</script>
<img src="x" onerror="window.__pwned = 'img'">
<div onclick="window.__pwned = 'div'">a div</div>

[click me](javascript:window.__pwned='link') and [a site](https://example.com/page)
![a logo](https://example.com/logo.png)

| a | b |
|---|---|
| 1 | 2 |
"""


def test_vendored_libraries_match_their_pins() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    banners = {"marked": "marked v{}", "dompurify": "DOMPurify {}", "@highlightjs/cdn-assets":
               "Highlight.js v{}"}  # fmt: skip
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["triode.web"]
    for package in manifest["packages"]:
        assert (
            package["integrity"].startswith("sha512-") and package["version"] in package["tarball"]
        )
        names = list(package["files"])
        assert any(n.endswith(("LICENSE", "LICENSE-MPL")) for n in names), package["name"]
        for name, pin in package["files"].items():
            data = (VENDOR / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == pin["sha256"], f"{name} was changed"
            # Installed with the wheel: a package-data pattern covers it.
            assert any(fnmatch.fnmatch(f"static/vendor/{name}", p) for p in package_data), name
        script = next(n for n in names if n.endswith(".js"))
        banner = banners[package["name"]].format(package["version"])
        assert banner in (VENDOR / script).read_text()[:400], script
    on_disk = {p.name for p in VENDOR.iterdir()} - {"manifest.json", "README.md"}
    assert on_disk == {n for p in manifest["packages"] for n in p["files"]}


def stored_conversation(reply: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply, "finish": "stop"}
    conversation = {"id": "c1", "title": "Hostile", "isTitleEdited": False, "createdAt": 1,
                    "updatedAt": 1, "messages": [{"role": "user", "content": "hi"}, message]}  # fmt: skip
    return {"version": 1, "currentId": "c1", "conversations": [conversation]}


def test_a_reply_renders_safely(page: Any, server_url: str) -> None:
    """Stored replies render with the same code as streaming ones: one written to attack the
    page shows its markdown, and its HTML as text, and runs and fetches nothing."""
    page.execute_script(
        "localStorage.setItem(arguments[0], arguments[1])",
        STORE_KEY,
        json.dumps(stored_conversation(HOSTILE_REPLY)),
    )
    open_page(page, server_url)
    reply = page.find_element(By.CSS_SELECTOR, ".message.assistant .content")
    text = reply.text
    assert "**" not in text and "```" not in text
    assert [e.text for e in reply.find_elements(By.CSS_SELECTOR, "strong")] == ["Bold"]
    assert [e.text for e in reply.find_elements(By.CSS_SELECTOR, "ol > li")] == ["first", "second"]
    assert reply.find_elements(By.CSS_SELECTOR, "em") and reply.find_elements(
        By.CSS_SELECTOR, "table td"
    )
    # Raw HTML is shown as the text it is; nothing of it became an element.
    for tag in ("script", "img", "div[onclick]", "[onerror]", "[style]"):
        assert reply.find_elements(By.CSS_SELECTOR, tag) == [], tag
    assert "<script>window.__pwned = 'script'</script>" in text
    assert '<img src="x"' in text and "a div" in text
    assert page.execute_script("return window.__pwned") is None
    links = {a.text: a for a in reply.find_elements(By.CSS_SELECTOR, "a")}
    assert links["click me"].get_attribute("href") is None  # javascript: removed
    site = links["a site"]
    assert site.get_attribute("href") == "https://example.com/page"
    assert (
        site.get_attribute("target") == "_blank"
        and site.get_attribute("rel") == "noopener noreferrer"
    )
    assert links["a logo"].get_attribute("href") == "https://example.com/logo.png"  # not loaded
    # The code block: monospace, highlighted, its language named, with a Copy button.
    code = reply.find_element(By.CSS_SELECTOR, ".code-block pre code")
    assert "monospace" in code.value_of_css_property("font-family")
    assert code.find_elements(By.CSS_SELECTOR, ".hljs-keyword")[0].text == "def"
    assert "<b>not a tag</b>" in code.text
    assert reply.find_element(By.CSS_SELECTOR, ".code-language").text == "python"
    urls = requested_urls(performance_events(page))
    assert urls and not [u for u in urls if "example.com" in u], urls
    assert script_errors(page) == []  # no CSP violation either


def grant_clipboard(driver: Any, url: str) -> None:
    driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )


def clipboard(driver: Any) -> str:
    return driver.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('ERROR ' + e))"
    )


# Notes, on each frame while a reply streams, which markdown elements it already shows.
WATCH_STREAMING = """
window.__seen = new Set();
const watch = () => {
  const live = document.querySelector('#conversation .message.assistant.streaming');
  if (live) for (const tag of ['strong', 'li', 'pre code', '.hljs-string'])
    if (live.querySelector(tag)) window.__seen.add(tag);
  if (document.body.dataset.state === 'streaming' || !window.__seen.size) requestAnimationFrame(watch);
};
requestAnimationFrame(watch);
"""


def test_replies_render_as_they_stream_and_copy(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=40)
    grant_clipboard(page, server_url)

    page.execute_script(WATCH_STREAMING)
    ask_and_wait(page, LIST_QUESTION)
    first = page.find_elements(By.CSS_SELECTOR, ".message.assistant .content")[-1]
    assert first.find_elements(By.CSS_SELECTOR, "ol > li strong"), first.get_attribute("innerHTML")
    assert "**" not in first.text
    raw = current_messages(page)[-1]["content"]
    assert "**" in raw  # stored (and sent back to the model) as the model wrote it
    assert {"strong", "li"} <= set(page.execute_script("return [...window.__seen]"))

    page.execute_script(WATCH_STREAMING)
    ask_and_wait(page, CODE_QUESTION)
    assert "pre code" in page.execute_script("return [...window.__seen]")
    reply = page.find_elements(By.CSS_SELECTOR, ".message.assistant")[-1]
    code = reply.find_element(By.CSS_SELECTOR, ".code-block pre code")
    assert "print(" in code.text  # the greedy program's exact words depend on the numerics
    assert code.find_elements(By.CSS_SELECTOR, "[class^='hljs-']")
    assert page_state(page) == "idle"

    reply.find_element(By.CSS_SELECTOR, "button.copy-code").click()
    wait_for(lambda: clipboard(page) == code.text + "\n" or clipboard(page) == code.text, 5,
             "the code on the clipboard")  # fmt: skip
    assert "```" not in clipboard(page)
    assert reply.find_element(By.CSS_SELECTOR, "button.copy-code").text == "Copied"
    assert (
        page.find_element(By.ID, "status").get_attribute("textContent")
        == "Copied to the clipboard."
    )

    click_action(page, "copy-message")  # the whole reply, as markdown
    stored_reply = current_messages(page)[-1]["content"]
    wait_for(lambda: clipboard(page) == stored_reply, 5, "the reply on the clipboard")
    assert stored_reply.startswith("```python")
    assert script_errors(page) == []
    screenshot(page, "browser_chat_markdown.png")
    phone_screenshot(page, "browser_chat_markdown_phone.png")
