"""A run killed with SIGKILL in the middle of a stage and resumed ends like an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
from typer.testing import CliRunner

from prunegreedy.cli import app

ARGS = ["--epochs", "2", "--prune-ratio", "0.5", "--set", "model.widths=8,8,16,16", "--set", "data.train_limit=600",
        "--set", "data.test_limit=200", "--set", "run.threads=1", "--quiet"]
TIMING = ["seconds", "images_per_s"]


def _start(out, env):
    cmd = [sys.executable, "-m", "prunegreedy", "run", "--out", str(out), *ARGS]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tmp_path, cache_dir):
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    killed = tmp_path / "killed"
    proc = _start(killed, env)
    deadline = time.time() + 120
    partial = killed / "checkpoints" / "partial-stage-3.safetensors"
    while time.time() < deadline:  # wait until stage 3 has finished its first of two epochs
        if partial.exists():
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = json.loads((killed / "run.json").read_text())
    assert meta["status"] == "running" and meta["stages_done"] == 2

    res = CliRunner().invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "stage 3: continuing from step 10 (end-of-epoch checkpoint)" in res.output
    assert not partial.exists()

    whole = tmp_path / "whole"
    assert CliRunner().invoke(app, ["run", "--out", str(whole), *ARGS]).exit_code == 0
    a, b = (pd.read_csv(p / "stages.csv").drop(columns=TIMING) for p in (killed, whole))
    pd.testing.assert_frame_equal(a, b)
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (killed, whole))
    for key in ("status", "final_acc", "ensemble_acc", "head_accs", "params", "macs", "widths", "removed_filters"):
        assert ma[key] == mb[key], key
    assert ma["resumed"] == 1


def test_resume_refuses_a_finished_run_and_extra_options(tmp_path, cache_dir):
    out = tmp_path / "done"
    assert CliRunner().invoke(app, ["run", "--out", str(out), "--epochs", "0.2", *ARGS[2:]]).exit_code == 0
    res = CliRunner().invoke(app, ["run", "--resume", str(out)])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {out} already finished; nothing to resume"
    res = CliRunner().invoke(app, ["run", "--resume", str(out), "--seed", "3"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --resume continues with the run's saved config; drop --seed"


def test_end_to_end_run_killed_mid_training_resumes_to_the_same_result(tmp_path, cache_dir):
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    args = ["--trainer", "end-to-end", "--set", "train.total_epochs=2", *ARGS[2:]]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "prunegreedy", "run", "--out", str(killed), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = killed / "checkpoints" / "partial-stage-4.safetensors"  # the whole network is "stage" 4
    deadline = time.time() + 120
    while time.time() < deadline and not partial.exists():  # the first of two epochs is done
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = CliRunner().invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "continuing from step 10 (end-of-epoch checkpoint)" in res.output

    whole = tmp_path / "whole"
    assert CliRunner().invoke(app, ["run", "--out", str(whole), *args]).exit_code == 0
    a, b = (pd.read_csv(p / "stages.csv").drop(columns=TIMING) for p in (killed, whole))
    pd.testing.assert_frame_equal(a, b)
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (killed, whole))
    for key in ("status", "final_acc", "params", "widths", "removed_filters"):
        assert ma[key] == mb[key], key


def test_a_run_folder_being_written_refuses_a_second_writer(tmp_path, cache_dir):
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    busy = tmp_path / "sweep" / "ratio-0.5"
    proc = _start(busy, env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (busy / "run.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        before = sorted(p.name for p in busy.iterdir())
        holder = f"{busy} is in use by process {proc.pid} on "
        res = CliRunner().invoke(app, ["run", "--resume", str(busy), "--quiet"])
        assert res.exit_code == 2 and res.stderr.startswith(f"error: {holder}"), res.output
        assert len(res.stderr.strip().splitlines()) == 1
        res = CliRunner().invoke(app, ["sweep", "--prune-ratios", "0.5", "--out", str(busy.parent), *ARGS[4:]])
        assert res.exit_code == 2 and res.stderr.startswith(f"error: {holder}"), res.output
        assert busy.exists() and not list(busy.parent.glob("*.partial-*"))  # not moved aside
        assert set(before) <= {p.name for p in busy.iterdir()}
    finally:
        proc.kill()
        proc.wait()
    # The kernel dropped the lock with the process: the folder resumes.
    res = CliRunner().invoke(app, ["run", "--resume", str(busy), "--quiet"])
    assert res.exit_code == 0, res.output
