"""SIGTERM and Ctrl-C stop a run at a step boundary with a checkpoint there; time-based checkpoints
inside an epoch; a resume from either reaches the records of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.train.stop import Stopped

# 600 images at batch 64: 10 steps an epoch, 20 a stage; the cut at 0.35 comes before step 7.
SETS = {"model.widths": "8,8,16,16", "data.train_limit": 600, "data.test_limit": 100, "run.threads": 1,
        "compress.at": 0.35, "train.amp": "off"}
TIMING = ["seconds", "images_per_s"]


class SignalAt:
    """A UI that sends `signum` to this process (or raises `error`) at `step` of the phase `desc`."""

    def __init__(self, desc: str, step: int, signum=signal.SIGTERM, error=None):
        self.desc, self.step, self.signum, self.error, self.lines = desc, step, signum, error, []

    def log(self, msg: str) -> None:
        self.lines.append(msg)

    def progress(self, desc: str):
        if desc != self.desc:
            return None

        def on_step(step, total, loss, acc):
            if step == self.step:
                if self.error is not None:
                    raise self.error
                os.kill(os.getpid(), self.signum)
        return on_step


def _fit(out, trainer, ui=None, **sets):
    return prunegreedy.fit("quick", out=out, trainer=trainer, epochs=2, prune_ratio=0.5, set={**SETS, **sets},
                           ui=ui, quiet=True)


def _same_records(a, b):
    pd.testing.assert_frame_equal(*(pd.read_csv(p / "stages.csv").drop(columns=TIMING) for p in (a, b)))
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (a, b))
    for key in ("status", "final_acc", "ensemble_acc", "head_accs", "params", "macs", "widths", "removed_filters"):
        assert ma[key] == mb[key], key


@pytest.fixture(scope="module")
def whole(tmp_path_factory, cache_dir):
    """The uninterrupted runs, one per trainer."""
    root = tmp_path_factory.mktemp("whole")
    return {t: _fit(root / t, t).path for t in ("greedy", "decoupled")}


@pytest.mark.parametrize("trainer,desc", [("greedy", "stage 2 train"), ("decoupled", "stage 4 train")])
@pytest.mark.parametrize("step", [5, 13])  # before the cut at step 7, and after it; both inside an epoch
def test_sigterm_inside_an_epoch_checkpoints_that_step_and_resumes_exactly(trainer, desc, step, whole, tmp_path):
    out = tmp_path / "run"
    ui = SignalAt(desc, step)
    with pytest.raises(Stopped) as e:
        _fit(out, trainer, ui)
    assert e.value.signum == signal.SIGTERM and e.value.where == f"step {step} of 20"
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "interrupted"
    assert ui.lines[-1] == (f"stopped by SIGTERM; {meta['stages_done']} finished stage(s) and a checkpoint at step "
                            f"{step} of 20 are saved. Resume with: prunegreedy run --resume {out}")
    resumed = SignalAt("none", 0)
    prunegreedy.resume(out, ui=resumed)
    assert f"continuing from step {step} (checkpoint inside an epoch)" in " ".join(resumed.lines)
    _same_records(out, whole[trainer])


def test_checkpoints_every_few_minutes_inside_an_epoch_survive_a_crash(whole, tmp_path):
    out = tmp_path / "run"
    crash = SignalAt("stage 3 train", 15, error=RuntimeError("power cut"))
    with pytest.raises(RuntimeError, match="power cut"):
        _fit(out, "greedy", crash, **{"train.checkpoint_every": 1e-9})  # a checkpoint after every step
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # as after SIGKILL
    resumed = SignalAt("none", 0)
    prunegreedy.resume(out, ui=resumed)
    assert "stage 3: continuing from step 14 (checkpoint inside an epoch)" in resumed.lines
    _same_records(out, whole["greedy"])


def test_sigterm_from_outside_exits_143_with_the_resume_command(tmp_path, cache_dir):
    args = ["--epochs", "3", "--set", "model.widths=8,8,16,16", "--set", "data.train_limit=600", "--set",
            "run.threads=1", "--quiet"]
    out = tmp_path / "run"
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "prunegreedy", "run", "--out", str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "partial-stage-2.safetensors").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr
    assert stdout.strip().splitlines()[-1].endswith(f"are saved. Resume with: prunegreedy run --resume {out}")
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    res = CliRunner().invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_bad_checkpoint_every_is_refused(value, tmp_path):
    res = CliRunner().invoke(app, ["run", "--set", f"train.checkpoint_every={value}", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and not (tmp_path / "r").exists()
    assert res.stderr.strip().startswith("error: train.checkpoint_every must be a positive number of minutes")


def test_a_sweep_stopped_by_sigterm_resumes_its_stopped_run_when_run_again(tmp_path, cache_dir):
    sets = {"model.widths": "8,8,16,16", "data.train_limit": 300, "data.test_limit": 100, "run.threads": 1}
    stopper = SignalAt("stage 2 train", 3)
    with pytest.raises(Stopped):
        prunegreedy.sweep(tmp_path, "quick", prune_ratios="0,0.5", epochs=1, set=sets, ui=stopper)
    assert json.loads((tmp_path / "ratio-0" / "run.json").read_text())["status"] == "interrupted"
    again = SignalAt("none", 0)
    runs = prunegreedy.sweep(tmp_path, "quick", prune_ratios="0,0.5", epochs=1, set=sets, ui=again)
    assert f"ratio 0: resuming {tmp_path / 'ratio-0'}" in again.lines
    assert "stage 2: continuing from step 3 (checkpoint inside an epoch)" in again.lines
    assert [r.status for r in runs] == ["finished", "finished"] and not list(tmp_path.glob("*.partial-*"))
