"""Text classification: shared machinery (classifier, metrics, corpora) and one module per paper."""
