"""The Python API (prunegreedy.fit / resume) and the one run path every trainer shares."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.compress.hooks import HOOKS, none_hook, register_hook
from prunegreedy.errors import ConfigError, PrunegreedyError
from prunegreedy.records import RunRecord
from prunegreedy.trainers.run import new_meta

TINY = ["--epochs", "0.5", "--set", "model.widths=8,8,16,16", "--set", "data.train_limit=300",
        "--set", "data.test_limit=100", "--set", "run.threads=1", "--quiet"]
TIMING = ["seconds", "images_per_s"]


def _stages(path):
    return pd.read_csv(path / "stages.csv").drop(columns=TIMING)


def test_fit_from_python_gives_the_records_of_the_command_line(tmp_path, cache_dir):
    sets = {"model.widths": "8,8,16,16", "data.train_limit": 300, "data.test_limit": 100, "run.threads": 1}
    run = prunegreedy.fit(config="quick", out=tmp_path / "py", epochs=0.5, prune_ratio=0.5, set=sets, quiet=True)
    res = CliRunner().invoke(app, ["run", "--config", "quick", "--out", str(tmp_path / "cli"), "--prune-ratio", "0.5",
                                   *TINY])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(_stages(tmp_path / "py"), _stages(tmp_path / "cli"))
    assert run.status == "finished" and run.path == tmp_path / "py"
    assert run.final_acc == run.stages["test_acc"].iloc[-1] and run.params == 2_028
    assert run.params == run.stages["params_backbone"].iloc[-1] and run.macs == run.stages["macs_backbone"].iloc[-1]
    net = run.backbone()
    x = torch.zeros(2, 3, 32, 32)
    assert net(x).shape == (2, 10) and run.backbone(with_head=False)(x).shape == (2, 8, 16, 16)
    assert (tmp_path / "py" / "report.html").exists() and "final test acc" in (tmp_path / "py" / "log.txt").read_text()


def test_a_user_mistake_from_python_is_the_cli_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        prunegreedy.fit(config="quick", out=tmp_path / "x", prune_ratio=1.5)
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "x"), "--prune-ratio", "1.5"])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {e.value}"
    assert str(e.value) == "prune ratio must be in [0, 1), got 1.5"
    assert not (tmp_path / "x").exists()
    with pytest.raises(PrunegreedyError, match="unknown config key 'train.lrr'; valid keys: trainer, epochs"):
        prunegreedy.fit(out=tmp_path / "x", set={"train.lrr": 0.1})


def test_a_hook_that_cuts_one_stage_is_refused_by_the_trainers_that_cut_every_block(tmp_path):
    register_hook("mine", none_hook)
    try:
        for trainer in ("decoupled", "end-to-end"):
            out = tmp_path / trainer
            res = CliRunner().invoke(app, ["run", "--trainer", trainer, "--set", "compress.hook=mine", "--out", str(out)])
            assert res.exit_code == 2 and not out.exists()
            assert len(res.stderr.strip().splitlines()) == 1
            assert res.stderr.strip().endswith("compress.hook must be none or prune, not 'mine'")
    finally:
        HOOKS.pop("mine")


def test_a_read_only_record_writes_nothing(tmp_path, sample):
    cfg = prunegreedy.config.load("quick")
    record = RunRecord(tmp_path, new_meta(cfg, sample, torch.device("cpu")), writes=False)
    record.write_config(cfg.to_dict())
    record.set_status("running")
    record.add_rows([{"stage": 1, "phase": "trained"}])
    record.write_table("sensitivity.csv", [{"stage": 1}])
    record.log("a line")
    record.hold()
    assert list(tmp_path.iterdir()) == [] and record.rows == [{"stage": 1, "phase": "trained"}]


@pytest.mark.parametrize("trainer,extra,partial", [
    ("greedy", ["--prune-ratio", "0.5", "--set", "compress.at=0.25"], "partial-stage-3"),
    ("decoupled", ["--prune-ratio", "0.5", "--set", "compress.at=0.25"], "partial-stage-4"),
    ("end-to-end", ["--prune-ratio", "0.5", "--set", "train.total_epochs=2"], "partial-stage-4"),
])
def test_ctrl_c_marks_the_run_interrupted_and_resume_reaches_the_same_records(trainer, extra, partial, tmp_path,
                                                                                  cache_dir):
    args = ["--trainer", trainer, "--epochs", "2", *extra, *TINY[2:]]
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "prunegreedy", "run", "--out", str(stopped), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = stopped / "checkpoints" / f"{partial}.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():  # the first of two epochs is done
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    meta = json.loads((stopped / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["seconds_done"] > 0
    assert f"Resume with: prunegreedy run --resume {stopped}" in out
    first_part = meta["seconds_done"]

    res = CliRunner().invoke(app, ["run", "--resume", str(stopped), "--quiet"])
    assert res.exit_code == 0, res.output
    whole = tmp_path / "whole"
    assert CliRunner().invoke(app, ["run", "--out", str(whole), *args]).exit_code == 0
    pd.testing.assert_frame_equal(_stages(stopped), _stages(whole))
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (stopped, whole))
    for key in ("status", "final_acc", "ensemble_acc", "params", "macs", "widths", "removed_filters", "trainer"):
        assert ma[key] == mb[key], key
    assert ma["resumed"] == 1 and ma["seconds"] > first_part  # the seconds of both parts


def test_the_readme_python_example_runs_as_written(tmp_path, cache_dir):
    readme = (prunegreedy.config.RECIPE_DIR.parents[1] / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "runs" / "from-python" / "run.json").read_text())
    assert meta["status"] == "finished" and f"{meta['final_acc']:.2f} % test accuracy" in proc.stdout
