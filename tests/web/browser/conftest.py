"""One real `triode serve` and one headless Chromium, shared by every browser test.

The server is a subprocess on 127.0.0.1 serving the bundled SmolLM2-135M-Instruct (its Q4_1
weights as they are) with an API key, so every test also goes through the page's key handling.
Chromium is driven by Selenium with explicit paths to Debian's chromium and chromedriver
(nothing is downloaded); Chrome's performance log shows the WebSocket frames and HTTP requests
the page really sent. Each test gets a fresh page: no saved settings, no stored conversations,
empty logs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.browser.helpers import API_KEY, CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402

SERVER_START_TIMEOUT_S = 180.0


def triode_command() -> list[str]:
    script = Path(sys.executable).with_name("triode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "triode.web.cli"]


@pytest.fixture(scope="session")
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
        # The bundled file's own quantized weights (the default), every step on the direct
        # kernel: Continue's text must equal one uninterrupted reply, so a token's numbers
        # must not depend on the step's size (README, "Quantized weights").
        "--quant-direct-max-rows=4096",
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


@pytest.fixture(scope="session")
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
    """A fresh page: no saved settings or conversations, empty browser logs."""
    driver.get(f"{server_url}/")
    driver.execute_script("localStorage.clear()")
    driver.get_log("performance")
    driver.get_log("browser")
    return driver
