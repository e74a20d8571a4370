"""One error type for everything a user can get wrong; the entry point prints it as one line per problem (exit 2).

Tasks raise it while they build their data; the runner re-exports it (runner/errors.py)."""

from __future__ import annotations

import difflib


class ConfigError(Exception):
    """Bad input: each problem is one line naming the key and what would be valid. Exit code 2."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def choices_hint(value: str, choices: list[str]) -> str:
    """`choose one of: a, b, c` with a `did you mean` when something is close."""
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}choose one of: {', '.join(choices)}"
