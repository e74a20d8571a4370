"""The runner's error type and hint, defined once in tasks/errors.py (the lowest layer that raises it)."""

from tasks.errors import ConfigError, choices_hint

__all__ = ["ConfigError", "choices_hint"]
