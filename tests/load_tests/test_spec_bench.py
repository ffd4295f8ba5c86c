"""The speculative-decoding benchmark runs with a draft model (on tiny models: a quick check of
the script, not a timing)."""

from __future__ import annotations

import json

from triode.load_tests import spec_bench


def test_spec_bench_runs_with_a_draft_model(tiny_folder, tmp_path):
    out = tmp_path / "spec.json"
    argv = ["--model", str(tiny_folder), "--method", "draft_model",
            "--draft-model", str(tiny_folder), "--part", "single", "--num-prompts", "1",
            "--max-tokens", "8", "--repeats", "1", "--k", "3", "--json", str(out)]  # fmt: skip
    assert spec_bench.main(argv) == 0
    results = json.loads(out.read_text())
    (single,) = results["single"]["prompts"]
    assert results["speculative"]["method"] == "draft_model"
    assert single["same_tokens"] is True
    assert single["acceptance_rate"] > 0.5  # the model is its own draft
