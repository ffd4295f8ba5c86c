"""The Vercel `ai` package (node, tests/web/node/structured.mjs) against the real SmolLM2
server: generateObject with a zod schema, a forced tool call streamed and not, and the SDK's
own two-step tool round trip. Skipped, saying why, where node or `make setup`'s
`npm ci` of tests/web/node is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NODE_DIR = Path(__file__).with_name("node")
WEATHER_INPUT = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}


@pytest.fixture(scope="module")
def result(smol_server) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        pytest.skip("tests/web/node has no node_modules: run `make setup` (npm ci)")
    model = "SmolLM2-135M-Instruct"
    try:
        done = subprocess.run(
            [node, "structured.mjs", smol_server.url, model],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # say how far it got (the script logs stages)
        pytest.fail(f"the ai-package script timed out; its log:\n{exc.stderr}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_generate_object_validates_against_its_zod_schema(result):
    pet = result["object"]  # the SDK already checked it with zod; check it once more
    assert result["objectFinish"] == "stop"
    assert set(pet) == {"name", "species", "legs"}
    assert pet["species"] in ("cat", "dog", "fish") and 0 <= pet["legs"] <= 4
    assert len(pet["name"]) <= 12


def test_forced_tool_call_is_the_same_streamed_and_not(result):
    (call,) = result["calls"]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["input"], WEATHER_INPUT)
    assert result["finish"] == result["streamedFinish"] == "tool-calls"
    assert result["streamedCalls"] == result["calls"]
    parts = result["streamedParts"]  # the arguments arrived in pieces, as they were written
    assert parts.count("tool-input-start") == 1 and parts.count("tool-input-delta") > 1


def test_the_sdk_round_trip_ends_in_text(result):
    first, second = result["steps"]
    assert first["calls"] == result["calls"]
    assert second["calls"] == [] and second["text"].strip()
