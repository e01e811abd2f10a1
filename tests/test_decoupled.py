"""Decoupled training (every block at once, detached inputs) and pruning inside the schedule."""
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

from prunegreedy import config
from prunegreedy.cli import app
from prunegreedy.config import TrainConfig
from prunegreedy.data.base import Dataset
from prunegreedy.deploy.network import load_network
from prunegreedy.train.loop import Chain, train
from prunegreedy.trainers.registry import get_trainer

from helpers import cpu_norm, made_stages, snapshot

WIDTHS = [8, 8, 16, 16]
TINY = ["--set", "model.widths=8,8,16,16", "--set", "data.train_limit=256", "--set", "data.test_limit=100",
        "--set", "run.threads=1", "--set", "train.batch_size=64", "--set", "train.amp=off", "--quiet"]
TIMING = ["seconds", "images_per_s"]


def _small(sample) -> Dataset:
    return Dataset(sample.name, sample.train_x[:256], sample.train_y[:256], sample.test_x[:100], sample.test_y[:100],
                   sample.classes, sample.mean, sample.std)


def _stages(n: int, seed: int = 0):
    _, blocks, heads = made_stages(WIDTHS, seed=seed, head="pooled")
    return blocks[:n], heads[:n]


def test_no_gradient_crosses_a_block_boundary(sample):
    """Blocks 1-2 end equal whether or not blocks 3-4 train above them."""
    ds, cfg = _small(sample), TrainConfig(batch_size=64, lr=0.05, amp="off", schedule="linear")
    ends = []
    for n in (2, 4):
        blocks, heads = _stages(n)
        train(Chain(list(zip(blocks, heads))), ds, cpu_norm(ds), cfg, 1.0, 0.05, "linear", torch.device("cpu"),
              torch.Generator().manual_seed(0))
        ends.append([snapshot(m) for m in blocks[:2] + heads[:2]])
    for a, b in zip(*ends):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_block_moves_in_one_epoch_and_records_per_block(sample, tmp_path):
    blocks, heads = _stages(4)
    init = [snapshot(b) for b in blocks]
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--trainer", "decoupled", "--epochs", "1", "--set", "model.head=pooled",
                                   "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    model, heads = load_network(out, heads=True)
    for j, (before, block) in enumerate(zip(init, model.blocks)):
        after = block.state_dict()
        assert before.keys() == after.keys()
        for key in ("conv.weight", "bn.running_mean"):
            assert not torch.equal(before[key], after[key]), (j, key)
    rows = pd.read_csv(out / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == [(j, "trained") for j in (1, 2, 3, 4)]
    assert rows.epochs.tolist() == [1.0] * 4 and rows.train_acc.notna().all()
    meta = json.loads((out / "run.json").read_text())
    assert meta["trainer"] == "decoupled" and meta["ensemble_acc"] is not None and len(heads) == 4


def test_pruning_at_a_fraction_of_the_schedule_cuts_every_block(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--trainer", "decoupled", "--epochs", "1", "--prune-ratio", "0.5",
                                   "--set", "compress.at=0.5", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == [(j, p) for p in ("pruned", "trained") for j in (1, 2, 3, 4)]
    trained = rows[rows.phase == "trained"]
    assert trained.width.tolist() == [4, 4, 8, 8] and trained.width_in.tolist() == [3, 4, 4, 8]
    model, heads = load_network(out, heads=True)
    assert [b.conv.in_channels for b in model.blocks] == [3, 4, 4 * 4, 8]  # psi: 4 inputs per kept filter
    assert [h.spec()["in_channels"] for h in heads] == [4, 4, 8, 8]
    removed = json.loads((out / "run.json").read_text())["removed_filters"]
    assert [len(r["cuts"][0]["removed"]) for r in removed.values()] == [4, 4, 8, 8]


def test_greedy_pruning_inside_the_schedule(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--epochs", "1", "--prune-ratio", "0.5", "--set", "compress.at=0.25",
                                   "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == [(j, p) for j in (1, 2, 3, 4) for p in ("pruned", "trained")]
    assert rows.width.tolist() == [4, 4, 4, 4, 8, 8, 8, 8] and rows.width_before.tolist()[::2] == [8, 8, 16, 16]
    assert (rows[rows.phase == "trained"].epochs == 1.0).all()  # no fine-tuning: the schedule's rest trained it


def _start(out, env, extra):
    cmd = [sys.executable, "-m", "prunegreedy", "run", "--out", str(out), *extra, *TINY]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("trainer,partial", [("decoupled", "partial-stage-4"), ("greedy", "partial-stage-2")])
def test_sigkill_after_a_cut_inside_the_schedule_resumes_to_identical_records(trainer, partial, tmp_path, cache_dir):
    """Killed after the end-of-epoch checkpoint that follows a cut at 0.25 of a 3-epoch schedule."""
    extra = ["--trainer", trainer, "--epochs", "3", "--prune-ratio", "0.5", "--set", "compress.at=0.25"]
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir)}
    killed = tmp_path / "killed"
    proc = _start(killed, env, extra)
    ckpt = killed / "checkpoints" / f"{partial}.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = CliRunner().invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "continuing from step 4 (end-of-epoch checkpoint)" in res.output
    whole = tmp_path / "whole"
    assert CliRunner().invoke(app, ["run", "--out", str(whole), *extra, *TINY]).exit_code == 0
    a, b = (pd.read_csv(p / "stages.csv").drop(columns=TIMING) for p in (killed, whole))
    pd.testing.assert_frame_equal(a, b)
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (killed, whole))
    for key in ("final_acc", "ensemble_acc", "head_accs", "params", "macs", "widths", "removed_filters"):
        assert ma[key] == mb[key], key


def _cfg(**over):
    base = {"data": {"name": "cifar10-sample"}, "model": {"widths": WIDTHS}, "train": {"trainer": "decoupled"}}
    return config.from_dict(config.merge(base, over))


@pytest.mark.parametrize("over,message", [
    ({"train": {"epochs": [2, 1, 1, 1]}}, "--trainer decoupled trains every block at once, in one schedule, so "
                                           "per-stage epochs [2.0, 1.0, 1.0, 1.0] cannot run; set train.total_epochs"),
    ({"compress": {"hook": "prune", "ratio": 0.5, "at": 0.0}}, "compress.at must be in (0, 1]"),
    ({"compress": {"hook": "prune", "ratio": 0.5, "at": 1.5}}, "compress.at must be in (0, 1]"),
    ({"train": {"trainer": "parallel"}}, "unknown trainer 'parallel'; valid: greedy, decoupled, end-to-end"),
    ({"train": {"trainer": "end-to-end"}, "compress": {"hook": "prune", "ratio": 0.5, "at": 0.5}},
     "--trainer end-to-end prunes once, after training (prune-after-training); compress.at 0.5 is for the greedy"),
])
def test_bad_decoupled_and_at_settings_are_refused(over, message):
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        get_trainer(_cfg(**over))


def test_bad_at_on_the_command_line_is_one_line_and_no_folder(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--prune-ratio", "0.5", "--set", "compress.at=0", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.stderr.strip().startswith("error: compress.at must be in (0, 1] (a fraction of a block's training")
    res = CliRunner().invoke(app, ["run", "--trainer", "decoupled", "--epochs", "2,1,1,1", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists() and "set train.total_epochs" in res.stderr
