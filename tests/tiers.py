"""The suite's tiers, enforced, and its time budget (a pytest plugin: tests/conftest.py loads it).

Tiers, by marker:
  (none)  unit and property tests: pure functions, tiny modules built in the test; no subprocess, no runner,
          no trained model. Fast; the bulk of the suite.
  e2e     starts the runner (`runner.train.run`, the CLI), a subprocess, or asks for a trained model
          (`runner.trained.ensure`, e.g. the `base_lm` fixture). Runs in `make test`.
  repro   a small-scale reproduction, curve or sweep. Runs in `make repro`, not in `make test`.

The guard: while an unmarked test (or a fixture it asks for) runs, starting a subprocess (an audit hook sees
every `subprocess.Popen`, `os.posix_spawn`, `os.exec*`), forking the CLI (tests/cli_fork.start),
calling `runner.train.run` or `runner.trained.ensure` fails that test with a line saying what it did and which marker it needs. A fixture seen doing any of these
(under any test) makes every unmarked test that asks for it fail at setup, so a cached fixture cannot hide it.

The budget: the wall time of the whole run against `time_budget_s` ([tool.pytest.ini_options] in
pyproject.toml), printed at the end of every run that selects the default suite; over budget it is a loud
warning, not a failure (machines are noisy).
"""

from __future__ import annotations

import functools
import importlib
import sys
import time

import pytest

TIERS = ("e2e", "repro")
_SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec"})

_current: list = []  # the item running now (a stack: pytester runs sessions inside a test)
_fixtures: list[str] = []  # the fixtures being set up now, innermost last
_heavy: dict[str, str] = {}  # fixture name -> what it was seen doing
_violations: dict[str, list[str]] = {}  # nodeid -> what the unmarked test did
_start: list[float] = []  # when the (outermost) session began


class UnmarkedHeavyTest(RuntimeError):
    """Raised where an unmarked test starts a subprocess, the runner, or asks for a trained model."""


def tier(item) -> str | None:
    return next((m for m in TIERS if item.get_closest_marker(m) is not None), None)


def _advice(item, what: str) -> str:
    return (f"{item.nodeid}: {what} in an unmarked (unit) test; mark it @pytest.mark.e2e "
            f"(or repro for a reproduction), see tests/tiers.py")


def note(what: str) -> None:
    """Record that the running test did `what`; raise if it is unmarked."""
    if not _current or _current[-1] is None:
        return  # collection, or outside any test
    item = _current[-1]
    for name in _fixtures:
        _heavy.setdefault(name, what)
    if tier(item) is None:
        _violations.setdefault(item.nodeid, []).append(what)
        raise UnmarkedHeavyTest(_advice(item, what))


def _audit(event: str, args: tuple) -> None:
    if event in _SPAWN_EVENTS:
        program = args[0] if args else "?"
        note(f"started a subprocess ({event}: {program!r})")


def _guard(module: str, name: str, what: str) -> None:
    """Wrap module.name so that calling it is noted; modules that already bound the original get the wrapper."""
    mod = importlib.import_module(module)
    original = getattr(mod, name)
    if getattr(original, "_tier_guard", False):
        return

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        note(what)
        return guarded.__wrapped__(*args, **kwargs)

    guarded._tier_guard = True
    setattr(mod, name, guarded)
    for other in list(sys.modules.values()):
        if getattr(other, name, None) is original:
            setattr(other, name, guarded)


def install() -> None:
    """Install the guards once per process (idempotent: pytester sessions inside a test reuse them)."""
    if getattr(sys, "_methodbench_tier_audit", False):
        return
    sys._methodbench_tier_audit = True
    sys.addaudithook(_audit)
    _guard("runner.trained", "ensure", "asked for a trained model (runner.trained.ensure)")
    _guard("runner.train", "run", "started the runner (runner.train.run)")
    _guard("tests.cli_fork", "start", "started the runner CLI (a forked process: tests/cli_fork.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: starts the runner, a subprocess, or asks for a trained model (make test)")
    config.addinivalue_line("markers", "repro: a small-scale reproduction, curve or sweep (make repro, not make test)")
    install()
    if not _start:
        _start.append(time.time())


def pytest_addoption(parser):
    parser.addini("time_budget_s", "the suite's wall-time budget in seconds (a warning past it, not a failure)",
                  default="0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if tier(item) is None:
        heavy = sorted(f for f in item.fixturenames if f in _heavy)
        if heavy:
            _violations.setdefault(item.nodeid, []).append(f"asked for fixture {heavy[0]!r}, which {_heavy[heavy[0]]}")
            pytest.fail(_advice(item, f"asked for fixture {heavy[0]!r}, which {_heavy[heavy[0]]}"), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _fixtures.append(fixturedef.argname)
    try:
        yield
    finally:
        _fixtures.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    done = _violations.pop(item.nodeid, None) if call.when == "teardown" else _violations.get(item.nodeid)
    if done and report.passed and call.when != "teardown":  # the test swallowed the guard's exception
        report.outcome = "failed"
        report.longrepr = _advice(item, "; ".join(dict.fromkeys(done)))
        _violations.pop(item.nodeid, None)


def _default_selection(config) -> bool:
    """Whether this run selects the default suite (all of testpaths, no -k, the configured -m)."""
    args = [a for a in config.args if a not in (".", "tests", str(config.rootpath / "tests"))]
    return not args and not config.option.keyword


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput") or config.option.collectonly:
        return  # an xdist worker (the controller reports), or nothing ran
    budget = float(config.getini("time_budget_s") or 0)
    wall = time.time() - _start[0]
    line = f"pytest wall time {wall / 60:.1f} min"
    if not budget or not _default_selection(config):
        terminalreporter.write_line(line)
        return
    line += f" of a {budget / 60:.0f}-minute budget ({100 * wall / budget:.0f}%; pyproject.toml time_budget_s)"
    if wall <= budget:
        terminalreporter.write_sep("=", line, green=True)
    else:
        terminalreporter.write_sep("!", f"WARNING: over budget: {line}", red=True, bold=True)
        terminalreporter.write_line("A new test that costs more than ~10 s says why in its issue note; see the "
                                    "slowest tests below, and move reproductions to the repro tier (make repro).")
