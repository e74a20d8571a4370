"""Architectures: one builder per family (llama.py, t5.py, bert.py), named by `_target_` in configs/model/."""
