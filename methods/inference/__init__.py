"""Inference methods: attention patches, KV-cache compression and batching applied to a trained model at
evaluation and generation time (lm_infinite.py, ...). evaluation.py holds what they share: greedy
generation with a KV cache, long-context perplexity and passkey accuracy; passkey.py the passkey task."""
