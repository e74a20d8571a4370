"""Compression methods: post-training transforms of a trained model (`compress(model, data) -> model`),
one module per paper (essential_sparsity.py, flap.py, evopress.py, ...)."""
