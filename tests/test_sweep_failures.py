"""A job that fails inside a sweep does not end the sweep: it is recorded (meta.json: status failed, the
error) and printed, the other jobs run, and the sweep ends with one line naming the failed jobs and exit
code 1, no traceback (runner/cli.py _task, SweepFailures)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.e2e


def test_failed_sweep_job_is_recorded_and_the_others_run(tmp_path):
    proc = run_cli("-m", "trainer.max_steps=2,abc,2", *TINY, "logger=csv", "trainer.val_every_n_steps=2",
                   runs_dir=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = [ln for ln in proc.stderr.splitlines() if "sweep jobs failed" in ln]
    assert summary == ["error: 1 of 3 sweep jobs failed: #1 (trainer.max_steps=abc)"], proc.stderr[-3000:]
    job_errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: sweep job #1 failed:")]
    assert len(job_errors) == 1 and "trainer.max_steps" in job_errors[0], proc.stderr[-3000:]

    (sweep,) = tmp_path.glob("*/multirun_*")
    for ok in ("0", "2"):
        assert (sweep / ok / "summary.json").is_file(), f"job {ok} did not finish:\n{proc.stderr[-3000:]}"
    meta = json.loads((sweep / "1" / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert "trainer.max_steps" in meta["error"] and "\n" not in meta["error"]
    assert not (sweep / "1" / "summary.json").exists()
    log = (sweep / "1" / "methodbench.log").read_text()  # the job's Hydra log file
    assert "failed" in log and "trainer.max_steps" in log
