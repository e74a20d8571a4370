"""Tasks: one file per kind of data (the protocol in base.py, shared primitives in common.py), named by `_target_`
in configs/dataset/*.yaml."""
