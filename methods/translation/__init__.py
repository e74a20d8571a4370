"""Machine translation methods on the pairs data kind (tasks/seq2seq.py): GNMT."""
