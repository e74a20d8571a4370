"""Sets as inputs and outputs (tasks/sets.py, models/rpw.py): pointer losses and metrics, and one module per paper."""
