"""The draft-model proposer: a smaller (or quantized) model with the same tokenizer guesses the
next k tokens of each speculating request, and the served model verifies them in its step.

The draft runs on the engine's own code: its weights are loaded by a ModelRunner (the same
model classes, loader, quantized linears and attention kernels as the served model), into its
own paged KV cache (DraftKVCache: its own block pool). Each step, for the requests about to
decode:

1. roll the draft's cache back to the tokens the request really has (drafts the served model
   rejected are dropped; what it accepted stays), leaving the last real token to compute;
2. one batched forward pass over every request's tokens the draft has not seen (the accepted
   tokens of the last step, or a new request's whole context, chunked under the step's token
   budget), then k-1 passes of one token per request: k small forward passes in all, each
   giving the next draft of every request;
3. each draft is drawn from q, the draft model's distribution after the request's own
   min_tokens masking, penalties, temperature, top-k, top-p and min-p (rejection.py's
   functions: exactly the transforms the target side applies to p), counting the drafts
   before it as output; greedy requests take q's argmax. q goes to rejection sampling, which
   keeps the output distribution the served model's whatever q is.

Seeded requests draw their drafts from a generator of their own, seeded from the request's
seed through a hash (never the verification's stream: drafts and acceptance draws must be
independent for the acceptance test to be exact), so they stay reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from triode.engine.config import EngineConfig
from triode.engine.core.request import Request, RequestStatus
from triode.engine.runner.attention import AttentionMetadata
from triode.engine.runner.model_runner import ModelRunner
from triode.engine.sampling.sampler import SamplingRow
from triode.engine.spec_decode.config import SpeculativeConfig
from triode.engine.spec_decode.draft_kv import DraftKVCache, cdiv
from triode.engine.spec_decode.rejection import draw_from_probs, process_logits, target_probs

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DraftProposal:
    """One request's drafts, and for a sampled request q: [len(token_ids), vocab] (row j is
    the distribution token_ids[j] was drawn from); None for a greedy one."""

    token_ids: list[int]
    probs: torch.Tensor | None


@dataclass(slots=True)
class _Plan:
    """A request the draft proposes for this step."""

    request: Request
    k: int
    feed: list[int]  # the first pass's tokens: what the draft has not seen, ending at the last
    generator: torch.Generator | None
    drafts: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)


class DraftModelProposer:
    def __init__(
        self, runner: ModelRunner, num_speculative_tokens: int, max_num_batched_tokens: int
    ) -> None:
        self.runner = runner  # the draft's weights, KV tensors and attention backend
        self.k = num_speculative_tokens
        self.kv = DraftKVCache(runner.num_blocks, runner.block_size)
        # Tokens of not-yet-seen context the first pass may take (a long new prompt is caught
        # up in chunks over several steps, as the served model's prefill is).
        self.max_catch_up_tokens = max_num_batched_tokens
        self._generators: dict[str, torch.Generator] = {}
        self.num_forward_passes = 0
        self.num_failures = 0

    # ---- proposing --------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, requests: list[Request], max_model_len: int) -> dict[str, DraftProposal]:
        """Drafts for each request that gets any (by request id). A request the draft cannot
        serve this step (its pool is short, its context is still being caught up, it is at
        its length limit) gets none and decodes one token as usual."""
        plans, chunks = self._plan(requests, max_model_len)
        if not plans and not chunks:
            return {}
        states = [(g, g.get_state()) for g in (p.generator for p in plans) if g is not None]
        try:
            self._run(plans, chunks)
        except Exception:
            # NOTE: a request whose sampling parameters make the transforms raise fails in the
            # served model's step (step_isolation.py says whose fault it was); here the draft
            # only stops proposing for this step, and forgets what it half wrote.
            logger.exception("the draft model failed; no speculation this step")
            self.num_failures += 1
            for gen, state in states:
                gen.set_state(state)
            for request in [p.request for p in plans] + [r for r, _ in chunks]:
                self.kv.free(request.request_id)
            return {}
        return {
            p.request.request_id: DraftProposal(p.drafts, torch.stack(p.probs) if p.probs else None)
            for p in plans
        }

    def _plan(
        self, requests: list[Request], max_model_len: int
    ) -> tuple[list[_Plan], list[tuple[Request, list[int]]]]:
        """Roll back, pick the work and reserve the draft's slots for all of it up front."""
        budget = self.max_catch_up_tokens
        max_positions = self.runner.max_position_embeddings
        plans: list[_Plan] = []
        chunks: list[tuple[Request, list[int]]] = []
        pending: list[tuple[int, Request, int]] = []
        for request in requests:
            num_computed = self.kv.rollback(request.request_id, request.all_token_ids)
            # The k-th draft is never fed: positions up to num_tokens + k - 2 are written.
            k = min(
                self.k,
                request.max_tokens - request.num_output_tokens - 1,
                max_model_len - request.num_tokens - 1,
                max_positions - request.num_tokens + 1,
            )
            if k > 0:
                pending.append((num_computed, request, k))
        # NOTE: the shortest catch-ups first: those requests propose this step, and a new
        # request's long context takes what budget is left, in chunks.
        pending.sort(key=lambda item: item[1].num_tokens - item[0])
        for num_computed, request, k in pending:
            if budget <= 0:
                break
            rid = request.request_id
            unseen = request.all_token_ids[num_computed:]
            if len(unseen) > budget:
                chunk = unseen[:budget]
                if self.kv.allocate(rid, len(chunk)):
                    chunks.append((request, chunk))
                    budget -= len(chunk)
                continue
            if not self.kv.allocate(rid, len(unseen) + k - 1):
                continue
            budget -= len(unseen)
            plans.append(_Plan(request, k, unseen, self._generator(request)))
        return plans, chunks

    def _generator(self, request: Request) -> torch.Generator | None:
        params = request.sampling_params
        if params.seed is None or params.is_greedy:
            return None
        gen = self._generators.get(request.request_id)
        if gen is None:
            gen = torch.Generator(device=self.runner.device)
            gen.manual_seed(draft_seed(params.seed + request.index))
            self._generators[request.request_id] = gen
        return gen

    def _run(self, plans: list[_Plan], chunks: list[tuple[Request, list[int]]]) -> None:
        feeds = [(p.request.request_id, p.feed) for p in plans]
        feeds += [(r.request_id, chunk) for r, chunk in chunks]
        logits = self._forward(feeds, len(plans))
        if plans:
            self._draw_next(plans, logits)
        for j in range(1, max((p.k for p in plans), default=0)):
            active = [p for p in plans if p.k > j]
            logits = self._forward([(p.request.request_id, p.drafts[-1:]) for p in active])
            self._draw_next(active, logits)

    def _forward(
        self, feeds: list[tuple[str, list[int]]], num_logits: int | None = None
    ) -> torch.Tensor:
        """One forward pass of the draft over `feeds` (sequence id, its next tokens); the
        logits at the last token of the first `num_logits` feeds (all by default)."""
        runner = self.runner
        bs = self.kv.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        q_lens: list[int] = []
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        last_rows: list[int] = []
        for seq_id, tokens in feeds:
            start = self.kv.num_computed(seq_id)
            slots += self.kv.write(seq_id, tokens)
            input_ids += tokens
            positions += range(start, start + len(tokens))
            q_lens.append(len(tokens))
            seq_lens.append(start + len(tokens))
            tables.append(self.kv.block_ids(seq_id))
            last_rows.append(len(input_ids) - 1)
        device = runner.device
        attn = AttentionMetadata.build(
            q_lens, seq_lens, tables, slots, bs, runner.kv_bytes_per_token, device, runner.attention
        )
        ids_t = torch.tensor(input_ids, dtype=torch.int64).to(device, non_blocking=True)
        pos_t = torch.tensor(positions, dtype=torch.int64).to(device, non_blocking=True)
        hidden = runner.model(ids_t, pos_t, runner.kv_caches, attn)
        self.num_forward_passes += 1
        rows = last_rows[: len(feeds) if num_logits is None else num_logits]
        if not rows:
            return hidden[:0]
        idx = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
        return runner.model.compute_logits(hidden.index_select(0, idx))

    def _draw_next(self, plans: list[_Plan], logits: torch.Tensor) -> None:
        """Each plan's next draft from its row of `logits` (one host sync)."""
        rows = [
            SamplingRow(
                p.request.sampling_params,
                p.request.prompt_token_ids,
                [*p.request.output_token_ids, *p.drafts],
                p.request.eos_token_id,
                p.generator,
            )
            for p in plans
        ]
        processed = process_logits(logits, rows)
        picked = processed.argmax(dim=-1)
        sampled = [i for i, p in enumerate(plans) if not p.request.sampling_params.is_greedy]
        if sampled:
            q = target_probs(processed[sampled], [rows[i] for i in sampled])
            uniform = torch.empty(len(sampled), device=q.device)
            if any(plans[i].generator is None for i in sampled):
                uniform.uniform_()
            for j, i in enumerate(sampled):
                gen = plans[i].generator
                if gen is not None:
                    uniform[j : j + 1].uniform_(generator=gen)
            picked[sampled] = draw_from_probs(q, uniform)
            for j, i in enumerate(sampled):
                plans[i].probs.append(q[j])
        for plan, token in zip(plans, picked.tolist()):
            plan.drafts.append(token)

    # ---- lifetime ---------------------------------------------------------------------------
    def release(self, requests: Mapping[str, Request]) -> None:
        """After a step (or an abort): free the draft state of sequences that stopped running
        (finished, aborted, failed, preempted) and roll the others back to the tokens they
        kept, so the draft's computed count is the accepted length again."""
        for seq_id in self.kv.seq_ids():
            request = requests.get(seq_id)
            if request is None or request.status != RequestStatus.RUNNING:
                self.kv.free(seq_id)
            else:
                self.kv.rollback(seq_id, request.all_token_ids)
        for seq_id in [s for s in self._generators if s not in requests]:
            del self._generators[seq_id]

    def pause(self) -> None:
        """Speculation paused under load: give the draft's whole cache back (the requests
        catch up, in chunks, when it resumes)."""
        self.kv.free_all()

    def check(self, requests: Mapping[str, Request]) -> None:
        """Invariants after a step: the pool's bookkeeping, and every sequence in the draft's
        cache is a running request whose real tokens start with what the draft holds."""
        self.kv.check()
        for seq_id in self.kv.seq_ids():
            request = requests.get(seq_id)
            assert request is not None and request.status == RequestStatus.RUNNING, seq_id
            held = self.kv.token_ids(seq_id)
            assert len(held) < request.num_tokens, (seq_id, len(held), request.num_tokens)
            assert held == request.all_token_ids[: len(held)], seq_id
            assert len(self.kv.block_ids(seq_id)) == cdiv(len(held), self.kv.block_size), seq_id


def draft_seed(seed: int) -> int:
    """The seed of a seeded request's draft generator: a hash of its own seed, so the drafts'
    random numbers never repeat the acceptance test's."""
    digest = hashlib.blake2b(f"triode-draft:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def load_draft_proposer(
    config: EngineConfig,
    spec: SpeculativeConfig,
    tokenizer: Any,
    vocab_size: int,
    max_model_len: int,
    target_num_blocks: int,
) -> DraftModelProposer:
    """Load the draft model of `spec` next to the served one, refusing one whose vocabulary
    differs (its token ids would mean other tokens)."""
    from triode.engine.models.loader import gguf_source, resolve_model

    assert spec.model is not None
    files = resolve_model(spec.model, config.cache_dir)
    check_same_vocabulary(tokenizer, files.folder, spec.model)
    method = spec.quantization or config.quantization
    if method == "gguf" and gguf_source(files.folder) is None:
        method = "none"  # the served model's GGUF blocks; a float draft stays float
    num_blocks = spec.draft_num_kv_blocks or min(
        target_num_blocks,
        cdiv(
            spec.disable_by_batch_size * (max_model_len + spec.num_speculative_tokens),
            config.block_size,
        ),
    )
    draft_config = dataclasses.replace(
        config,
        model=str(files.folder),
        quantization=method,  # type: ignore[arg-type]
        num_kv_blocks=num_blocks,
        speculative_config=None,
    )
    try:
        runner = ModelRunner(draft_config, files.folder)
    except ValueError as exc:
        raise ValueError(f"draft model {spec.model!r}: {exc}") from None
    if runner.vocab_size != vocab_size:
        raise ValueError(
            f"draft model {spec.model!r} has {runner.vocab_size} logits per token, the served "
            f"model {vocab_size}: a draft must share the served model's vocabulary"
        )
    logger.info(
        "draft model %s: %s; its KV cache: %d blocks of %d tokens",
        files.name,
        runner.weights_info.summary(),
        runner.num_blocks,
        runner.block_size,
    )
    return DraftModelProposer(runner, spec.num_speculative_tokens, config.max_num_batched_tokens)


def check_same_vocabulary(tokenizer: Any, folder: Path, name: str) -> None:
    """Refuse a draft whose tokenizer maps any token id to another token than the served
    model's does (or has ids the other lacks)."""
    from transformers import AutoTokenizer

    draft = AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    served = tokenizer.get_vocab()
    if draft == served:
        return
    served_by_id = {i: t for t, i in served.items()}
    draft_by_id = {i: t for t, i in draft.items()}
    num_differ = sum(
        1
        for i in served_by_id.keys() | draft_by_id.keys()
        if served_by_id.get(i) != draft_by_id.get(i)
    )
    raise ValueError(
        f"draft model {name!r} has another tokenizer than the served model ({num_differ} of "
        f"{max(len(served), len(draft))} token ids differ): a draft model must share the "
        "served model's tokenizer"
    )
