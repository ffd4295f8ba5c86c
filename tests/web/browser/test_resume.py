"""A dropped connection resumes the answer: the page reconnects, says so while it does, and the
reply ends exactly as an undisturbed greedy run of the same question, over the WebSocket and
over SSE; a stream that expired meanwhile ends with a marker, and Continue and Regenerate still
work.

The drop is real: the page is loaded through a TCP relay (tcp_relay.py) that resets every
connection mid-reply and refuses new ones for a while, so the server sees its client go and the
page sees its socket die.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.web.browser.helpers import (
    REPLY_TIMEOUT_S,
    ask,
    ask_and_wait,
    click_action,
    configure,
    current_messages,
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
    transcript,
    wait_for,
    wait_for_abort_recorded,
    wait_until_idle,
)
from tests.web.browser.tcp_relay import TcpRelay
from tests.web.helpers import metric

pytestmark = pytest.mark.slow

QUESTION = "Write a long story about a fox who learns to sail."
MAX_TOKENS = 96
# Cut once the reply shows this much: well inside it, with most of the reply still to come.
CUT_AT_CHARS = 40
RECONNECTING = "Connection lost. Reconnecting…"

# Test-side instrumentation: every text the reconnection line (while shown) and the screen
# readers' status region take, in order.
RECORD_STATUS = """
window.__statusSeen = [];
window.__newsSeen = [];
const line = document.getElementById('connection-status');
const news = document.getElementById('status');
const record = (list, text) => { if (text && list[list.length - 1] !== text) list.push(text); };
new MutationObserver(() => record(window.__statusSeen, line.hidden ? '' : line.textContent))
  .observe(line, {attributes: true, childList: true, characterData: true, subtree: true});
new MutationObserver(() => record(window.__newsSeen, news.textContent))
  .observe(news, {childList: true, characterData: true, subtree: true});
"""


@pytest.fixture
def relay(server_url: str) -> Iterator[TcpRelay]:
    relay = TcpRelay(int(server_url.rsplit(":", 1)[1]))
    try:
        yield relay
    finally:
        relay.close()


_REFERENCE: dict[str, tuple[str, str]] = {}


def undisturbed_reply(driver: Any) -> tuple[str, str]:
    """(stored, rendered) text of the reply to QUESTION with nothing cut, asked on this page
    (once per module: the tests share it; greedy, so every run gives the same)."""
    if "reply" not in _REFERENCE:
        ask_and_wait(driver, QUESTION)
        _REFERENCE["reply"] = (transcript(driver)[-1][1], shown_messages(driver)[-1][1])
        driver.find_element(By.ID, "new-chat").click()
    return _REFERENCE["reply"]


def reply_length(driver: Any) -> int:
    return driver.execute_script(
        """const replies = document.querySelectorAll('#conversation .message.assistant .content');
           return replies.length ? replies[replies.length - 1].textContent.length : 0;"""
    )


def connection_line(driver: Any) -> tuple[bool, str]:
    line = driver.find_element(By.ID, "connection-status")
    return line.is_displayed(), line.text


def cut_mid_reply(driver: Any, relay: TcpRelay, while_refused: Callable[[], None]) -> None:
    """Ask QUESTION, cut every connection once the reply shows CUT_AT_CHARS, and refuse new
    ones until the page shows it is reconnecting and `while_refused()` returns."""
    ask(driver, QUESTION)
    wait_for(lambda: reply_length(driver) >= CUT_AT_CHARS, REPLY_TIMEOUT_S, "the reply to grow")
    assert page_state(driver) == "streaming", "the reply ended before the cut"
    with relay.refusing():
        assert relay.cut() >= 1
        wait_for(lambda: connection_line(driver)[0], 10, "the reconnecting line")
        while_refused()


def assert_reconnected_and_same(driver: Any, reference: tuple[str, str]) -> None:
    stored, rendered = reference
    assert transcript(driver)[-1][1] == stored  # nothing lost, nothing twice
    assert shown_messages(driver)[-1][1] == rendered
    assert [m.get("finish") for m in current_messages(driver)][-1] in ("stop", "length")
    assert connection_line(driver) == (False, "")  # gone once resumed
    status_seen = driver.execute_script("return window.__statusSeen")
    assert status_seen[0] == RECONNECTING, status_seen
    news = driver.execute_script("return window.__newsSeen")
    assert "Reconnected; the reply continues." in news, news
    line = driver.find_element(By.ID, "connection-status")
    assert line.get_attribute("role") == "status"  # screen readers hear it
    assert script_errors(driver) == []


def received_frames(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The messages each WebSocket (by DevTools request id) received, in order."""
    frames: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["method"] == "Network.webSocketFrameReceived":
            message = json.loads(event["params"]["response"]["payloadData"])
            frames.setdefault(event["params"]["requestId"], []).append(message)
    return frames


def test_websocket_drop_resumes_the_reply_without_loss_or_repeats(
    page: Any, server_url: str, relay: TcpRelay
) -> None:
    open_page(page, relay.url)
    configure(page, max_tokens=MAX_TOKENS)
    reference = undisturbed_reply(page)
    page.execute_script(RECORD_STATUS)
    performance_events(page)

    def while_refused() -> None:
        # An attempt was turned away and the page said it tries again; it still waits.
        wait_for(lambda: relay.num_refused >= 1, 10, "an attempt to reconnect")
        wait_for(lambda: "(attempt 2)" in connection_line(page)[1], 10, "a second attempt")
        assert page_state(page) == "streaming"
        screenshot(page, "browser_chat_reconnecting.png")
        phone_screenshot(page, "browser_chat_reconnecting_phone.png")

    cut_mid_reply(page, relay, while_refused)
    wait_until_idle(page)
    assert_reconnected_and_same(page, reference)

    # The page asked for a resumable stream and resumed it on a new socket right after the
    # last chunk the dropped one had delivered.
    events = performance_events(page)
    sent = [
        json.loads(e["params"]["response"]["payloadData"])
        for e in events
        if e["method"] == "Network.webSocketFrameSent"
    ]
    (start,) = [m for m in sent if m["type"] == "chat.completion"]
    assert start["request"]["resumable"] is True
    resumes = [m for m in sent if m["type"] == "resume"]
    frames = list(received_frames(events).values())
    assert len(frames) >= 2 and resumes, (len(frames), sent)
    first, *later = frames
    chunks = [m for m in first if m["type"] == "chunk"]
    stream_id, last_seq = chunks[0]["chunk"]["id"], chunks[-1]["seq"]
    assert [m["seq"] for m in chunks] == list(range(last_seq + 1))
    assert all(m == {"type": "resume", "id": stream_id, "after": last_seq} for m in resumes)
    resumed = [m for socket_frames in later for m in socket_frames if m["id"] == stream_id]
    assert resumed[0]["seq"] == last_seq + 1 and resumed[-1]["type"] == "done"
    own = (relay.url + "/", "ws" + relay.url.removeprefix("http") + "/")
    assert all(url.startswith(own) for url in requested_urls(events))


def test_sse_drop_resumes_with_last_event_id(page: Any, server_url: str, relay: TcpRelay) -> None:
    open_page(page, relay.url, "?transport=sse")
    configure(page, max_tokens=MAX_TOKENS)
    reference = undisturbed_reply(page)
    page.execute_script(RECORD_STATUS)
    performance_events(page)
    resumes_before = metric(read_metrics(server_url), "resumable_streams_resumes_total")

    def while_refused() -> None:
        wait_for(lambda: relay.num_refused >= 1, 10, "an attempt to reconnect")

    cut_mid_reply(page, relay, while_refused)
    wait_until_idle(page)
    assert_reconnected_and_same(page, reference)
    assert page.find_element(By.ID, "transport").text == "via SSE"

    events = performance_events(page)
    requests = [
        e["params"]["request"] for e in events if e["method"] == "Network.requestWillBeSent"
    ]
    (post,) = [r for r in requests if r["url"].endswith("/v1/chat/completions")]
    assert json.loads(post["postData"])["resumable"] is True
    gets = [r for r in requests if "/v1/streams/chatcmpl-" in r["url"]]
    assert gets and all(r["method"] == "GET" for r in gets)
    assert {int(r["headers"]["Last-Event-ID"]) for r in gets} == {
        int(gets[0]["headers"]["Last-Event-ID"])
    }
    assert int(gets[0]["headers"]["Last-Event-ID"]) > 0
    after = metric(read_metrics(server_url), "resumable_streams_resumes_total")
    assert after >= resumes_before + 1


def test_stop_after_a_resumption_aborts_and_is_not_resumed(
    page: Any, server_url: str, relay: TcpRelay
) -> None:
    open_page(page, relay.url)
    configure(page, max_tokens=400)
    page.execute_script(RECORD_STATUS)
    aborted_before = num_aborted(server_url)

    def while_refused() -> None:
        wait_for(lambda: relay.num_refused >= 1, 10, "an attempt to reconnect")

    cut_mid_reply(page, relay, while_refused)
    wait_for(lambda: connection_line(page) == (False, ""), 30, "the reply to resume")
    resumed_at = reply_length(page)
    wait_for(lambda: reply_length(page) > resumed_at + 20, 30, "the resumed reply to grow")
    performance_events(page)
    page.find_element(By.ID, "stop").click()
    wait_until_idle(page, 15)

    # The cancel went over the new socket, under the stream's id; the engine aborted it.
    wait_for_abort_recorded(server_url, aborted_before)
    sent = [
        json.loads(e["params"]["response"]["payloadData"])
        for e in performance_events(page)
        if e["method"] == "Network.webSocketFrameSent"
    ]
    assert [m["type"] for m in sent] == ["cancel"] and sent[0]["id"].startswith("chatcmpl-")
    assert current_messages(page)[-1]["finish"] == "stopped"
    markers = [m.text for m in page.find_elements(By.CSS_SELECTOR, ".message .marker")]
    assert markers == ["Stopped by you."]
    assert script_errors(page) == []


def test_expired_stream_ends_with_a_marker_and_continue_still_works(
    page: Any, server_url: str, relay: TcpRelay
) -> None:
    # The page asks the server to hold a dropped reply for 1 s only; the relay refuses for longer.
    # A reply long enough to be still running then: a finished one is not expired but kept.
    open_page(page, relay.url, "?resume_window_s=1")
    configure(page, max_tokens=400)
    page.execute_script(RECORD_STATUS)
    expired_before = metric(read_metrics(server_url), "resumable_streams_expired_total")

    def while_refused() -> None:
        # The server stops the generation once nobody came back within the window.
        wait_for(
            lambda: (
                metric(read_metrics(server_url), "resumable_streams_expired_total")
                == expired_before + 1
            ),
            30,
            "the server to expire the stream",
        )

    cut_mid_reply(page, relay, while_refused)
    wait_until_idle(page)
    ((_, question), (_, partial)) = transcript(page)
    assert question == QUESTION and len(partial) >= CUT_AT_CHARS
    marker = page.find_element(By.CSS_SELECTOR, ".message.assistant .marker.interrupted")
    assert marker.text == (
        "Cut off: the connection dropped and the reply could not be resumed. Continue"
    )
    assert current_messages(page)[-1]["finish"] == "interrupted"
    news = page.execute_script("return window.__newsSeen")
    assert news[-1].startswith("The connection dropped and the reply could not be resumed: ")
    assert connection_line(page) == (False, "")
    screenshot(page, "browser_chat_resume_expired.png")
    phone_screenshot(page, "browser_chat_resume_expired_phone.png")

    # Continue carries the cut reply on, in the same message.
    set_field(page, "max-tokens", "12")
    marker.find_element(By.CSS_SELECTOR, "[data-action='continue']").click()
    wait_until_idle(page)
    ((_, _), (_, continued)) = transcript(page)
    assert continued.startswith(partial) and len(continued) > len(partial)
    assert current_messages(page)[-1]["finish"] in ("stop", "length")
    assert page.find_elements(By.CSS_SELECTOR, ".marker.interrupted") == []

    # Regenerate replaces it with a fresh answer.
    set_field(page, "max-tokens", "4")
    click_action(page, "regenerate")
    wait_until_idle(page)
    assert len(transcript(page)) == 2 and transcript(page)[-1][1] != continued
    assert script_errors(page) == []


def test_a_refused_resumable_stream_falls_back_to_a_plain_one(
    page: Any, server_url: str, relay: TcpRelay
) -> None:
    """A server that refuses the resumable stream the page asks for gets plain streams: the
    reply still comes, and a drop then ends it at once with the marker. Here the refusal is a
    window above the server's --max-resume-window-s (400 naming `resume_window_s`); a server
    with resumable streams off names `resumable`, which the page treats alike."""
    open_page(page, relay.url, "?resume_window_s=100000")
    configure(page, max_tokens=MAX_TOKENS)
    performance_events(page)
    aborted_before = num_aborted(server_url)
    ask(page, QUESTION)

    def has_grown_or_failed() -> bool:
        return reply_length(page) >= CUT_AT_CHARS or bool(error_texts(page))

    wait_for(has_grown_or_failed, REPLY_TIMEOUT_S, "the reply to grow")
    assert error_texts(page) == []
    assert relay.cut() >= 1
    wait_until_idle(page, 15)
    wait_for_abort_recorded(server_url, aborted_before)  # a plain stream ends with its socket

    sent = sent_ws_messages(performance_events(page))
    assert [m["type"] for m in sent] == ["chat.completion", "chat.completion"]  # no resume
    first, second = (m["request"] for m in sent)
    assert first["resumable"] is True and first["resume_window_s"] == 100000
    assert "resumable" not in second and "resume_window_s" not in second
    assert current_messages(page)[-1]["finish"] == "interrupted"
    assert len(current_messages(page)[-1]["content"]) >= CUT_AT_CHARS
    assert page.find_elements(By.CSS_SELECTOR, ".message.assistant .marker.interrupted")
    assert script_errors(page) == []
