"""`python -m runner` as a fork of a process that has already imported torch, Lightning and transformers.

A runner process spends ~12 s of CPU importing before it does anything (Lightning alone ~8 s: torchmetrics
imports scipy.signal, matplotlib and transformers at its own import), and the e2e tier starts dozens. Here a
multiprocessing fork server imports them once per test worker, and each CLI run is a fork of it: a process of its
own (its own logging, signals, exit code and process group, so `os.killpg` kills it as it would the real one)
that runs the `runner` package as `__main__` (`runpy`, as `python -m runner` does) with the arguments, working
directory, environment and PYTHONPATH it was given.

What a fresh interpreter fixes at start from the environment cannot change in a fork: a run whose environment
differs from the server's in a variable read at import (`READ_AT_IMPORT`) runs a real interpreter instead
(tests/conftest.run_cli decides). The real entry point itself stays covered: `run_cli(..., fresh=True)` and
tests/test_errors.py's process-boundary cases start `python -m runner`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import threading
from pathlib import Path

# What the server imports before it forks: the libraries every run needs, and the runner's entry point. Not
# the repository's tasks, methods or kernels (kernels read TRITON_INTERPRET at import): a child imports those.
PRELOAD = ["torch", "lightning", "transformers", "transformers.modeling_utils", "runner.cli", "runner.train"]
# Variables the preloaded modules (or the interpreter) read once at start; PYTHONPATH is applied to sys.path.
READ_AT_IMPORT = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "TORCH", "PYTORCH", "CUDA", "TRITON", "HF_",
                  "TRANSFORMERS", "TOKENIZERS", "METHODBENCH_CONFIGS")

_lock = threading.Lock()
_server: dict = {}  # "context", and "env": the environment the server started with


def _context():
    with _lock:
        if not _server:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _server.update(context=ctx, env=dict(os.environ))
        return _server["context"]


def forkable(env: dict[str, str]) -> bool:
    """Whether a run with environment `env` behaves in a fork as in a fresh interpreter."""
    _context()
    started = _server["env"]
    changed = {k for k in set(env) | set(started) if env.get(k) != started.get(k)} - {"PYTHONPATH"}
    return not any(k.startswith(READ_AT_IMPORT) for k in changed)


def _child(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The forked run (multiprocessing's target): `python -m runner *args` in this process."""
    import atexit
    import runpy
    import traceback

    os.setsid()  # a process group of its own, as subprocess's start_new_session gives the real one
    sys.stdout.flush()
    sys.stderr.flush()
    for path, fd in ((out, 1), (err, 2)):  # the file descriptors, so C code and grandchildren write there too
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [cwd, *extra, *(p for p in sys.path if p not in ("", cwd, *extra))]
    sys.argv = ["-m", *args]
    code = 0
    try:
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # as the interpreter maps it
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # what a normal interpreter exit does, in its order: join threads, then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)


class ForkedCli:
    """A started `python -m runner` (forked): `pid`, `poll()`, `wait(timeout)`, `killpg(sig)`, `output()`."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self._dir = tempfile.mkdtemp(prefix="cli-")
        self._out, self._err = os.path.join(self._dir, "stdout"), os.path.join(self._dir, "stderr")
        self.args = list(args)
        self._proc = _context().Process(target=_child, args=(self.args, str(cwd), env, self._out, self._err),
                                        name="runner-cli")
        self._proc.start()
        self.pid = self._proc.pid

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self.killpg(9)
            self._proc.join()
            raise TimeoutError(f"python -m runner {' '.join(self.args)}: still running after {timeout} s; killed")
        return self._proc.exitcode

    def killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) so far, as text."""
        return tuple(Path(p).read_text(errors="replace") if os.path.exists(p) else "" for p in (self._out, self._err))

    def close(self) -> None:
        for p in (self._out, self._err):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(self._dir)


def start(args: list[str], cwd: Path, env: dict[str, str]) -> ForkedCli:
    """Start `python -m runner *args` forked from the server (tests/tiers.py's guard watches this name)."""
    return ForkedCli(args, cwd, env)
