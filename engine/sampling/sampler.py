"""The sampler: logits [R, V] -> one token per row, vectorised over the batch.

Order of operations (as in vLLM): the grammar's token bitmask (constrained decoding), then
allowed_token_ids, bad_words and logit_bias, min_tokens masking, penalties (repetition on prompt+output,
presence and frequency on the output), then greedy rows take the argmax; the others divide by
temperature, apply top-k, then top-p, then min-p, and draw by inverse CDF with one uniform
number per row, so a row with its own seed draws from its own generator without any per-row
work over the vocabulary. Logprobs are of the model's raw distribution (log-softmax of the
logits before any processing), as vLLM reports them by default.

NOTE: on a CPU every pass over a [64, 49152] tensor costs a millisecond or more, and sorting it
~100 ms, so rows with top-k/top-p sample among the top `_CANDIDATES` tokens found with `topk`
(exact: a row whose candidates hold less than top_p of the mass falls back to a full sort), and
nothing draws a vocabulary's worth of random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from triode.engine.sampling.logit_controls import apply_logit_controls, apply_token_bitmask
from triode.engine.sampling.sampling_params import SamplingParams

_NEG_INF = float("-inf")
_CANDIDATES = 256


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs to know about one row."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_id: int | None
    generator: torch.Generator | None


@dataclass(slots=True)
class RowBitmask:
    """A grammar's token bitmask for some rows: `words[j]` (llguidance's packed int32 format)
    is the mask of row `row_ids[j]`."""

    row_ids: list[int]
    words: torch.Tensor


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    # Per row: (sampled token's logprob, [(token, logprob)] of the top-k), or None.
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def _row_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def _padded(lists: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists as [R, L] (padded with each row's first id, or 0) and a validity mask."""
    width = max((len(x) for x in lists), default=0)
    ids = [x + (x[:1] or [0]) * (width - len(x)) for x in lists]
    valid = [[True] * len(x) + [False] * (width - len(x)) for x in lists]
    return torch.tensor(ids, device=device), torch.tensor(valid, device=device)


# ---- penalties ------------------------------------------------------------------------------


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """Repetition, frequency and presence penalties, in place."""
    device = logits.device
    rep = [r.params.repetition_penalty for r in rows]
    if any(p != 1.0 for p in rep):
        # Only the tokens seen so far change: gather them, penalise, scatter back (a token seen
        # twice is written twice with the same value, so it is penalised once).
        seen, _ = _padded([r.prompt_token_ids + r.output_token_ids for r in rows], device)
        values = logits.gather(1, seen)
        penalty = _row_tensor(rep, device)
        logits.scatter_(1, seen, torch.where(values > 0, values / penalty, values * penalty))
    freq = [r.params.frequency_penalty for r in rows]
    presence = [r.params.presence_penalty for r in rows]
    if any(freq) or any(presence):
        out_ids, valid = _padded([r.output_token_ids for r in rows], device)
        if out_ids.shape[1]:
            counts = torch.zeros_like(logits).scatter_add_(1, out_ids, valid.float())
            if any(freq):
                logits -= _row_tensor(freq, device) * counts
            if any(presence):
                logits -= _row_tensor(presence, device) * (counts > 0).float()


# ---- top-k / top-p / min-p --------------------------------------------------------------------


def _candidates(
    scaled: torch.Tensor, top_k: list[int], top_p: list[float]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """For rows that all set top-k and/or top-p: the kept candidates' values (sorted descending,
    -inf where excluded) and token ids, [R, C]; and the rows whose top-p mass is not reached
    within the candidates (their result is not valid: they need `_candidates_by_sort`)."""
    device = scaled.device
    vocab = scaled.shape[1]
    has_top_p = any(p < 1.0 for p in top_p)
    size = min(vocab, max([k for k in top_k if k < vocab] + [_CANDIDATES if has_top_p else 1]))
    values, index = scaled.topk(size, dim=-1)
    keep = (
        torch.arange(size, device=device)[None, :]
        < torch.tensor([min(k, size) for k in top_k], device=device)[:, None]
    )
    short: list[int] = []
    if has_top_p:
        # Top-p is measured after top-k: over the top-k tokens where top-k is set, else over
        # the whole vocabulary.
        has_k = torch.tensor([k < vocab for k in top_k], device=device)[:, None]
        norm = torch.where(
            has_k,
            torch.logsumexp(values.masked_fill(~keep, _NEG_INF), dim=-1, keepdim=True),
            torch.logsumexp(scaled, dim=-1, keepdim=True),
        )
        probs = (values - norm).exp().masked_fill(~keep, 0.0)
        cum = probs.cumsum(dim=-1)
        p = _row_tensor(top_p, device)
        keep &= (cum - probs) < p  # the smallest prefix reaching p; the first token stays
        short = torch.nonzero(((cum[:, -1:] < p) & ~has_k)[:, 0]).flatten().tolist()
    return values.masked_fill(~keep, _NEG_INF), index, short


def _candidates_by_sort(
    scaled: torch.Tensor, top_p: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p over the whole (sorted) vocabulary, for rows whose mass is spread thin."""
    values, index = scaled.sort(dim=-1, descending=True)
    probs = values.softmax(dim=-1)
    keep = (probs.cumsum(dim=-1) - probs) < _row_tensor(top_p, scaled.device)
    return values.masked_fill(~keep, _NEG_INF), index


def _apply_min_p(values: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Drop tokens less likely than min_p times the most likely one (in logit space: no
    normalisation needed)."""
    floor = (
        values.max(dim=-1, keepdim=True).values
        + torch.tensor([math.log(p) if p > 0 else _NEG_INF for p in min_p], device=values.device)[
            :, None
        ]
    )
    return values.masked_fill(values < floor, _NEG_INF)


def _restricted_candidates(
    scaled: torch.Tensor, rows: list[SamplingRow]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates [R, C] (values, token ids) after top-k, top-p and min-p for restricted rows."""
    vocab = scaled.shape[1]
    top_k = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    top_p = [r.params.top_p for r in rows]
    values, index, short = _candidates(scaled, top_k, top_p)
    if short:
        full_values, full_index = _candidates_by_sort(scaled[short], [top_p[i] for i in short])
        size = values.shape[1]
        pad = full_values.shape[1] - size
        values = torch.nn.functional.pad(values, (0, pad), value=_NEG_INF)
        index = torch.nn.functional.pad(index, (0, pad), value=0)
        values[short] = full_values
        index[short] = full_index
    min_p = [r.params.min_p for r in rows]
    if any(min_p):
        values = _apply_min_p(values, min_p)
    return values, index


def apply_top_k_top_p_min_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The temperature-scaled logits with what top-k, top-p and min-p exclude set to -inf (the
    same masks the sampler uses; for tests and inspection)."""
    out = logits.clone()
    vocab = logits.shape[1]
    restricted = [
        i for i, r in enumerate(rows) if 0 < r.params.top_k < vocab or r.params.top_p < 1.0
    ]
    if restricted:
        values, index = _restricted_candidates(logits[restricted], [rows[i] for i in restricted])
        out[restricted] = torch.full_like(out[restricted], _NEG_INF).scatter_(1, index, values)
    skip = set(restricted)
    plain = [i for i in range(len(rows)) if i not in skip and rows[i].params.min_p]
    if plain:
        out[plain] = _apply_min_p(out[plain], [rows[i].params.min_p for i in plain])
    return out


# ---- sampling ---------------------------------------------------------------------------------


def _inverse_cdf(values: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Column index drawn from softmax(values) per row, given one uniform number per row.
    side="right" never lands on a zero-probability column."""
    cdf = values.softmax(dim=-1).cumsum(dim=-1)
    picked = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)[:, 0]
    return picked.clamp_(max=values.shape[1] - 1)


class Sampler:
    def __call__(
        self, logits: torch.Tensor, rows: list[SamplingRow], bitmask: RowBitmask | None = None
    ) -> SamplerOutput:
        assert logits.shape[0] == len(rows)
        raw = logits.float()
        num_logprobs = [r.params.logprobs for r in rows]
        want_logprobs = any(n is not None for n in num_logprobs)
        has_min_tokens = any(len(r.output_token_ids) < r.params.min_tokens for r in rows)
        has_penalties = any(r.params.has_penalties for r in rows)
        has_controls = any(r.params.has_logit_controls for r in rows)
        # Logprobs describe the raw distribution, so edit a copy when they are wanted.
        edits = has_min_tokens or has_penalties or has_controls or bitmask is not None
        logits = raw.clone() if want_logprobs and edits else raw
        if bitmask is not None:
            apply_token_bitmask(logits, bitmask.row_ids, bitmask.words)
        if has_controls:
            apply_logit_controls(
                logits, [r.params for r in rows], [r.output_token_ids for r in rows]
            )
        if has_min_tokens:
            # NOTE: a grammar decides where its output ends; banning EOS there could leave a
            # finished grammar's row without any allowed token, so min_tokens skips those rows.
            skip = set(bitmask.row_ids) if bitmask is not None else set()
            self._mask_min_tokens(logits, rows, skip)
        if has_penalties:
            apply_penalties(logits, rows)

        random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if len(random_rows) == len(rows):
            sampled = self._sample(logits, rows)
        else:
            sampled = logits.argmax(dim=-1)
            if random_rows:
                picked = self._sample(logits[random_rows], [rows[i] for i in random_rows])
                sampled[random_rows] = picked

        if not want_logprobs:
            return SamplerOutput(sampled.tolist(), [None] * len(rows))
        return self._with_logprobs(raw, sampled, num_logprobs)

    @staticmethod
    def _mask_min_tokens(logits: torch.Tensor, rows: list[SamplingRow], skip: set[int]) -> None:
        for i, r in enumerate(rows):
            p = r.params
            if len(r.output_token_ids) < p.min_tokens and i not in skip:
                banned = list(p.stop_token_ids)
                if r.eos_token_id is not None and not p.ignore_eos:
                    banned.append(r.eos_token_id)
                if banned:
                    logits[i, banned] = _NEG_INF

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """One draw per row from rows that all sample (temperature > 0)."""
        device = logits.device
        scaled = logits / _row_tensor([r.params.temperature for r in rows], device)
        uniform = torch.empty(len(rows), 1, device=device)
        seeded = [i for i, r in enumerate(rows) if r.generator is not None]
        if len(seeded) < len(rows):
            uniform.uniform_()
        for i in seeded:
            uniform[i].uniform_(generator=rows[i].generator)
        vocab = scaled.shape[1]
        restricted = [
            i for i, r in enumerate(rows) if 0 < r.params.top_k < vocab or r.params.top_p < 1.0
        ]
        picked = torch.empty(len(rows), dtype=torch.int64, device=device)
        if restricted:
            values, index = _restricted_candidates(
                scaled[restricted], [rows[i] for i in restricted]
            )
            column = _inverse_cdf(values, uniform[restricted])
            picked[restricted] = index.gather(1, column[:, None])[:, 0]
        if len(restricted) < len(rows):
            skip = set(restricted)
            plain = [i for i in range(len(rows)) if i not in skip]
            values = scaled[plain] if len(plain) < len(rows) else scaled
            min_p = [rows[i].params.min_p for i in plain]
            if any(min_p):
                values = _apply_min_p(values, min_p)
            picked[plain] = _inverse_cdf(values, uniform[plain])
        return picked

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
