"""Embedding-initialization methods: a computed matrix becomes a model's input embedding (methods/embeddings/init.py),
then the papers that compute it (bit_cipher.py: Bit Cipher)."""
