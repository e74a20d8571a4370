"""Training objectives: a loss per paper and the `Method` that trains with it (z_loss.py, emo.py, eisl.py, ...)."""
