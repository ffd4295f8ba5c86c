"""The chat page streams over the WebSocket (or SSE), Stop really aborts, history is sent,
errors show the server's words, and the page talks to no one but its server."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.web.browser.helpers import (
    API_KEY,
    MODEL,
    REPLY_TIMEOUT_S,
    SYSTEM_PROMPT,
    ask,
    ask_and_wait,
    configure,
    error_texts,
    num_aborted,
    open_page,
    page_state,
    performance_events,
    phone_screenshot,
    read_metrics,
    requested_urls,
    screenshot,
    script_errors,
    sent_ws_messages,
    set_field,
    shown_messages,
    tokenize_chat,
    transcript,
    wait_for,
    wait_for_abort_recorded,
    wait_until_idle,
)
from tests.web.helpers import metric

pytestmark = pytest.mark.slow

# Greedy decoding of this prompt runs for hundreds of tokens: long enough to stop mid-reply.
LONG_QUESTION = "Write a long story about a fox who learns to sail."
LONG_MAX_TOKENS = 400
SHORT_MAX_TOKENS = 24
# Stop once the reply has changed on this many frames and is this long (a few seconds at most).
MIN_GROWTH_FRAMES = 6
MIN_REPLY_CHARS = 150

# Test-side instrumentation: on every animation frame, note the last reply's rendered text length
# when it changed, until the page is idle again. Proves the text is painted across frames as it
# streams (markdown can shorten it for a frame: `**bold` becomes `bold` once closed).
START_GROWTH_SAMPLER = """
window.__growth = [];
let streaming = false;
const sample = (frameTime) => {
  const replies = document.querySelectorAll('#conversation .message.assistant .content');
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
    assert lengths[-1] == max(lengths) and lengths[-1] > lengths[0], samples
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


def test_page_is_served_without_a_key_with_a_strict_policy(server_url: str) -> None:
    with urllib.request.urlopen(f"{server_url}/", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    scripts = re.findall(r'<script src="([^"]+)"', html)
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert "/static/chat.js" in scripts and "/static/vendor/marked.umd.js" in scripts
    assert "/static/chat.css" in sheets
    modules = [
        *("chat.js", "legs.js", "markdown.js", "settings.js", "socket.js", "sse.js"),
        *("store.js", "transport.js", "view.js"),
    ]
    for path in [*scripts, *sheets, *(f"/static/{m}" for m in modules)]:
        assert path.startswith("/static/"), path  # nothing from elsewhere
        with urllib.request.urlopen(f"{server_url}{path}", timeout=10) as response:
            kind = "text/css" if path.endswith(".css") else "text/javascript"
            assert response.headers["Content-Type"].startswith(kind), path


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
    markers = [m.text for m in page.find_elements(By.CSS_SELECTOR, ".message .marker")]
    assert markers == ["Stopped by you."]
    ((_, question), (_, first_reply)) = transcript(page)
    assert question == LONG_QUESTION and len(first_reply) >= MIN_REPLY_CHARS
    assert current_finish(page) == ["stopped"]
    screenshot(page, "browser_chat_stopped.png")

    # 3: a second turn carries the whole history, as the page shows it.
    set_field(page, "max-tokens", str(SHORT_MAX_TOKENS))
    prompt_tokens_before = metric(read_metrics(server_url), "prompt_tokens_total")
    ask_and_wait(page, "Give the fox a name.")
    assert error_texts(page) == []
    turns = transcript(page)
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1][1] == first_reply and turns[3][1].strip(), turns
    assert [role for role, _ in shown_messages(page)] == [role for role, _ in turns]

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
    assert "response_format" not in second  # JSON mode is off by default
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


def current_finish(driver: Any) -> list[str]:
    doc = driver.execute_script("return JSON.parse(localStorage.getItem(arguments[0]))",
                                "triode.chat.conversations")  # fmt: skip
    (conversation,) = [c for c in doc["conversations"] if c["id"] == doc["currentId"]]
    return [m["finish"] for m in conversation["messages"] if m["role"] == "assistant"]


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
    ask_and_wait(page, "Hello?")
    assert page.find_element(By.ID, "transport").text == "via SSE (WebSocket unavailable)"
    (error,) = error_texts(page)
    assert "Incorrect API key provided." in error and "HTTP 401" in error
    assert "Settings" in error
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "Hello?"
    failed = page.find_elements(By.CSS_SELECTOR, ".message.user.failed")
    assert [f.text for f in failed] == ["Hello?"]
    assert transcript(page) == []  # a failed turn is not stored
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
    ask_and_wait(page, "Are you busy?")
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


def test_new_chat_starts_over_and_keeps_the_old_one(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=4)
    ask_and_wait(page, "Hi!")
    assert len(transcript(page)) == 2
    page.find_element(By.ID, "new-chat").click()
    assert shown_messages(page) == []
    performance_events(page)
    ask_and_wait(page, "Hello again.")
    (start,) = [m for m in sent_ws_messages(performance_events(page)) if m["type"] != "cancel"]
    assert [m["role"] for m in start["request"]["messages"]] == ["system", "user"]
    titles = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#conversation-list .title")]
    assert titles == ["Hello again.", "Hi!"]  # newest first


def test_shift_enter_adds_a_line_and_typed_text_is_not_html(page: Any, server_url: str) -> None:
    open_page(page, server_url)
    configure(page, max_tokens=4)
    prompt = page.find_element(By.ID, "prompt")
    prompt.send_keys("<b>one</b>", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "**two**")
    assert prompt.get_attribute("value") == "<b>one</b>\n**two**"
    assert page_state(page) == "idle" and shown_messages(page) == []
    prompt.send_keys(Keys.ENTER)
    wait_until_idle(page)
    # A question is shown exactly as typed: neither HTML nor markdown.
    assert shown_messages(page)[0] == ("user", "<b>one</b>\n**two**")
    assert (
        page.find_elements(By.CSS_SELECTOR, "#conversation .user b, #conversation .user strong")
        == []
    )
