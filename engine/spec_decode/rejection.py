"""Verification of proposed tokens: which drafts the target model accepts, and the token it
adds after them, keeping the output distribution exactly the non-speculative one.

Each speculating request brings k drafts and k+1 rows of logits (the target model at the
position of the last accepted token and after each draft). Row j is processed exactly as the
sampler processes a row whose output already holds drafts[:j] (min_tokens masking, penalties,
temperature, top-k, top-p, min-p: engine.sampling.sampler's own functions), giving the target
distribution p_j. Then:

- greedy requests accept draft j while it is the argmax of row j; the first mismatch, or row k
  when every draft is accepted, gives the argmax as the next token;
- sampled requests accept draft j with probability min(1, p_j(d)/q_j(d)); on the first rejection
  the token is drawn from max(p_j - q_j, 0) normalised; when all k are accepted a bonus token is
  drawn from p_k. For n-gram drafts q_j is one-hot on the draft (so acceptance is p_j(d) and the
  residual is p_j without d). This is the standard speculative-sampling argument: the first
  emitted token is distributed as p_0, and each later one as p_j given the accepted prefix.

Every request draws 2k+1 uniform numbers per step (k acceptances, k residual draws, one bonus),
from its own generator when seeded, so seeded requests are reproducible. One host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from triode.engine.sampling.sampler import (
    Sampler,
    SamplingRow,
    apply_penalties,
    apply_top_k_top_p_min_p,
)


@dataclass(slots=True)
class DraftSpan:
    """One speculating request's rows: logits rows [start, start + len(draft_ids)] (k+1)."""

    start: int
    draft_ids: list[int]
    generator: torch.Generator | None
    is_greedy: bool


def acceptance_probability(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """min(1, p/q) for each draft: p and q are the target's and the proposer's probability of
    the drafted token."""
    return (p_draft / q_draft).clamp(max=1.0)


def process_logits(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The logits after min_tokens masking and penalties (what greedy rows take the argmax of,
    and sampled rows divide by their temperature), exactly as the Sampler does."""
    out = logits.float().clone()
    if any(len(r.output_token_ids) < r.params.min_tokens for r in rows):
        Sampler._mask_min_tokens(out, rows, set())
    if any(r.params.has_penalties for r in rows):
        apply_penalties(out, rows)
    return out


def target_probs(processed: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The sampling distribution of each (sampled) row: softmax of the temperature-scaled
    logits with what top-k, top-p and min-p exclude masked out."""
    temperature = torch.tensor([r.params.temperature for r in rows], device=processed.device)
    scaled = processed / temperature[:, None]
    return apply_top_k_top_p_min_p(scaled, rows).softmax(dim=-1)


def draw_from_probs(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One index per row from (unnormalised) probabilities, by inverse CDF; right-side search
    never lands on a zero-probability column."""
    cdf = probs.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
    return picked.clamp_(max=probs.shape[1] - 1)


def verify(
    logits: torch.Tensor,
    rows: list[SamplingRow],
    spans: list[DraftSpan],
    draft_probs: list[torch.Tensor | None] | None = None,
) -> list[list[int]]:
    """For each span: its accepted drafts followed by one token from the target model.

    `draft_probs[i]`, when given, is span i's proposer distribution [k, V] (a draft model);
    None means the drafts are certain (n-gram: q one-hot)."""
    processed = process_logits(logits, rows)
    argmax = processed.argmax(dim=-1)
    sampled_spans = [i for i, s in enumerate(spans) if not s.is_greedy and s.draft_ids]
    accept: list[list[bool]] = [[] for _ in spans]
    residual: list[list[int]] = [[] for _ in spans]
    bonus: list[int] = [0] * len(spans)
    if sampled_spans:
        accept_t, residual_t, bonus_t = _rejection_sample(
            processed, rows, [spans[i] for i in sampled_spans], draft_probs, sampled_spans
        )
        for j, i in enumerate(sampled_spans):
            accept[i] = accept_t[j]
            residual[i] = residual_t[j]
            bonus[i] = bonus_t[j]
    argmax_list = argmax.tolist()
    results = []
    for i, span in enumerate(spans):
        k = len(span.draft_ids)
        if span.is_greedy or not k:
            chosen = argmax_list[span.start : span.start + k + 1]
            tokens = []
            for j, draft in enumerate(span.draft_ids):
                if chosen[j] != draft:
                    tokens.append(chosen[j])
                    break
                tokens.append(draft)
            else:
                tokens.append(chosen[k])
            results.append(tokens)
            continue
        tokens = []
        for j, draft in enumerate(span.draft_ids):
            if not accept[i][j]:
                tokens.append(residual[i][j])
                break
            tokens.append(draft)
        else:
            tokens.append(bonus[i])
        results.append(tokens)
    return results


def _rejection_sample(
    processed: torch.Tensor,
    rows: list[SamplingRow],
    spans: list[DraftSpan],
    draft_probs: list[torch.Tensor | None] | None,
    span_indices: list[int],
) -> tuple[list[list[bool]], list[list[int]], list[int]]:
    """Acceptance decisions, residual draws and bonus draws of sampled spans (host lists)."""
    device = processed.device
    draft_rows: list[int] = []
    bonus_rows: list[int] = []
    draft_ids: list[int] = []
    uniforms = []
    for span in spans:
        k = len(span.draft_ids)
        draft_rows.extend(range(span.start, span.start + k))
        bonus_rows.append(span.start + k)
        draft_ids.extend(span.draft_ids)
        u = torch.empty(2 * k + 1, device=device)
        u.uniform_(generator=span.generator) if span.generator is not None else u.uniform_()
        uniforms.append(u)
    all_rows = draft_rows + bonus_rows
    probs = target_probs(processed[all_rows], [rows[r] for r in all_rows])
    num_drafts = len(draft_rows)
    p = probs[:num_drafts]
    ids = torch.tensor(draft_ids, device=device)
    q_full = None
    if draft_probs is not None and any(draft_probs[i] is not None for i in span_indices):
        q_full = torch.cat(
            [
                draft_probs[i]
                if draft_probs[i] is not None
                else torch.nn.functional.one_hot(
                    torch.tensor(s.draft_ids, device=device), p.shape[1]
                ).to(p.dtype)
                for i, s in zip(span_indices, spans)
            ]
        )
        q_draft = q_full.gather(1, ids[:, None])[:, 0]
    else:
        q_draft = torch.ones(num_drafts, device=device)
    p_draft = p.gather(1, ids[:, None])[:, 0]
    u_accept = torch.cat([u[: len(s.draft_ids)] for u, s in zip(uniforms, spans)])
    u_residual = torch.cat(
        [u[len(s.draft_ids) : 2 * len(s.draft_ids)] for u, s in zip(uniforms, spans)]
    )
    u_bonus = torch.stack([u[-1] for u in uniforms])
    accepted = u_accept < acceptance_probability(p_draft, q_draft)
    if q_full is None:
        residual_probs = p.scatter(1, ids[:, None], 0.0)
    else:
        residual_probs = (p - q_full).clamp_(min=0.0)
    # A row whose residual is empty (p == q) always accepts; draw from p to stay finite.
    empty = residual_probs.sum(dim=-1, keepdim=True) <= 0
    residual_probs = torch.where(empty, p, residual_probs)
    residual_ids = draw_from_probs(residual_probs, u_residual)
    bonus_ids = draw_from_probs(probs[num_drafts:], u_bonus)
    acc, res, bon = accepted.tolist(), residual_ids.tolist(), bonus_ids.tolist()
    accept_out, residual_out = [], []
    offset = 0
    for span in spans:
        k = len(span.draft_ids)
        accept_out.append(acc[offset : offset + k])
        residual_out.append(res[offset : offset + k])
        offset += k
    return accept_out, residual_out, bon
