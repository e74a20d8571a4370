"""Data methods: selection (zip_fit.py: ZIP-FIT, random, DSIR-style) and mixing (mixing.py: temperature
sampling, scalarization, cooldown, DGA). Pure functions on texts, sizes and gradient vectors; the runner's
multi-domain data path (prepare_data hook, mixer, per-domain validation) is what calls them."""
