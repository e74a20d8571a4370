"""The runner's error types and hint. ConfigError is defined once in tasks/errors.py (the lowest layer that
raises it); TrainingStopped is the runner's own."""

from tasks.errors import ConfigError, choices_hint


class TrainingStopped(RuntimeError):
    """The run stopped itself before the end (a non-finite loss or weights): one line saying where, which
    checkpoint is the last good one and what to change. Exit code 1; meta.json says status failed with it."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) ended the run: `step` and the `checkpoint` saved at it (None: none was). Exit code 130;
    meta.json says status interrupted."""

    def __init__(self, message: str, step: int | None = None, checkpoint: str | None = None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


__all__ = ["ConfigError", "RunInterrupted", "TrainingStopped", "choices_hint"]
