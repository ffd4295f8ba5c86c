"""The n-gram proposer (prompt lookup): guess the next tokens by finding the sequence's own
last few tokens earlier in its prompt or output and proposing what followed them there.

No model runs: a search over the request's token ids. It pays off where the output copies
its input (summaries that quote, code edits, retrieval answers) or repeats itself.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    def __init__(self, min_n: int, max_n: int, num_speculative_tokens: int) -> None:
        assert 1 <= min_n <= max_n
        self.min_n = min_n
        self.max_n = max_n
        self.k = num_speculative_tokens

    def propose(self, token_ids: list[int], k: int | None = None) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the longest
        suffix of `token_ids` of length min_n..max_n; [] when none occurs.

        NOTE: the latest occurrence, not the first: small models that loop repeat their most
        recent phrase, and a copied passage's continuation is the same at every occurrence.
        """
        k = self.k if k is None else k
        num = len(token_ids)
        if k <= 0 or num <= self.min_n:
            return []
        arr = np.asarray(token_ids, dtype=np.int64)
        # Candidate starts: positions holding the last token, before the last position.
        ends = np.flatnonzero(arr[:-1] == arr[-1])
        if ends.size == 0:
            return []
        for n in range(min(self.max_n, num - 1), self.min_n - 1, -1):
            suffix = arr[num - n :]
            starts = ends - (n - 1)
            starts = starts[starts >= 0]
            if starts.size == 0:
                continue
            windows = sliding_window_view(arr, n)[starts]
            hits = starts[(windows == suffix).all(axis=1)]
            if hits.size:
                follow = int(hits[-1]) + n
                return arr[follow : follow + k].tolist()
        return []
