"""Keyboard-only use and what screen readers get: every control named, a sensible tab order, a
log for the conversation, a status region for news, and the phone layout."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.web.browser.helpers import (
    PHONE_HEIGHT,
    PHONE_WIDTH,
    configure,
    open_page,
    page_state,
    phone_screenshot,
    screenshot,
    script_errors,
    transcript,
    wait_for,
    wait_until_idle,
)

pytestmark = pytest.mark.slow

DESCRIBE_FOCUS = """
const e = document.activeElement;
return e.id || e.dataset.action || e.className || e.tagName.toLowerCase();
"""

FIRST_FOCUSABLE = """
const all = document.querySelectorAll('a[href], button, input, textarea, summary');
const first = [...all].find(e => !e.disabled && e.tabIndex >= 0);
return first.className;
"""

# Marks whether the reply was aria-busy while it streamed (screen readers wait for it whole).
WATCH_BUSY = """
window.__busy = [];
const watch = () => {
  const live = document.querySelector('#conversation .message.assistant.streaming');
  if (live) window.__busy.push(live.getAttribute('aria-busy'));
  if (!window.__busy.length || document.body.dataset.state === 'streaming') requestAnimationFrame(watch);
};
requestAnimationFrame(watch);
"""


def focus_sequence(driver: Any, num: int) -> list[str]:
    keys = driver.switch_to.active_element
    seen = []
    for _ in range(num):
        keys.send_keys(Keys.TAB)
        keys = driver.switch_to.active_element
        seen.append(driver.execute_script(DESCRIBE_FOCUS))
    return seen


def unnamed_controls(driver: Any) -> list[dict[str, Any]]:
    """Controls Chromium's accessibility tree (what screen readers read) gives no name."""
    tree = driver.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    controls = {"button", "textbox", "checkbox", "link", "spinbutton", "combobox"}
    return [
        node
        for node in tree
        if not node.get("ignored")
        and node.get("role", {}).get("value") in controls
        and not node.get("name", {}).get("value", "").strip()
    ]


def ax_roles(driver: Any) -> set[tuple[str, str]]:
    """(name, role) of every node of the accessibility tree."""
    tree = driver.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    return {
        (node.get("name", {}).get("value", ""), node.get("role", {}).get("value", ""))
        for node in tree
        if not node.get("ignored")
    }


def test_keyboard_only_and_screen_reader_names(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=6)
    page.refresh()
    open_page(page, server_url)
    assert page.execute_script("return document.activeElement.id") == "prompt"

    # Ask with the keyboard; the reply is aria-busy while it streams, then announced.
    page.execute_script(WATCH_BUSY)
    page.switch_to.active_element.send_keys("Say hello.", Keys.ENTER)
    wait_until_idle(page)
    assert set(page.execute_script("return window.__busy")) == {"true"}
    assert page.find_element(By.ID, "status").get_attribute("textContent").startswith("Reply ")
    assert page.execute_script("return document.activeElement.id") == "prompt"

    # Tab order from the top: skip link, top bar, the list, the messages' buttons, settings,
    # then the message box and Send (Stop is disabled, so it is skipped).
    assert page.execute_script(FIRST_FOCUSABLE) == "skip-link"
    page.execute_script("document.querySelector('.skip-link').focus()")
    # A reply cut at the token limit has a Continue button in its marker, before its own.
    reply = ["continue"] if page.find_elements(By.CSS_SELECTOR, ".marker.length") else []
    expected = [
        "skip-link", "new-chat", "summary", "open-conversation", "rename-conversation",
        "delete-conversation", "copy-message", "edit", *reply, "copy-message", "regenerate",
        "summary", "system-prompt", "temperature", "max-tokens", "json-mode", "api-key", "prompt",
        "send",
    ]  # fmt: skip
    order = ["skip-link", *focus_sequence(page, len(expected) - 1)]
    assert order == expected, order

    # The skip link leads to the message box.
    page.execute_script("document.querySelector('.skip-link').focus()")
    page.switch_to.active_element.send_keys(Keys.ENTER)
    assert page.execute_script("return document.activeElement.id") == "prompt"

    # Regenerate from the keyboard: Shift+Tab back from the message box to the button.
    before = transcript(page)
    for _ in range(8):
        page.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        if page.execute_script(DESCRIBE_FOCUS) == "regenerate":
            break
    page.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(
        lambda: page_state(page) == "streaming" or transcript(page) != before, 10, "regenerate"
    )
    wait_until_idle(page)
    assert transcript(page)[0] == before[0] and len(transcript(page)) == 2

    # What a screen reader is told: every control has a name; the conversation is a log.
    assert unnamed_controls(page) == []
    roles = ax_roles(page)
    assert {("Conversation", "log"), ("Conversations", "navigation")} <= roles
    assert {("Assistant", "article"), ("You", "article")} <= roles
    assert page.find_element(By.ID, "status").get_attribute("role") == "status"
    assert script_errors(page) == []
    screenshot(page, "browser_chat_keyboard.png")


def test_phone_layout_folds_the_side_panels(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        wait_for(lambda: not page.find_element(By.ID, "history").get_attribute("open"), 5,
                 "the conversation list to fold")  # fmt: skip
        assert not page.find_element(By.ID, "settings").get_attribute("open")
        composer = page.find_element(By.ID, "prompt").rect
        assert composer["x"] >= 0 and composer["x"] + composer["width"] <= PHONE_WIDTH
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    phone_screenshot(page, "browser_chat_phone_empty.png")
