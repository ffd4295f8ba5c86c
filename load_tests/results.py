"""A run's result as JSON: its label, what was run, the summary and every request's record.

    {"version": 1, "label": ..., "created": ..., "config": {...}, "summary": {...},
     "requests": [{...RequestRecord...}, ...]}

Times are seconds. A result file is enough to re-plot (`report`) or compare (`compare`) runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from triode.load_tests.record import RequestRecord
from triode.load_tests.runner import RunResult
from triode.load_tests.stats import Summary

FORMAT_VERSION = 1


@dataclass(slots=True)
class LoadResult:
    label: str
    summary: Summary
    records: list[RequestRecord]
    config: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    @classmethod
    def from_run(cls, label: str, run: RunResult, config: dict[str, Any]) -> LoadResult:
        return cls(label, run.summary, run.records, config)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "label": self.label,
            "created": self.created,
            "config": self.config,
            "summary": self.summary.to_json(),
            "requests": [r.to_json() for r in self.records],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported result version {data.get('version')!r}")
        return cls(
            label=data["label"],
            summary=Summary.from_json(data["summary"]),
            records=[RequestRecord.from_json(r) for r in data["requests"]],
            config=data.get("config", {}),
            created=data.get("created", ""),
        )


def save_result(result: LoadResult, path: str | Path) -> None:
    # Compact: a long run holds a timestamp per token. `jq .summary FILE` reads the summary.
    Path(path).write_bytes(orjson.dumps(result.to_json()))


def load_result(path: str | Path) -> LoadResult:
    return LoadResult.from_json(orjson.loads(Path(path).read_bytes()))
