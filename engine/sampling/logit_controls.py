"""What a request does to its own logits before sampling: a grammar's token bitmask,
allowed_token_ids, bad_words and logit_bias. Each is one vectorised op over the rows that use
it; nothing loops over the vocabulary in Python.

Every token id here was range-checked against the vocabulary when the request was added
(`LLMEngine.validate`), so none can index out of bounds.
"""

from __future__ import annotations

import numpy as np
import torch

from triode.engine.sampling.sampling_params import MAX_LOGIT_BIAS, SamplingParams

_NEG_INF = float("-inf")


def unpack_bitmask(words: torch.Tensor, vocab_size: int, device: torch.device) -> torch.Tensor:
    """llguidance's bitmask [R, W] int32 (bit j of word i: token 32*i + j may be sampled) as a
    bool tensor [R, vocab_size] on `device`; tokens past the mask's width are not allowed."""
    num_bits = words.shape[1] * 32
    if device.type == "cpu":
        # Bytes in little-endian order, bits least-significant first: the token order.
        raw = np.unpackbits(words.numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(raw).view(torch.bool)
    else:
        shifts = torch.arange(32, device=device, dtype=torch.int32)
        words = words.to(device, non_blocking=True)
        allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().view(words.shape[0], num_bits)
    if num_bits >= vocab_size:
        return allowed[:, :vocab_size]
    pad = torch.zeros(allowed.shape[0], vocab_size - num_bits, dtype=torch.bool, device=device)
    return torch.cat([allowed, pad], dim=1)


def apply_token_bitmask(logits: torch.Tensor, row_ids: list[int], words: torch.Tensor) -> None:
    """Set to -inf, in place, what the grammar forbids in rows `row_ids`."""
    allowed = unpack_bitmask(words, logits.shape[1], logits.device)
    if len(row_ids) == logits.shape[0] and row_ids == list(range(len(row_ids))):
        logits.masked_fill_(~allowed, _NEG_INF)
    else:
        index = torch.tensor(row_ids, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed, _NEG_INF)


def apply_logit_controls(
    logits: torch.Tensor, params: list[SamplingParams], outputs: list[list[int]]
) -> None:
    """allowed_token_ids, bad_words and logit_bias for every row that sets them, in place."""
    device = logits.device
    allowed_rows = [i for i, p in enumerate(params) if p.allowed_token_ids]
    if allowed_rows:
        keep = torch.zeros(len(allowed_rows), logits.shape[1], dtype=torch.bool, device=device)
        for j, i in enumerate(allowed_rows):
            keep[j, params[i].allowed_token_ids] = True
        index = torch.tensor(allowed_rows, device=device)
        logits[index] = logits[index].masked_fill(~keep, _NEG_INF)

    ban_rows: list[int] = []
    ban_tokens: list[int] = []
    for i, p in enumerate(params):
        if p.bad_words_token_ids:
            for token in banned_next_tokens(p.bad_words_token_ids, outputs[i]):
                ban_rows.append(i)
                ban_tokens.append(token)
    bias_rows: list[int] = []
    bias_tokens: list[int] = []
    bias_values: list[float] = []
    for i, p in enumerate(params):
        if p.logit_bias:
            for token, bias in p.logit_bias.items():
                # NOTE: -100 is a ban (OpenAI: "should result in a ban"); adding -100 alone
                # would still leave the token possible when every other logit is lower.
                if bias <= -MAX_LOGIT_BIAS:
                    ban_rows.append(i)
                    ban_tokens.append(token)
                else:
                    bias_rows.append(i)
                    bias_tokens.append(token)
                    bias_values.append(float(bias))
    if bias_rows:
        logits.index_put_(
            (torch.tensor(bias_rows, device=device), torch.tensor(bias_tokens, device=device)),
            torch.tensor(bias_values, dtype=logits.dtype, device=device),
            accumulate=True,
        )
    if ban_rows:
        logits.index_put_(
            (torch.tensor(ban_rows, device=device), torch.tensor(ban_tokens, device=device)),
            torch.tensor(_NEG_INF, dtype=logits.dtype, device=device),
        )


def banned_next_tokens(bad_words_token_ids: list[list[int]], output: list[int]) -> list[int]:
    """The tokens that would complete a bad word now: a one-token word always, a longer one
    when the output ends with all of it but its last token."""
    banned = []
    for seq in bad_words_token_ids:
        prefix = seq[:-1]
        if not prefix or (
            len(output) >= len(prefix) and output[len(output) - len(prefix) :] == prefix
        ):
            banned.append(seq[-1])
    return banned


def resolve_bad_words(tokenizer: object, params: SamplingParams) -> SamplingParams:
    """`params` with its bad words as token sequences (a no-op when there are none or it is
    done already)."""
    if params.bad_words and params.bad_words_token_ids is None:
        return params.clone(bad_words_token_ids=bad_words_token_ids(tokenizer, params.bad_words))
    return params


def bad_words_token_ids(tokenizer: object, words: list[str]) -> list[list[int]]:
    """Each bad word as the token sequences it can appear as: on its own and after a space
    (byte-level BPE tokenizes " word" differently from "word")."""
    sequences: list[list[int]] = []
    for word in words:
        for text in (word.lstrip(), " " + word.lstrip()):
            ids = tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
            if ids and ids not in sequences:
                sequences.append(list(ids))
    return sequences
