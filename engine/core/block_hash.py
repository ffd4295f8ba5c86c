"""Prefix-cache identity of a full KV block: a keyed, chained cryptographic digest.

A block's digest covers its parent's digest (so it stands for every token before it), its own
token ids, and extra keys: anything besides the tokens that changes the block's K/V (a LoRA
adapter's identity, an image's hash, a tenant's cache salt). Python's `hash()` would do for
honest traffic, but its 64 bits can be collided on purpose: a client who crafts a prompt whose
block hashes equal another tenant's could read that tenant's cached K/V. BLAKE2b with a 32-byte
digest makes collisions infeasible, and keying it with a per-process random salt means digests
cannot even be predicted from outside (the salt can be fixed, e.g. to share a cache between
processes).
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Sequence

DIGEST_SIZE = 32
# What the first block of a sequence chains from.
ROOT_DIGEST = bytes(DIGEST_SIZE)
# Domain separation: these digests mean "triode KV block, format 1" and nothing else.
_PERSON = b"triode-kvblock1"

ExtraKey = str | bytes | int


class BlockHasher:
    """Computes chained block digests under one salt (random per process unless given)."""

    def __init__(self, salt: bytes | None = None) -> None:
        if salt is None:
            salt = os.urandom(DIGEST_SIZE)
        if len(salt) > hashlib.blake2b.MAX_KEY_SIZE:
            salt = hashlib.blake2b(salt, digest_size=DIGEST_SIZE).digest()
        self.salt = salt
        # NOTE: copying a keyed prototype is cheaper than keying a new hash object per block.
        self._proto = hashlib.blake2b(digest_size=DIGEST_SIZE, key=salt, person=_PERSON)

    def __call__(
        self,
        parent: bytes | None,
        token_ids: Sequence[int],
        extra_keys: tuple[ExtraKey, ...] = (),
    ) -> bytes:
        """The digest of one full block after `parent` (None for a sequence's first block).

        Every block of one cache has the same number of tokens and every digest the same
        length, so parent and tokens need no separators; extra keys (str, bytes or int, whose
        repr is unambiguous) follow the tokens.
        """
        h = self._proto.copy()
        h.update(ROOT_DIGEST if parent is None else parent)
        h.update(array("q", token_ids))
        if extra_keys:
            h.update(repr(extra_keys).encode())
        return h.digest()
