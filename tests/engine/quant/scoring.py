"""Teacher-forced scoring of a text: our engine's model (paged KV cache, chunked like prefill)
and transformers' model, both giving each position's top-1 token and the log-probability of
the token that follows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from triode.engine.config import EngineConfig
from triode.engine.runner.attention import AttentionMetadata
from triode.engine.runner.model_runner import ModelRunner

TEXT = Path(__file__).parent / "data" / "us_documents.txt"


def text_ids(tokenizer) -> list[int]:
    return tokenizer.encode(TEXT.read_text(), add_special_tokens=False)


def _summarise(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logits.argmax(dim=-1), logprobs.gather(1, targets[:, None])[:, 0]


@torch.inference_mode()
def score_transformers(folder: Path, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
    targets = torch.tensor(ids[1:])
    tops, logprobs = [], []
    for start in range(0, len(ids) - 1, 512):  # the LM head in pieces: 49k logits per row
        end = min(start + 512, len(ids) - 1)
        top, lp = _summarise(model.lm_head(hidden[start:end]), targets[start:end])
        tops.append(top)
        logprobs.append(lp)
    return torch.cat(tops), torch.cat(logprobs)


@torch.inference_mode()
def score_engine(
    folder: Path,
    ids: list[int],
    chunk: int,
    prepare: Callable[[ModelRunner], None] | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, ModelRunner]:
    """Run the text through the engine's model `chunk` tokens per step (`prepare` may set the
    loaded model's kernels first)."""
    block_size = 16
    num_blocks = -(-len(ids) // block_size)
    config = EngineConfig(block_size=block_size, num_kv_blocks=num_blocks, **options)
    runner = ModelRunner(config, folder)
    if prepare is not None:
        prepare(runner)
    blocks = list(range(num_blocks))
    targets = torch.tensor(ids[1:] + [0])
    tops, logprobs = [], []
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        table = blocks[: -(-end // block_size)]
        attn = AttentionMetadata.build(
            [end - start],
            [end],
            [table],
            list(range(start, end)),  # blocks are in order: slot = position
            block_size,
            runner.kv_bytes_per_token,
            runner.device,
            runner.attention,
        )
        hidden = runner.model(
            torch.tensor(ids[start:end]), torch.arange(start, end), runner.kv_caches, attn
        )
        top, lp = _summarise(runner.model.compute_logits(hidden), targets[start:end])
        tops.append(top)
        logprobs.append(lp)
    return torch.cat(tops)[:-1], torch.cat(logprobs)[:-1], runner


def compare(
    ours: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float, float]:
    """(top-1 agreement, our perplexity, the reference's perplexity)."""
    agreement = (ours[0] == reference[0]).float().mean().item()
    return agreement, torch.exp(-ours[1].mean()).item(), torch.exp(-reference[1].mean()).item()
