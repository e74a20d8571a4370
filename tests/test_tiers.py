"""The tier guard (tests/tiers.py) catches unit tests that do e2e work, in an inner pytest session."""

from __future__ import annotations

import textwrap

INNER = textwrap.dedent('''
    import subprocess

    import pytest

    import runner.trained


    @pytest.fixture(scope="module")
    def trained():
        return runner.trained.ensure(None, None)  # the guard notes the call; stub_ensure makes it return at once


    @pytest.fixture(autouse=True, scope="module")
    def stub_ensure():
        original = runner.trained.ensure.__wrapped__
        runner.trained.ensure.__wrapped__ = lambda *args, **kwargs: "a stub: nothing is trained"
        yield
        runner.trained.ensure.__wrapped__ = original


    def test_unit_that_starts_a_subprocess():
        subprocess.run(["true"], check=True)


    def test_unit_that_swallows_the_guard():
        try:
            subprocess.run(["true"], check=True)
        except Exception:
            pass


    def test_unit_that_runs_the_runner():
        from runner.train import run
        run(None)


    def test_unit_that_forks_the_cli():
        from tests import cli_fork
        cli_fork.start(["--help"], cwd=".", env={})  # the guard raises before anything starts


    def test_pure_unit():
        assert 1 + 1 == 2


    @pytest.mark.e2e
    def test_e2e_that_starts_a_subprocess():
        subprocess.run(["true"], check=True)


    @pytest.mark.e2e
    def test_e2e_fixture_first(trained):
        pass


    def test_unit_on_a_fixture_an_e2e_test_warmed(trained):
        pass
''')


def test_guard_fails_unmarked_tests_that_do_e2e_work(pytester):
    pytester.makeconftest('pytest_plugins = ["tests.tiers"]')
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-q")
    # passed: the pure unit test and the two e2e ones; failed: subprocess, swallowed, runner, forked CLI; the unit test on
    # the fixture the e2e test warmed errors at setup
    result.assert_outcomes(passed=3, failed=4, errors=1)
    out = result.stdout.str()
    assert "test_unit_that_starts_a_subprocess: started a subprocess" in out
    assert "test_unit_that_swallows_the_guard: started a subprocess" in out
    assert "test_unit_that_runs_the_runner: started the runner (runner.train.run)" in out
    assert "test_unit_that_forks_the_cli: started the runner CLI (a forked process" in out
    assert "test_unit_on_a_fixture_an_e2e_test_warmed: asked for fixture 'trained', which asked for a trained model" in out
    assert "mark it @pytest.mark.e2e" in out
