"""methodbench's runner: composes model x method x dataset x hardware into a Lightning run."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
