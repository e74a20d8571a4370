"""No run loses finished work, and every status is truthful: a non-finite loss stops the run (or skips the batch)
without a checkpoint of bad weights; a finished run is never reopened by accident, and a run is resumed by one
process at a time; Ctrl-C saves the step and says how to resume (exactly); a corrupted checkpoint is found and
passed over; a run keeps links, not copies; a resume says where it starts and no false warning.

One finished run (module fixture, in process) is the reference; the tests copy its directory and break it the
way a crash, a full disk or a second process would. The CLI runs (a process of its own) are where an exit code,
stderr or a signal is the contract."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from runner import checkpoints
from runner.config import resolve_run_dir
from runner.errors import ConfigError, TrainingStopped
from tests.conftest import REPO, TINY, run_cli, run_dirs, run_in_process

pytestmark = pytest.mark.e2e

STEPS = 12
ARGS = [*TINY, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every_n_steps=4", "trainer.val_every_n_steps=12",
        "trainer.keep_checkpoints=3", "logger=csv"]
NAME = "llama-tiny-adamw"  # the run_name of ARGS: runs/<run_name>/<run>
NAN_AT = ["method._target_=tests.faulty.NanLossAt"]  # + "+method.nan_at=[micro-batches]"


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def _ckpts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _finite(ckpt: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ckpt["state_dict"].values() if t.is_floating_point())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """`python -m runner ARGS` run to the end: step 4, 8 and 12 checkpoints, summary.json, status finished, the
    identity resume=auto matches."""
    runs = tmp_path_factory.mktemp("finished")
    run_cli(*ARGS, runs_dir=runs)
    (run_dir,) = run_dirs(runs)
    return run_dir


def _copy(src: Path, runs: Path, name: str = "copy", killed: bool = False) -> Path:
    """A copy of run `src` under runs/<run_name>/; `killed`: as a crash after its last checkpoint leaves it
    (status running, no summary)."""
    dst = runs / NAME / name
    shutil.copytree(src, dst, symlinks=True)
    (dst / checkpoints.LOCK_FILE).unlink(missing_ok=True)
    if killed:
        (dst / "summary.json").unlink()
        (dst / "meta.json").write_text(json.dumps({**_meta(dst), "status": "running"}))
    return dst


# -- 1. non-finite losses ------------------------------------------------------------------------
def test_nonfinite_loss_stops_with_the_last_good_checkpoint(tmp_path):
    """A nan loss at step 7 (checkpoints every 4): one line naming the step and step000004.ckpt, exit 1, status
    failed with that line, no summary, no "done:", and only finite checkpoints; step 4 is not rotated away."""
    proc = run_cli(*ARGS, *NAN_AT, "+method.nan_at=[7]", runs_dir=tmp_path, check=False)
    (run_dir,) = run_dirs(tmp_path)
    good = run_dir / "checkpoints" / "step000004.ckpt"
    line = (f"non-finite train loss (nan) at step 7; the last good checkpoint is {good}; lower method.lr or set "
            "trainer.on_nonfinite=skip_batch")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: {line}" in proc.stderr.splitlines()
    assert _meta(run_dir)["status"] == "failed" and _meta(run_dir)["error"] == line
    assert not (run_dir / "summary.json").exists() and "done:" not in proc.stdout + proc.stderr
    assert "Logging error" not in proc.stderr
    assert _ckpts(run_dir) == ["last.ckpt", "step000004.ckpt"]
    assert (run_dir / "checkpoints" / "last.ckpt").resolve() == good
    assert _finite(_load(good))


def test_diverging_lr_never_saves_nan_weights(tmp_path):
    """The tester's case, method.lr=1e6: the run stops at the first non-finite loss, with no checkpoint of bad
    weights (none at all here: it diverges before step 4) and status failed."""
    run_dir = tmp_path / NAME / "run"
    with pytest.raises(TrainingStopped, match=r"^non-finite train loss \((nan|inf|-inf)\) at step \d+; "):
        run_in_process([*ARGS, "method.lr=1e6"], run_dir)
    assert _meta(run_dir)["status"] == "failed"
    assert all(_finite(_load(p)) for p in (run_dir / "checkpoints").glob("step*.ckpt"))


def test_checkpoint_of_nonfinite_weights_is_never_written(tmp_path):
    """A finite loss whose update overflowed the weights: the checkpoint IO refuses it (no file, no sum), so the
    run stops (the runner names the last good checkpoint) and no good checkpoint is rotated away for it."""
    from runner.callbacks import AtomicCheckpointIO, NonFiniteWeights

    w = torch.ones(4, 4)
    w[1, 2] = float("inf")
    with pytest.raises(NonFiniteWeights, match=r"^non-finite weights after step 9 \(model.w\); not saved$"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"model.w": w, "model.b": torch.zeros(4)},
                                              "global_step": 9}, tmp_path / "step000009.ckpt")
    assert list(tmp_path.iterdir()) == []
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"model.b": torch.zeros(4)}, "global_step": 9},
                                         tmp_path / "step000009.ckpt")
    assert checkpoints.checkpoint_problem(tmp_path / "step000009.ckpt") is None


def test_skip_batch_skips_the_update_and_counts_it(tmp_path, caplog, monkeypatch):
    """on_nonfinite=skip_batch with nan losses at steps 6 and 7: their updates are skipped (weights and optimizer
    state after step 7 are those after step 5; step 8 moves on), 2 in the summary and the log; a run of
    non-finite steps as long as the limit stops the run."""
    caplog.set_level(logging.WARNING)
    run_dir = tmp_path / NAME / "skip"
    s = run_in_process([*ARGS, *NAN_AT, "+method.nan_at=[6,7]", "trainer.on_nonfinite=skip_batch", "trainer.max_steps=8",
                        "trainer.checkpoint_every_n_steps=1", "trainer.keep_checkpoints=10"], run_dir)
    assert s["steps"] == 8 and s["train/skipped_batches"] == 2 and s["train/loss"] is not None
    assert _meta(run_dir)["status"] == "finished"
    ck = {n: _load(run_dir / "checkpoints" / f"step{n:06d}.ckpt") for n in (5, 6, 7, 8)}
    for n in (6, 7):
        for k, t in ck[5]["state_dict"].items():
            assert torch.equal(t, ck[n]["state_dict"][k]), (n, k)
        a, b = ck[5]["optimizer_states"][0]["state"], ck[n]["optimizer_states"][0]["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[i][f], b[i][f]) for i in a for f in a[i])
    assert not all(torch.equal(t, ck[8]["state_dict"][k]) for k, t in ck[7]["state_dict"].items())
    skipped = [r.getMessage() for r in caplog.records if "optimizer step is skipped" in r.getMessage()]
    assert len(skipped) == 2 and "at step 7" in skipped[1] and "2 skipped so far" in skipped[1]

    from methods.module import MethodModule

    monkeypatch.setattr(MethodModule, "max_nonfinite_in_a_row", 3)
    with pytest.raises(TrainingStopped, match=re.escape("(nan) at steps 3-5 (3 in a row); the last good checkpoint is ")):
        run_in_process([*ARGS, *NAN_AT, "+method.nan_at=[3,4,5,6]", "trainer.on_nonfinite=skip_batch"],
                       tmp_path / NAME / "stops")
    assert _meta(tmp_path / NAME / "stops")["status"] == "failed"


def test_done_line_formats_missing_and_nan_values():
    """The "done:" line of a run whose numbers are None (summary.json's nan) or nan: no logging error."""
    from runner.train import _fmt

    assert [_fmt(None), _fmt(float("nan")), _fmt(float("inf")), _fmt(2.5), _fmt(1234.6, ".0f")] == \
        ["n/a", "nan", "inf", "2.5", "1235"]


def test_on_nonfinite_is_validated(tmp_path):
    from tests.conftest import cli_in_process

    r = cli_in_process([*ARGS, "trainer.on_nonfinite=ignore"], tmp_path)
    assert r.returncode == 2
    assert "error: trainer.on_nonfinite: 'ignore' is not valid; choose one of: stop, skip_batch" in r.stderr


# -- 2. finished runs and locks ------------------------------------------------------------------
def test_resume_auto_starts_a_new_run_instead_of_reopening_a_finished_one(finished, tmp_path):
    """resume=auto with a finished run of the same overrides: a new run, a line naming the finished one, whose
    summary (and W&B/CSV logs) are left as they were."""
    runs = tmp_path / "runs"
    done = _copy(finished, runs)
    before = (done / "summary.json").read_bytes()
    proc = run_cli(*ARGS, "resume=auto", runs_dir=runs)
    (new,) = [d for d in run_dirs(runs) if d != done]
    assert f"resume=auto: the newest run with these overrides, {done}, has finished; starting a new run" in proc.stdout
    assert _summary(new)["steps"] == STEPS and _meta(new)["resumed_from"] is None
    assert (done / "summary.json").read_bytes() == before and _meta(done)["status"] == "finished"


def test_resume_of_a_finished_run_is_nothing_to_resume_unless_max_steps_grew(finished, tmp_path):
    runs = tmp_path / "runs"
    done = _copy(finished, runs)
    before = (done / "summary.json").read_bytes()
    record = {p.relative_to(done): p.read_bytes() for p in (done / ".hydra").rglob("*") if p.is_file()}
    assert Path(".hydra/overrides.yaml") in record
    proc = run_cli(*ARGS, f"resume={done}", runs_dir=runs, check=False)
    assert proc.returncode == 2
    # the overrides that started the run stay, and the refused resume leaves no record of its own
    assert {p.relative_to(done): p.read_bytes() for p in (done / ".hydra").rglob("*") if p.is_file()} == record
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: resume: {done} has finished (trainer.max_steps={STEPS}): nothing to resume; give a "
                      "larger trainer.max_steps to train it further, or drop resume= for a new run"]
    assert (done / "summary.json").read_bytes() == before and _meta(done)["status"] == "finished"

    # a larger max_steps trains it on; the old summary stays until the new one replaces it (here the continuation
    # fails at step 14: the summary is still the finished one's)
    more = [*ARGS, "trainer.max_steps=16", f"resume={done}"]
    with pytest.raises(TrainingStopped, match="at step 14"):
        run_in_process([*more, *NAN_AT, "+method.nan_at=[14]"], done)
    assert (done / "summary.json").read_bytes() == before and _meta(done)["status"] == "failed"
    s = run_in_process(more, done)
    assert s["steps"] == 16 and _summary(done)["steps"] == 16 and _meta(done)["status"] == "finished"


def test_one_process_at_a_time_resumes_a_killed_run(finished, tmp_path):
    """While another process holds the killed run's lock, resume=auto passes over it (a new run) and resume=<dir>
    is an error naming that process; once it is free, resume=auto takes it and holds its lock."""
    runs = tmp_path / "runs"
    killed = _copy(finished, runs, killed=True)
    identity = _meta(killed)["identity"]
    other = os.open(killed / checkpoints.LOCK_FILE, os.O_RDWR | os.O_CREAT)  # another open file: another holder
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(other, b"4242\n")
        assert Path(resolve_run_dir("auto", str(runs), NAME, identity)) != killed
        with pytest.raises(ConfigError, match=re.escape(f"resume: {killed} is in use by another process (pid 4242)")):
            run_in_process([*ARGS, f"resume={killed}"], killed)
        assert _meta(killed)["status"] == "running"
        fcntl.flock(other, fcntl.LOCK_UN)
        assert Path(resolve_run_dir("auto", str(runs), NAME, identity)) == killed  # and this process holds it now
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        checkpoints.unlock(killed)
        os.close(other)


# -- 3. Ctrl-C -----------------------------------------------------------------------------------
def test_sigint_saves_the_step_and_resume_matches_uninterrupted(finished, tmp_path):
    """SIGINT once step 4's checkpoint exists: the current step is saved (atomically, hashed), the exact resume
    command printed, status interrupted, exit 130; resuming gives the uninterrupted run's numbers."""
    from tests import cli_fork

    runs = tmp_path / "runs"
    cli = cli_fork.start([*ARGS, f"paths.runs_dir={runs}"], cwd=REPO, env={**os.environ, "CI": "1"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and cli.poll() is None and not list(runs.glob("*/*/checkpoints/step000004.ckpt")):
            time.sleep(0.05)
        cli.killpg(signal.SIGINT)
        code = cli.wait(300)
        out, err = cli.output()
    finally:
        cli.close()
    (run_dir,) = run_dirs(runs)
    assert code == 130, err[-2000:]
    m = re.search(r"interrupted at step (\d+); its checkpoint is (\S+)", err)
    assert m, err[-2000:]
    step, saved = int(m.group(1)), Path(m.group(2))
    assert 4 <= step < STEPS and saved == run_dir / "checkpoints" / f"step{step:06d}.ckpt"
    assert _load(saved)["global_step"] == step and checkpoints.checkpoint_problem(saved) is None
    assert (run_dir / "checkpoints" / "last.ckpt").resolve() == saved
    assert "resume with: python -m runner " in err and err.rstrip().endswith(f"resume={run_dir}")
    assert _meta(run_dir)["status"] == "interrupted" and not (run_dir / "summary.json").exists()

    s, ref = run_in_process([*ARGS, f"resume={run_dir}"], run_dir), _summary(finished)
    assert s["steps"] == STEPS and s["tokens_seen"] == ref["tokens_seen"]
    assert s["train/loss"] == pytest.approx(ref["train/loss"], abs=1e-6)
    assert s["val/loss"] == pytest.approx(ref["val/loss"], abs=1e-6)
    assert _meta(run_dir)["status"] == "finished"


# -- 4. corrupted checkpoints ---------------------------------------------------------------------
def test_corrupted_checkpoint_is_passed_over_with_its_name(finished, tmp_path, caplog):
    """Each checkpoint's sha256 is recorded when it is written; a resume passes over a torn one (warning naming
    it) to the newest intact one and ends with the uninterrupted numbers; with none intact the error names each;
    a temporary file a crash left mid-write is removed."""
    ck = finished / "checkpoints"
    sums = checkpoints.read_sums(ck)
    assert {f"step{n:06d}.ckpt" for n in (4, 8, 12)} <= sums.keys()
    assert all(checkpoints.file_sha256(ck / name) == digest for name, digest in sums.items())

    runs = tmp_path / "runs"
    killed = _copy(finished, runs, killed=True)
    newest = killed / "checkpoints" / "step000012.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk's torn copy
    partial = killed / "checkpoints" / ".step000012.ckpt.tmp4242"
    partial.write_bytes(b"half a checkpoint")
    caplog.set_level(logging.WARNING)
    s = run_in_process([*ARGS, f"resume={killed}"], killed)
    assert f"checkpoint {newest} is corrupted" in caplog.text and "resuming from the newest intact one, step000008.ckpt" in caplog.text
    assert not partial.exists()
    assert _meta(killed)["resumed_from"] == str(killed / "checkpoints" / "step000008.ckpt")
    assert s["train/loss"] == pytest.approx(_summary(finished)["train/loss"], abs=1e-6)

    broken = _copy(finished, runs, "broken", killed=True)
    for n in (4, 8, 12):
        (broken / "checkpoints" / f"step{n:06d}.ckpt").write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError) as e:
        run_in_process([*ARGS, f"resume={broken}"], broken)
    assert str(e.value).startswith(f"resume: no intact checkpoint in {broken / 'checkpoints'}: step000012.ckpt is corrupted")
    assert all(f"step{n:06d}.ckpt is corrupted" in str(e.value) for n in (4, 8))
    # a checkpoint with no recorded sum (an older run's) must load
    (broken / "checkpoints" / checkpoints.SUMS_FILE).unlink()
    assert checkpoints.checkpoint_problem(broken / "checkpoints" / "step000004.ckpt").startswith("unreadable (")


# -- 5. disk -------------------------------------------------------------------------------------
def test_a_run_keeps_its_step_files_and_a_link(finished, tmp_path, monkeypatch):
    """last.ckpt is a link to the newest step file, not a copy of it; where symlinks fail, a hard link."""
    ck = finished / "checkpoints"
    assert _ckpts(finished) == ["last.ckpt", "step000004.ckpt", "step000008.ckpt", "step000012.ckpt"]
    assert (ck / "last.ckpt").is_symlink() and (ck / "last.ckpt").resolve() == ck / "step000012.ckpt"

    def no_symlinks(*_):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    run_dir = tmp_path / NAME / "nolinks"
    run_in_process([*ARGS, "trainer.max_steps=6"], run_dir)  # the final step is saved too (6: not a multiple of 4)
    last, newest = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "step000006.ckpt"
    assert not last.is_symlink() and os.path.samefile(last, newest) and newest.stat().st_nlink == 2
    assert checkpoints.checkpoint_problem(last) is None


# -- 6. the resume's own words -------------------------------------------------------------------
def test_resume_says_where_it_starts_and_no_false_warning(finished, tmp_path, caplog, recwarn):
    killed = _copy(finished, tmp_path / "runs", killed=True)
    for f in (killed / "checkpoints").glob("step000012.ckpt"):
        f.unlink()
    caplog.set_level(logging.INFO)
    run_in_process([*ARGS, f"resume={killed}"], killed)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming exactly")]
    assert said == ["resuming exactly at micro-batch 8"]
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
