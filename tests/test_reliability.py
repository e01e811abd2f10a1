"""Failures in the middle of a run: a full disk, a diverging loss, an unwritable folder."""
import errno
import json

from typer.testing import CliRunner

from prunegreedy import fileio
from prunegreedy.cli import app
from prunegreedy.records import RunRecord
from prunegreedy.deploy.network import load_trained

runner = CliRunner()
TINY = ["--epochs", "0.3", "--set", "model.widths=8,8,16,16", "--set", "data.train_limit=300",
        "--set", "data.test_limit=100", "--set", "run.threads=1", "--quiet"]


def test_disk_full_while_writing_a_checkpoint_keeps_finished_stages(tmp_path, cache_dir, monkeypatch):
    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = RunRecord.save_stage

    def save_then_fill_disk(self, stage, net, spec, probs):
        if stage == 2:
            monkeypatch.setattr(fileio.os, "fsync", enospc)
        return real(self, stage, net, spec, probs)

    monkeypatch.setattr(RunRecord, "save_stage", save_then_fill_disk)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), *TINY])
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.startswith(f"error: cannot write {out}/checkpoints/stage-2.probs.safetensors: No space left on device")
    assert line.endswith(f"; 1 finished stage(s) kept, resume with: prunegreedy run --resume {out}")
    assert not list(out.rglob("*.tmp"))  # no half-written file left behind
    net, heads, spec = load_trained(out)  # still the intact stage-1 network
    assert len(spec["pruning"]) == 1 and len(net.modules_of()) == 1 and len(heads) == 1
    assert json.loads((out / "run.json").read_text())["stages_done"] == 1

    monkeypatch.undo()  # space again: the run continues where it stopped
    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_diverging_loss_stops_the_stage_and_says_so(tmp_path, cache_dir):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), *TINY, "--set", "train.lr=1e30"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: stage 1 stopped: loss became nan at step ")
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "failed" and meta["stages_done"] == 0


def test_unwritable_output_folder(tmp_path, cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["run", "--out", str(blocker / "run"), *TINY])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith(f"error: cannot create run folder {blocker / 'run'}: Not a directory")
