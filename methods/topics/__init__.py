"""Neural topic models: the topic module (document batches, the DocNADE likelihood, perplexity), their evaluation
(held-out perplexity, IR precision, classification from document representations) and one module per paper."""
