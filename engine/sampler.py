"""The sampler: logits [R, V] -> one token per row, vectorised over the batch.

Order of operations (as in vLLM): min_tokens masking, penalties (repetition on prompt+output,
presence and frequency on the output), then greedy rows take the argmax; the others divide by
temperature, apply top-k, top-p and min-p, and draw with the exponential race
(argmax(p / E), E ~ Exp(1)), which lets rows with their own seed draw from their own generator
without a per-row loop over the vocabulary. Logprobs are of the model's raw distribution
(log-softmax of the logits before any processing), as vLLM reports them by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampling_params import SamplingParams

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs to know about one row."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_id: int | None
    generator: torch.Generator | None


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    # Per row: (sampled token's logprob, [(token, logprob)] of the top-k), or None.
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def _row_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """Repetition, frequency and presence penalties, in place."""
    device = logits.device
    num_rows, vocab = logits.shape
    outputs = [r.output_token_ids for r in rows]
    counts = torch.zeros(num_rows, vocab, dtype=torch.float32, device=device)
    max_len = max((len(o) for o in outputs), default=0)
    if max_len:
        ids = torch.tensor([o + [0] * (max_len - len(o)) for o in outputs], device=device)
        ones = torch.tensor(
            [[1.0] * len(o) + [0.0] * (max_len - len(o)) for o in outputs], device=device
        )
        counts.scatter_add_(1, ids, ones)
    rep = [r.params.repetition_penalty for r in rows]
    if any(p != 1.0 for p in rep):
        seen = counts > 0
        max_prompt = max(len(r.prompt_token_ids) for r in rows)
        if max_prompt:
            # Pad with each row's own first token: marking it seen twice changes nothing.
            prompt = torch.tensor(
                [p + p[:1] * (max_prompt - len(p)) for p in (r.prompt_token_ids for r in rows)],
                device=device,
            )
            seen.scatter_(1, prompt, True)
        penalty = _row_tensor(rep, device).expand_as(logits)
        scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits.copy_(torch.where(seen, scaled, logits))
    freq = [r.params.frequency_penalty for r in rows]
    if any(freq):
        logits -= _row_tensor(freq, device) * counts
    presence = [r.params.presence_penalty for r in rows]
    if any(presence):
        logits -= _row_tensor(presence, device) * (counts > 0).float()


def apply_top_k_top_p_min_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Mask (to -inf) what top-k, top-p and min-p exclude; logits are already temperature-scaled."""
    device = logits.device
    vocab = logits.shape[1]
    top_k = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    top_p = [r.params.top_p for r in rows]
    if any(k < vocab for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        keep = torch.ones_like(sorted_logits, dtype=torch.bool)
        if any(k < vocab for k in top_k):
            k = torch.tensor(top_k, device=device)[:, None]
            keep &= torch.arange(vocab, device=device)[None, :] < k
        if any(p < 1.0 for p in top_p):
            probs = sorted_logits.masked_fill(~keep, _NEG_INF).softmax(dim=-1)
            # Keep the smallest prefix whose mass reaches p (the first token always stays).
            mass_before = probs.cumsum(dim=-1) - probs
            keep &= mass_before < _row_tensor(top_p, device)
        mask = torch.empty_like(keep).scatter_(1, sorted_idx, keep)
        logits = logits.masked_fill(~mask, _NEG_INF)
    min_p = [r.params.min_p for r in rows]
    if any(min_p):
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * _row_tensor(min_p, device)
        logits = logits.masked_fill(probs < threshold, _NEG_INF)
    return logits


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        assert logits.shape[0] == len(rows)
        raw = logits.float()
        num_logprobs = [r.params.logprobs for r in rows]
        want_logprobs = any(n is not None for n in num_logprobs)
        has_min_tokens = any(len(r.output_token_ids) < r.params.min_tokens for r in rows)
        has_penalties = any(r.params.has_penalties for r in rows)
        # Logprobs describe the raw distribution, so edit a copy when they are wanted.
        logits = raw.clone() if want_logprobs and (has_min_tokens or has_penalties) else raw
        if has_min_tokens:
            self._mask_min_tokens(logits, rows)
        if has_penalties:
            apply_penalties(logits, rows)

        greedy = [r.params.is_greedy for r in rows]
        if all(greedy):
            sampled = logits.argmax(dim=-1)
        else:
            sampled = self._sample_random(logits, rows, greedy)

        if not want_logprobs:
            return SamplerOutput(sampled.tolist(), [None] * len(rows))
        return self._with_logprobs(raw, sampled, num_logprobs)

    @staticmethod
    def _mask_min_tokens(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
        for i, r in enumerate(rows):
            p = r.params
            if len(r.output_token_ids) < p.min_tokens:
                banned = list(p.stop_token_ids)
                if r.eos_token_id is not None and not p.ignore_eos:
                    banned.append(r.eos_token_id)
                if banned:
                    logits[i, banned] = _NEG_INF

    @staticmethod
    def _sample_random(
        logits: torch.Tensor, rows: list[SamplingRow], greedy: list[bool]
    ) -> torch.Tensor:
        device = logits.device
        greedy_ids = logits.argmax(dim=-1)
        temps = [1.0 if g else r.params.temperature for r, g in zip(rows, greedy)]
        scaled = logits / _row_tensor(temps, device)
        scaled = apply_top_k_top_p_min_p(scaled, rows)
        probs = scaled.softmax(dim=-1)
        race = torch.empty_like(probs)
        unseeded = [i for i, r in enumerate(rows) if r.generator is None and not greedy[i]]
        if len(unseeded) == len(rows):
            race.exponential_()
        else:
            if unseeded:
                idx = torch.tensor(unseeded, device=device)
                race[idx] = torch.empty(len(unseeded), probs.shape[1], device=device).exponential_()
            for i, r in enumerate(rows):
                if r.generator is not None and not greedy[i]:
                    race[i].exponential_(generator=r.generator)
        random_ids = (probs / race).argmax(dim=-1)
        is_greedy = torch.tensor(greedy, device=device)
        return torch.where(is_greedy, greedy_ids, random_ids)

    @staticmethod
    def _with_logprobs(
        raw: torch.Tensor, sampled: torch.Tensor, num_logprobs: list[int | None]
    ) -> SamplerOutput:
        logprobs = raw.log_softmax(dim=-1)
        chosen = logprobs.gather(1, sampled[:, None])[:, 0]
        k = max(n or 0 for n in num_logprobs)
        if k:
            top_vals, top_ids = logprobs.topk(k, dim=-1)
            top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
        token_ids = sampled.tolist()
        chosen_list = chosen.tolist()
        out: list[tuple[float, list[tuple[int, float]]] | None] = []
        for i, n in enumerate(num_logprobs):
            if n is None:
                out.append(None)
            else:
                top = list(zip(top_ids[i][:n], top_vals[i][:n])) if n else []
                out.append((chosen_list[i], top))
        return SamplerOutput(token_ids, out)
