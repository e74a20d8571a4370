"""Optimizer methods: a `torch.optim.Optimizer` per paper and the `Method` that builds it (frugal.py, ...)."""
