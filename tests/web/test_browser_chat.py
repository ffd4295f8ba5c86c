"""The browser chat page (/) in a real headless Chromium against a real `triode serve`.

The server is a subprocess on 127.0.0.1 serving the bundled SmolLM2-135M-Instruct with an API
key, so every test also goes through the page's key handling. Chromium is driven by Selenium
with explicit paths to Debian's chromium and chromedriver (nothing is downloaded); Chrome's
performance log shows the WebSocket frames and HTTP requests the page really sent.
Screenshots go to artifacts/ at the repository root.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.helpers import metric

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = pytest.mark.slow

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
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
API_KEY = "sk-browser-test"
MODEL = "SmolLM2-135M-Instruct"
SERVER_START_TIMEOUT_S = 180.0
REPLY_TIMEOUT_S = 60.0
PHONE_WIDTH, PHONE_HEIGHT = 390, 844

# Greedy decoding of this prompt runs for hundreds of tokens: long enough to stop mid-reply.
LONG_QUESTION = "Write a long story about a fox who learns to sail."
LONG_MAX_TOKENS = 400
SHORT_MAX_TOKENS = 24
# Stop once the reply has grown on this many frames and is this long (a few seconds at most).
MIN_GROWTH_FRAMES = 6
MIN_REPLY_CHARS = 150
SYSTEM_PROMPT = "You are a helpful assistant."


# ---- the server -----------------------------------------------------------------------------


def triode_command() -> list[str]:
    script = Path(sys.executable).with_name("triode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "triode.web.cli"]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`triode serve` on a free port; its URL is read from its own start-up log line."""
    log_path = tmp_path_factory.mktemp("triode-serve") / "serve.log"
    command = [
        *triode_command(),
        "serve",
        "--port=0",
        f"--api-key={API_KEY}",
        "--num-kv-blocks=512",
        "--max-num-seqs=4",
        # One WebSocket generation at a time across the server: the "busy" test needs it.
        "--max-ws-generations=1",
        "--shutdown-timeout-s=2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield wait_for_serving_url(process, log_path)
    finally:
        process.send_signal(signal.SIGINT)  # the graceful shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_serving_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = re.search(r"serving \S+ on (http://\S+)", text)
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"triode serve exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"triode serve did not start:\n{log_path.read_text()[-3000:]}")


def read_metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def num_aborted(url: str) -> float:
    return metric(read_metrics(url), "request_success_total", finished_reason="abort")


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


def tokenize_chat(url: str, messages: list[dict[str, str]]) -> int:
    body = json.dumps({"messages": messages}).encode()
    request = urllib.request.Request(
        f"{url}/tokenize",
        body,
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["count"]


# ---- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: `make setup` installs the Debian packages "
            "chromium and chromium-driver (it needs root or sudo and apt)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # The performance log carries DevTools' Network events: every request and WebSocket frame.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(driver: Any, server_url: str) -> Any:
    """A fresh page with no saved settings and empty browser logs."""
    driver.get(f"{server_url}/")
    driver.execute_script("localStorage.clear()")
    driver.get_log("performance")
    driver.get_log("browser")
    return driver


def open_page(driver: Any, url: str, query: str = "") -> None:
    driver.get(f"{url}/{query}")
    wait_for(lambda: driver.find_element(By.ID, "prompt").is_enabled(), 10, "the page to load")


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


def transcript(driver: Any) -> list[tuple[str, str]]:
    """(role, text) of every user and assistant bubble, in order."""
    pairs = driver.execute_script(
        """return [...document.querySelectorAll('.message.user, .message.assistant')]
            .map(el => [el.classList.contains('user') ? 'user' : 'assistant', el.textContent]);"""
    )
    return [(role, text) for role, text in pairs]


def error_texts(driver: Any) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".message.error")]


# Test-side instrumentation: on every animation frame, note the last reply's text length when
# it changed, until the page is idle again. Proves the text grows across painted frames.
START_GROWTH_SAMPLER = """
window.__growth = [];
let streaming = false;
const sample = (frameTime) => {
  const replies = document.querySelectorAll('.message.assistant');
  const length = replies.length ? replies[replies.length - 1].textContent.length : 0;
  const samples = window.__growth;
  if (length > 0 && (!samples.length || samples[samples.length - 1][1] !== length))
    samples.push([frameTime, length]);
  streaming = streaming || document.body.dataset.state === 'streaming';
  if (!streaming || document.body.dataset.state === 'streaming') requestAnimationFrame(sample);
};
requestAnimationFrame(sample);
"""


def growth_samples(driver: Any) -> list[tuple[float, int]]:
    return driver.execute_script("return window.__growth")


def assert_grew_over_frames(samples: list[tuple[float, int]], at_least: int) -> None:
    lengths = [length for _, length in samples]
    frames = {frame for frame, _ in samples}
    assert len(samples) >= at_least, samples
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths), samples
    assert len(frames) == len(samples), "each new length must be seen on its own frame"


def stream_then_stop(driver: Any, question: str, *, use_escape: bool = False) -> list[Any]:
    """Ask, watch the reply grow over several frames, stop it (the Stop button or Esc), and
    wait for the page to settle; returns the growth samples."""

    def has_grown() -> bool:
        samples = growth_samples(driver)
        return len(samples) >= MIN_GROWTH_FRAMES and samples[-1][1] >= MIN_REPLY_CHARS

    driver.execute_script(START_GROWTH_SAMPLER)
    ask(driver, question)
    wait_for(has_grown, REPLY_TIMEOUT_S, "the reply to grow")
    assert page_state(driver) == "streaming", "the reply ended before Stop could be pressed"
    if use_escape:
        driver.find_element(By.ID, "prompt").send_keys(Keys.ESCAPE)
    else:
        driver.find_element(By.ID, "stop").click()
    wait_until_idle(driver, 15)
    return growth_samples(driver)


def performance_events(driver: Any) -> list[dict[str, Any]]:
    """DevTools events logged since the last call (the log is drained as it is read)."""
    return [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]


def sent_ws_messages(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        json.loads(e["params"]["response"]["payloadData"])
        for e in events
        if e["method"] == "Network.webSocketFrameSent"
    ]


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
    """Uncaught exceptions and console.error calls of the page's own script."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def phone_screenshot(driver: Any, name: str) -> Path:
    """A screenshot at phone width (DevTools device emulation), checking nothing overflows."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE_WIDTH, f"the page is {width}px wide at a {PHONE_WIDTH}px viewport"
        return screenshot(driver, name)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# ---- the tests ------------------------------------------------------------------------------


def test_page_is_served_without_a_key_with_a_strict_policy(server_url: str) -> None:
    with urllib.request.urlopen(f"{server_url}/", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "/static/chat.js" in html and "/static/chat.css" in html
    for name, kind in (("chat.js", "text/javascript"), ("chat.css", "text/css")):
        with urllib.request.urlopen(f"{server_url}/static/{name}", timeout=10) as response:
            assert response.headers["Content-Type"].startswith(kind)


def test_websocket_chat_streams_stops_and_sends_history(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=LONG_MAX_TOKENS)
    wait_for(lambda: page.find_element(By.ID, "model").text == MODEL, 10, "the model name")
    performance_events(page)  # drop what loading and configuring logged

    # 1-2: the reply grows over several frames; Stop cancels it on the server.
    aborted_before = num_aborted(server_url)
    samples = stream_then_stop(page, LONG_QUESTION)
    assert_grew_over_frames(samples, at_least=MIN_GROWTH_FRAMES)
    wait_for_abort_recorded(server_url, aborted_before)
    assert page.find_element(By.ID, "transport").text == "via WebSocket"
    assert re.fullmatch(r"\d+ ms", page.find_element(By.ID, "ttft").text)
    assert float(page.find_element(By.ID, "tps").text) > 0
    assert int(page.find_element(By.ID, "num-tokens").text) >= 5
    notes = [n.text for n in page.find_elements(By.CSS_SELECTOR, ".note")]
    assert notes == ["stopped"]
    (_, first_reply) = transcript(page)[1]
    assert len(first_reply) >= samples[-1][1] > 0
    screenshot(page, "browser_chat_stopped.png")

    # 3: a second turn carries the whole history, as the page shows it.
    set_field(page, "max-tokens", str(SHORT_MAX_TOKENS))
    prompt_tokens_before = metric(read_metrics(server_url), "prompt_tokens_total")
    ask(page, "Give the fox a name.")
    wait_until_idle(page)
    assert error_texts(page) == []
    turns = transcript(page)
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0][1] == LONG_QUESTION and turns[1][1] == first_reply
    assert turns[3][1].strip(), "the second reply is empty"

    sent = sent_ws_messages(events := performance_events(page))
    starts = [m for m in sent if m["type"] == "chat.completion"]
    cancels = [m for m in sent if m["type"] == "cancel"]
    assert [c["id"] for c in cancels] == [starts[0]["id"]]
    assert starts[0]["request"]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": LONG_QUESTION},
    ]
    second = starts[1]["request"]
    assert second["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": LONG_QUESTION},
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "Give the fox a name."},
    ]
    assert second["max_tokens"] == SHORT_MAX_TOKENS and second["temperature"] == 0
    # The server really read all four messages: its prompt is exactly their templated length.
    expected = tokenize_chat(server_url, second["messages"])
    wait_for(
        lambda: (
            metric(read_metrics(server_url), "prompt_tokens_total")
            == prompt_tokens_before + expected
        ),
        10,
        f"/metrics to count the {expected} prompt tokens of the whole history",
    )

    # The key went in the handshake's subprotocols, not in the URL.
    (handshake,) = [
        e["params"]["request"]["headers"]
        for e in events
        if e["method"] == "Network.webSocketWillSendHandshakeRequest"
    ]
    assert handshake["Sec-WebSocket-Protocol"] == f"triode, bearer.{API_KEY}"

    # The page made no request outside this server, and none with the key in its URL.
    own = (server_url + "/", "ws" + server_url.removeprefix("http") + "/", "data:")
    urls = requested_urls(events)
    assert urls and all(u.startswith(own) and API_KEY not in u for u in urls), urls
    assert script_errors(page) == []

    # 4: screenshots, wide and at phone width.
    screenshot(page, "browser_chat.png")
    phone_screenshot(page, "browser_chat_phone.png")


def test_sse_transport_streams_and_stop_aborts(page: Any, server_url: str) -> None:
    open_page(page, server_url, "?transport=sse")
    configure(page, max_tokens=LONG_MAX_TOKENS)
    performance_events(page)

    aborted_before = num_aborted(server_url)
    samples = stream_then_stop(page, LONG_QUESTION, use_escape=True)
    assert_grew_over_frames(samples, at_least=MIN_GROWTH_FRAMES)
    # Aborting the fetch closes the connection; the server aborts the request on disconnect.
    wait_for_abort_recorded(server_url, aborted_before)
    assert page.find_element(By.ID, "transport").text == "via SSE"

    events = performance_events(page)
    assert sent_ws_messages(events) == []
    posts = [
        e["params"]["request"]
        for e in events
        if e["method"] == "Network.requestWillBeSent"
        and e["params"]["request"]["url"].endswith("/v1/chat/completions")
    ]
    assert len(posts) == 1 and posts[0]["method"] == "POST"
    assert posts[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    body = json.loads(posts[0]["postData"])
    assert body["stream"] is True and body["messages"][-1]["content"] == LONG_QUESTION
    assert script_errors(page) == []


def test_falls_back_to_sse_and_shows_a_refused_key(page: Any, server_url: str) -> None:
    """A wrong key fails the WebSocket handshake; the page falls back to SSE, whose 401 body
    it shows in the conversation, and hands the question back for a retry."""
    open_page(page, server_url)
    configure(page, max_tokens=SHORT_MAX_TOKENS, key="sk-wrong")
    ask(page, "Hello?")
    wait_until_idle(page)
    assert page.find_element(By.ID, "transport").text == "via SSE (WebSocket unavailable)"
    (error,) = error_texts(page)
    assert "Incorrect API key provided." in error and "HTTP 401" in error
    assert "Settings" in error
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "Hello?"
    failed = page.find_elements(By.CSS_SELECTOR, ".message.user.failed")
    assert [f.text for f in failed] == ["Hello?"]
    assert script_errors(page) == []

    # With the right key the same question goes through the WebSocket.
    set_field(page, "api-key", API_KEY)
    page.find_element(By.ID, "send").click()
    wait_until_idle(page)
    assert page.find_element(By.ID, "transport").text == "via WebSocket"
    assert transcript(page)[-1][0] == "assistant" and transcript(page)[-1][1].strip()


def test_busy_server_and_bad_settings_show_the_servers_message(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=SHORT_MAX_TOKENS)

    # Another client holds the server's only WebSocket generation slot.
    page.execute_script(
        """
        const url = arguments[0].replace('http', 'ws') + '/v1/ws?api_key=' + arguments[1];
        window.__other = new WebSocket(url);
        window.__otherChunks = 0;
        window.__other.onmessage = () => { window.__otherChunks += 1; };
        window.__other.onopen = () => window.__other.send(JSON.stringify({
          type: 'chat.completion', id: 1,
          request: {messages: [{role: 'user', content: arguments[2]}], max_tokens: 400}}));
        """,
        server_url,
        API_KEY,
        LONG_QUESTION,
    )
    wait_for(lambda: page.execute_script("return window.__otherChunks") > 0, 30, "the other client")
    ask(page, "Are you busy?")
    wait_until_idle(page)
    (busy,) = error_texts(page)
    assert "the server is busy" in busy and "server_overloaded" in busy
    page.execute_script("window.__other.close()")

    # A setting the server refuses: its 400 message names the field.
    set_field(page, "temperature", "5")
    page.find_element(By.ID, "send").click()
    wait_until_idle(page)
    bad = error_texts(page)[-1]
    assert "temperature" in bad, bad
    assert script_errors(page) == []
    screenshot(page, "browser_chat_errors.png")


def test_new_chat_forgets_the_conversation(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=4)
    ask(page, "Hi!")
    wait_until_idle(page)
    assert len(transcript(page)) == 2
    page.find_element(By.ID, "new-chat").click()
    assert transcript(page) == []
    performance_events(page)
    ask(page, "Hello again.")
    wait_until_idle(page)
    (start,) = [m for m in sent_ws_messages(performance_events(page)) if m["type"] != "cancel"]
    assert [m["role"] for m in start["request"]["messages"]] == ["system", "user"]


def test_shift_enter_adds_a_line_and_text_is_not_html(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=4)
    prompt = page.find_element(By.ID, "prompt")
    prompt.send_keys("<b>one</b>", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "two")
    assert prompt.get_attribute("value") == "<b>one</b>\ntwo"
    assert page_state(page) == "idle" and transcript(page) == []
    prompt.send_keys(Keys.ENTER)
    wait_until_idle(page)
    assert transcript(page)[0] == ("user", "<b>one</b>\ntwo")
    assert page.find_elements(By.CSS_SELECTOR, "#conversation b") == []
