"""The model runner (device, weights, KV-cache tensors; one forward pass per step) and the
attention metadata it passes explicitly to every layer."""
