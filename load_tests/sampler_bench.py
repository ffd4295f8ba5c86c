"""Sampler cost per step on the CPU: triode's sampler against the straightforward vectorised
one (full-vocabulary sort for top-k/top-p, exponential race with a vocabulary of random numbers
per row, dense penalty masks), in one process.

    python -m triode.load_tests.sampler_bench [--rows 64] [--spread 4]

`--spread` scales random logits: 4 gives peaked distributions like a language model's; 1 is
nearly flat (the worst case for top-p, which then needs the whole vocabulary).
"""

from __future__ import annotations

import argparse
import time

import torch

from triode.engine.sampling.sampler import Sampler, SamplingRow
from triode.engine.sampling.sampling_params import SamplingParams

_NEG_INF = float("-inf")


def naive_sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The textbook vectorised sampler, as a baseline."""
    device = logits.device
    params = [r.params for r in rows]
    logits = logits.clone()
    if any(p.has_penalties for p in params):
        counts = torch.zeros_like(logits)
        width = max(len(r.output_token_ids) for r in rows)
        ids = torch.tensor(
            [r.output_token_ids + [0] * (width - len(r.output_token_ids)) for r in rows]
        )
        ones = torch.tensor(
            [
                [1.0] * len(r.output_token_ids) + [0.0] * (width - len(r.output_token_ids))
                for r in rows
            ]
        )
        counts.scatter_add_(1, ids, ones)
        seen = counts > 0
        width = max(len(r.prompt_token_ids) for r in rows)
        prompt = torch.tensor(
            [
                r.prompt_token_ids + r.prompt_token_ids[:1] * (width - len(r.prompt_token_ids))
                for r in rows
            ]
        )
        seen.scatter_(1, prompt, True)
        rep = torch.tensor([p.repetition_penalty for p in params])[:, None].expand_as(logits)
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        logits -= torch.tensor([p.frequency_penalty for p in params])[:, None] * counts
        logits -= torch.tensor([p.presence_penalty for p in params])[:, None] * seen.float()
    if all(p.is_greedy for p in params):
        return logits.argmax(dim=-1)
    logits = logits / torch.tensor([max(p.temperature, 1e-5) for p in params])[:, None]
    vocab = logits.shape[1]
    if any(0 < p.top_k < vocab or p.top_p < 1 for p in params):
        values, index = logits.sort(dim=-1, descending=True)
        keep = (
            torch.arange(vocab)[None, :] < torch.tensor([p.top_k or vocab for p in params])[:, None]
        )
        probs = values.masked_fill(~keep, _NEG_INF).softmax(dim=-1)
        keep &= (probs.cumsum(dim=-1) - probs) < torch.tensor([p.top_p for p in params])[:, None]
        logits = logits.masked_fill(~torch.empty_like(keep).scatter_(1, index, keep), _NEG_INF)
    if any(p.min_p for p in params):
        probs = logits.softmax(dim=-1)
        floor = (
            probs.max(dim=-1, keepdim=True).values
            * torch.tensor([p.min_p for p in params])[:, None]
        )
        logits = logits.masked_fill(probs < floor, _NEG_INF)
    probs = logits.softmax(dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1).to(device)


CASES = {
    "greedy": SamplingParams(temperature=0),
    "temperature 0.7": SamplingParams(temperature=0.7),
    "top_p 0.9": SamplingParams(temperature=0.7, top_p=0.9),
    "top_k 50": SamplingParams(temperature=0.7, top_k=50),
    "min_p 0.05": SamplingParams(temperature=0.7, min_p=0.05),
    "penalties": SamplingParams(temperature=0.7, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.1),
}  # fmt: skip


def _time(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--spread", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    logits = torch.randn(args.rows, args.vocab) * args.spread
    sampler = Sampler()
    print(
        f"{args.rows} rows x {args.vocab} vocab, logit spread {args.spread}, {torch.get_num_threads()} threads"
    )
    for name, params in CASES.items():
        rows = [
            SamplingRow(params, list(range(300, 400)), list(range(500, 550)), 2, None)
        ] * args.rows
        ours = _time(lambda rows=rows: sampler(logits, rows), args.reps)
        naive = _time(lambda rows=rows: naive_sample(logits, rows), args.reps)
        print(f"  {name:16s} triode {ours:7.1f} ms   naive {naive:7.1f} ms   {naive / ours:5.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
