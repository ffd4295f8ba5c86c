"""Choose, per weight shape, which direct quantized kernel small steps run (float32
activations, or int8 ones on integer dot products where the CPU has AVX512-VNNI) and up to how
many rows it beats the bf16 path for big steps (AMX tiles, or the dense GEMM), by timing them at
engine start on this machine. Steps of up to MIN_DIRECT_ROWS rows always go direct.

NOTE: the int8 kernel is chosen (where CHOOSE_INT8) only where it is faster at 1 row and about
as fast at MIN_DIRECT_ROWS (decode steps). It rounds each row's activations to two int8 digits per
group (~15 bits; one digit, as llama.cpp rounds, was too coarse for the bundled model); the
accuracy test (tests/engine/quant/test_accuracy.py) holds it to the issue's bars against the
float model. A fixed switch-over (`fixed_rows`, EngineConfig.quant_direct_max_rows) skips the
timing and keeps float32 activations: greedy tokens then match the float model's as closely as
they can.

NOTE: the crossover depends on the CPU far more than on the model: with AMX (Sapphire Rapids
and later) a bf16 GEMM is several times faster than AVX512 float32 FMAs from about 8 rows on;
with AVX512-BF16 only (AMD Zen 4/5) the dense path wins later; without either it may never win.
Measuring the real shapes once (a few seconds for a small model on 2 cores) is more robust
than a table of CPU models. Every linear of a shape is timed in turn, as a forward pass streams
them, so the weights come from memory as they do when serving, and the best of a few repetitions
is kept, so a busy neighbour does not pick the switch-over.

The result is cached per machine (CPU flags, thread count, torch and kernel versions) in
triode's cache folder, so later starts skip the measurement; delete
`quant-calibration.json` there to measure again. A measurement taken while other processes
used more than BUSY_CORES cores is applied but not cached: a busy first start must not fix a
disturbed switch-over for every later one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from triode.engine.quant.linear import QuantLinear

logger = logging.getLogger(__name__)

# NOTE: off. The int8-activation kernel won a one-row decode step before the direct kernels
# prefetched their code streams (single stream 134-137 against 107-121 tok/s); after (4fecc28)
# the float32 kernel is faster in a real step (quant_bench single, one run: 154.1/156.8 tok/s
# float32 against 145.6/145.5 with calibration choosing int8; BENCHMARKS.md issue 14), though
# int8 still wins the isolated per-call timing calibration runs. Accuracy with it: 99.95% top-1,
# perplexity -0.004% over 2,048 tokens; the fused decode step's tests pin float32 activations.
CHOOSE_INT8 = False
INT8_SLACK = 1.1
CACHE_FILE = "quant-calibration.json"
INT8_SUFFIX = " int8"  # the cache's entry for a shape's direct kernel choice (0 or 1)
BUSY_CORES = 0.5

ROW_COUNTS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
MIN_DIRECT_ROWS = 4
_REPEATS = 3


def _best_time(fn, repeats: int = _REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def calibrate(
    model: nn.Module, fixed_rows: int | None = None, cache: Path | None = None
) -> dict[tuple, int]:
    """Set `max_direct_rows` and `int8_activations` on every QuantLinear of `model`; returns
    the rows per shape key.

    `fixed_rows` skips the measurement (tests, and users who know their machine); `cache` is
    the file where measurements are kept between starts (None: always measure).
    """
    groups: dict[tuple, list[QuantLinear]] = defaultdict(list)
    for module in model.modules():
        if isinstance(module, QuantLinear):
            groups[module.shape_key].append(module)
    machine = machine_key()
    known = _read(cache).get(machine, {}) if fixed_rows is None and cache else {}
    known = {k: v for k, v in known.items() if isinstance(v, int) and v >= 0}
    chosen: dict[tuple, int] = {}
    measured: dict[str, int] = {}
    mark = load_mark()
    int8_chosen: dict[tuple, bool] = {}
    for key, members in groups.items():
        if fixed_rows is not None:
            rows, int8 = fixed_rows, False
        else:
            rows, cached_int8 = known.get(repr(key)), known.get(repr(key) + INT8_SUFFIX)
            int8 = CHOOSE_INT8 and bool(cached_int8) and members[0].has_int8
            if rows is None or cached_int8 is None:
                int8 = _prefers_int8(members)
                for module in members:
                    module.int8_activations = int8
                rows = measured[repr(key)] = _crossover(members)
                measured[repr(key) + INT8_SUFFIX] = int(int8)
        for module in members:
            module.max_direct_rows = rows
            module.int8_activations = int8
        chosen[key] = rows
        int8_chosen[key] = int8
    if measured and cache is not None:
        others = others_cores_since(mark)
        if others is not None and others > BUSY_CORES:
            logger.info(
                "quantized kernels' calibration not cached: other processes used %.1f cores "
                "while it ran (the next start measures again)",
                others,
            )
        else:
            _write(cache, machine, measured)
    if fixed_rows is None and chosen:
        logger.info(
            "quantized kernels (%s): direct up to %s rows (per shape: K, N, rows, int8 "
            "activations), bf16 above",
            "measured" if measured else f"measured before, {cache}",
            sorted(
                {
                    (m[0].in_features, m[0].out_features, chosen[k], int8_chosen[k])
                    for k, m in groups.items()
                }
            ),
        )
    return chosen


def load_mark() -> tuple[float | None, float | None, float]:
    """(machine busy CPU seconds, our CPU seconds, wall clock) now."""
    from triode.engine.runner.thread_policy import machine_busy_seconds, process_cpu_seconds

    return machine_busy_seconds(), process_cpu_seconds(), time.monotonic()


def others_cores_since(mark: tuple[float | None, float | None, float]) -> float | None:
    """Cores other processes kept busy since `mark` (None where /proc cannot tell)."""
    busy0, own0, wall0 = mark
    busy1, own1, wall1 = load_mark()
    if busy0 is None or own0 is None or busy1 is None or own1 is None:
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-3)


def machine_key() -> str:
    """What the crossover depends on besides the shapes: the CPU, the threads, the kernels."""
    from triode.kernels import cpu_quant, cpu_quant_tiles
    from triode.kernels.cpu_build import cpu_signature

    libraries = [cpu_quant.load_library(), cpu_quant_tiles.load_library()]
    parts = [
        cpu_signature(),
        str(torch.get_num_threads()),
        torch.__version__,
        *(Path(lib._name).name if lib is not None else "-" for lib in libraries),
        repr(ROW_COUNTS),
        str(MIN_DIRECT_ROWS),
        f"int8={CHOOSE_INT8},{INT8_SLACK}",  # a choice made with it off must not stick
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _read(path: Path) -> dict[str, dict[str, int]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, machine: str, measured: dict[str, int]) -> None:
    """Merge into the file atomically (other processes may calibrate at the same time)."""
    data = _read(path)
    data[machine] = {**data.get(machine, {}), **measured}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only cache only costs the next start the measurement
        logger.warning("could not cache the calibration at %s: %s", path, exc)
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not cache the calibration at %s: %s", path, exc)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _prefers_int8(members: list[QuantLinear]) -> bool:
    """Whether the int8-activation kernel beats the float32 one at 1 row (a single stream's
    decode step) and is not more than INT8_SLACK slower at MIN_DIRECT_ROWS (about a tie there:
    measured 1.02-1.12x faster, so noise must not decide it)."""
    if not (CHOOSE_INT8 and members[0].has_int8):
        return False
    k = members[0].in_features
    for rows in (1, MIN_DIRECT_ROWS):
        x = torch.randn(rows, k)
        members[0].forward_direct_int8(x)
        members[0].forward_direct_float(x)
        int8 = floats = float("inf")
        for _ in range(_REPEATS):  # interleaved, so a burst of load hits both alike
            int8 = min(int8, _best_time(lambda x=x: [m.forward_direct_int8(x) for m in members], 1))
            floats = min(
                floats, _best_time(lambda x=x: [m.forward_direct_float(x) for m in members], 1)
            )
        if int8 >= floats * (1.0 if rows == 1 else INT8_SLACK):
            return False
    return True


def _crossover(members: list[QuantLinear]) -> int:
    """The largest row count before the direct kernel loses twice in a row (one loss can be
    noise), at least MIN_DIRECT_ROWS."""
    k = members[0].in_features
    warm = torch.randn(MIN_DIRECT_ROWS + 1, k)
    members[0].forward_direct(warm)
    members[0].forward_bf16(warm)
    best = MIN_DIRECT_ROWS
    losses = 0
    for rows in (r for r in ROW_COUNTS if r > MIN_DIRECT_ROWS):
        x = torch.randn(rows, k)
        direct = big = float("inf")
        for _ in range(_REPEATS):  # interleaved, so a burst of load hits both alike
            direct = min(direct, _best_time(lambda x=x: [m.forward_direct(x) for m in members], 1))
            big = min(big, _best_time(lambda x=x: [m.forward_bf16(x) for m in members], 1))
        if direct <= big:
            best, losses = rows, 0
        else:
            losses += 1
            if losses == 2:
                break
    return best
