"""What the browser tests do to the page and read back from it (and from the server).

Screenshots go to artifacts/ at the repository root.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.web.helpers import metric

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the networking flags Chromium's background connections are refused by the closed
# network here; a fresh profile keeps runs independent.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
REPO_ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO_ROOT / "artifacts"
API_KEY = "sk-browser-test"
MODEL = "SmolLM2-135M-Instruct"
# An upper bound only: a reply of a few dozen tokens takes seconds on two idle cores, but a
# machine shared with other test runs can be twenty times slower.
REPLY_TIMEOUT_S = 240.0
PHONE_WIDTH, PHONE_HEIGHT = 390, 844
SYSTEM_PROMPT = "You are a helpful assistant."
STORE_KEY = "triode.chat.conversations"


# ---- the server -----------------------------------------------------------------------------


def read_metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def num_aborted(url: str) -> float:
    return metric(read_metrics(url), "request_success_total", finished_reason="abort")


def post_json(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST with the test key; (status, JSON body), error statuses included."""
    request = urllib.request.Request(
        f"{url}{path}",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def tokenize_chat(url: str, messages: list[dict[str, str]], **options: Any) -> int:
    status, body = post_json(url, "/tokenize", {"messages": messages, **options})
    assert status == 200, body
    return body["count"]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_for_abort_recorded(url: str, before: float) -> None:
    """The engine counted one more aborted request and has nothing left running."""

    def settled() -> bool:
        text = read_metrics(url)
        aborted = metric(text, "request_success_total", finished_reason="abort")
        return aborted == before + 1 and metric(text, "num_requests_running") == 0

    wait_for(settled, 15, "/metrics to show one more aborted request and none running")


# ---- the page -------------------------------------------------------------------------------


def open_page(driver: Any, url: str, query: str = "") -> None:
    driver.get(f"{url}/{query}")
    wait_for(lambda: driver.find_element(By.ID, "prompt").is_enabled(), 10, "the page to load")
    wait_for(lambda: driver.execute_script("return !!window.marked"), 10, "the scripts")


def set_field(driver: Any, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)
    driver.find_element(By.ID, "prompt").click()  # the blur fires `change`, which saves it


def configure(driver: Any, *, max_tokens: int, key: str | None = API_KEY) -> None:
    set_field(driver, "system-prompt", SYSTEM_PROMPT)
    set_field(driver, "temperature", "0")
    set_field(driver, "max-tokens", str(max_tokens))
    if key is not None:
        set_field(driver, "api-key", key)


def ask(driver: Any, text: str) -> None:
    """Type a question and press Enter, as a user does."""
    driver.find_element(By.ID, "prompt").send_keys(text, Keys.ENTER)


def page_state(driver: Any) -> str:
    return driver.execute_script("return document.body.dataset.state")


def wait_until_idle(driver: Any, timeout_s: float = REPLY_TIMEOUT_S) -> None:
    wait_for(lambda: page_state(driver) == "idle", timeout_s, "the reply to end")


def ask_and_wait(driver: Any, text: str) -> None:
    ask(driver, text)
    wait_until_idle(driver)


def stored(driver: Any) -> dict[str, Any]:
    """The conversations document the page keeps in localStorage."""
    return driver.execute_script(f"return JSON.parse(localStorage.getItem('{STORE_KEY}'))") or {}


def current_messages(driver: Any) -> list[dict[str, Any]]:
    """The stored messages of the conversation on screen."""
    doc = stored(driver)
    current = [c for c in doc.get("conversations", []) if c["id"] == doc.get("currentId")]
    return current[0]["messages"] if current else []


def transcript(driver: Any) -> list[tuple[str, str]]:
    """(role, raw text) of the stored conversation on screen: what the model is sent."""
    return [(m["role"], m["content"]) for m in current_messages(driver)]


def shown_messages(driver: Any) -> list[tuple[str, str]]:
    """(role, rendered text) of every user and assistant bubble on screen, in order."""
    pairs = driver.execute_script(
        """return [...document.querySelectorAll('#conversation .message.user, '
                                               + '#conversation .message.assistant')]
            .map(el => [el.classList.contains('user') ? 'user' : 'assistant',
                        el.querySelector('.content').textContent]);"""
    )
    return [(role, text) for role, text in pairs]


def error_texts(driver: Any) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".message.error")]


def click_action(driver: Any, action: str, index: int | None = None) -> None:
    """Click a message's button (data-action), on the last message that has one by default."""
    buttons = driver.find_elements(By.CSS_SELECTOR, f'#conversation [data-action="{action}"]')
    if index is not None:
        selector = f'#conversation .message[data-index="{index}"] [data-action="{action}"]'
        buttons = driver.find_elements(By.CSS_SELECTOR, selector)
    assert buttons, f"no {action} button"
    buttons[-1].click()


# ---- what the browser logged ----------------------------------------------------------------


def performance_events(driver: Any) -> list[dict[str, Any]]:
    """DevTools events logged since the last call (the log is drained as it is read)."""
    return [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]


def sent_ws_messages(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        json.loads(e["params"]["response"]["payloadData"])
        for e in events
        if e["method"] == "Network.webSocketFrameSent"
    ]


def sent_requests(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat-completion bodies the page sent over the WebSocket."""
    return [m["request"] for m in sent_ws_messages(events) if m["type"] == "chat.completion"]


def requested_urls(events: list[dict[str, Any]]) -> list[str]:
    """Every HTTP request and WebSocket the page opened."""
    urls = []
    for event in events:
        if event["method"] == "Network.requestWillBeSent":
            urls.append(event["params"]["request"]["url"])
        elif event["method"] == "Network.webSocketCreated":
            urls.append(event["params"]["url"])
    return urls


def script_errors(driver: Any) -> list[str]:
    """Uncaught exceptions, console errors and policy violations of the page."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]


# ---- screenshots ----------------------------------------------------------------------------


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


# Whether the side panels are as the page sets them for the viewport's width (open when wide,
# folded on phones): it does so on the media query's `change` event, a moment after a resize.
PANELS_FIT_WIDTH = """
const isWide = matchMedia('(min-width: 761px)').matches;
return ['history', 'settings'].every(id => document.getElementById(id).open === isWide);
"""


def wait_for_panels(driver: Any) -> None:
    wait_for(lambda: driver.execute_script(PANELS_FIT_WIDTH), 5, "the panels to fit the width")


def phone_screenshot(driver: Any, name: str) -> Path:
    """A screenshot at phone width (DevTools device emulation), checking nothing overflows.
    The side panels fold there; it returns once they are open again."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        wait_for_panels(driver)
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE_WIDTH, f"the page is {width}px wide at a {PHONE_WIDTH}px viewport"
        return screenshot(driver, name)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        wait_for_panels(driver)
