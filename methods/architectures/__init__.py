"""Architecture papers: a new network trained by its own recipe (word_pooled_tok: eTok, models/etok.py)."""
