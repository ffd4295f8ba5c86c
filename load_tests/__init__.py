"""Load tests and benchmarks: everything here talks to servers over sockets.

- `python -m triode.load_tests` (cli.py): the concurrent-socket load generator (SSE or triode's
  WebSocket; closed or open loop), result files, plots, comparisons, the soak and the
  triode-vs-peers benchmark. See README.md and BENCHMARKS.md.
- offline.py, prefix_cache.py: the engine-level offline benchmarks.
"""
