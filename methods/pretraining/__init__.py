"""Pre-training objectives of encoders (masked-LM variants): ERNIE-Gram's explicit n-gram masking."""
