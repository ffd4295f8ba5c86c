"""How tokens are picked: `SamplingParams` (per request, vLLM's names) and the vectorised
`Sampler` (penalties, temperature, top-k/top-p/min-p, seeds, logprobs)."""
