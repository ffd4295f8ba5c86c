"""The engine core's bookkeeping, with no torch and no I/O: requests, the counter-based
scheduler, and the paged KV cache (the block pool with its prefix-cache index, and the manager
that maps each request's logical blocks to physical ones)."""
