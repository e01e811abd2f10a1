"""The `run` command end to end on real images, and every bad input it must refuse cleanly."""
import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from prunegreedy.data import registry as data_registry
from prunegreedy.cli import app

runner = CliRunner()
TINY = ["--set", "model.widths=8,8,16,16", "--set", "data.train_limit=300", "--set", "data.test_limit=200",
        "--set", "run.threads=1", "--quiet"]


def test_smoke_run_with_pruning(tmp_path, cache_dir):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), "--epochs", "0.5", "--prune-ratio", "0.5", *TINY])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "log.txt", "model.json", "model.safetensors", "report.html", "run.json",
        "stages.csv", "summary.csv"]
    rows = pd.read_csv(out / "stages.csv")
    phases = ("trained", "pruned", "finetuned")
    assert list(zip(rows.stage, rows.phase)) == [(s, p) for s in (1, 2, 3, 4) for p in phases]
    final = rows[rows.phase == "finetuned"]
    assert final.width.tolist() == [4, 4, 8, 8] and final.width_in.tolist() == [3, 4, 4, 8]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "finished" and meta["stages_done"] == 4 and meta["widths"] == [4, 4, 8, 8]
    assert meta["final_acc"] == final.test_acc.iloc[-1] and meta["head_accs"] == final.test_acc.tolist()
    assert [len(v["cuts"][0]["removed"]) for v in meta["removed_filters"].values()] == [4, 4, 8, 8]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"stage-{j}.{ext}" for j in (1, 2, 3, 4) for ext in ("json", "probs.safetensors", "safetensors")]
    assert f"report: {out / 'report.html'}" in res.output


def test_output_to_a_file_has_no_blank_lines_between_phase_rows(tmp_path, cache_dir):
    out = tmp_path / "run"
    args = [a for a in TINY if a != "--quiet"]  # progress bars on, but the output is not a terminal
    res = runner.invoke(app, ["run", "--out", str(out), "--epochs", "0.2", "--prune-ratio", "0.5", *args])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "" not in lines and sum(" finetuned " in line for line in lines) == 4


def test_same_seed_same_records(tmp_path, cache_dir):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        res = runner.invoke(app, ["run", "--out", str(out), "--epochs", "0.3", "--prune-ratio", "0.5",
                                  "--importance", "taylor", *TINY])
        assert res.exit_code == 0, res.output
    a, b = (pd.read_csv(o / "stages.csv") for o in outs)
    assert a.test_acc.tolist() == b.test_acc.tolist()
    ra, rb = (json.loads((o / "run.json").read_text())["removed_filters"] for o in outs)
    assert ra == rb


def _corrupt_copy(tmp_path):
    root = tmp_path / "corrupt"
    shutil.copytree(data_registry.SAMPLE_DIR, root)
    (root / "train" / "dog" / "0000.jpg").write_bytes(b"not a jpeg")
    return root


BAD = [
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid: cifar10, cifar10-sample, imagefolder"),
    (["--set", "model.plan=resnet"], "unknown model 'resnet'; valid: resnet20, resnet56, torchvision:resnet18"),
    (["--device", "tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda, mps"),
    (["--k", "0"], "--k must be a positive integer (hidden layers of each aux head), got 0"),
    (["--model", "resnet20", "--set", "model.width_mult=0.5"], "model.width_mult applies to the networks that declare"),
    (["--prune-ratio", "1"], "prune ratio must be in [0, 1), got 1.0"),
    (["--prune-ratio", "-0.1"], "prune ratio must be in [0, 1), got -0.1"),
    (["--prune-ratio", "nan"], "prune ratio must be in [0, 1), got nan"),
    (["--prune-ratios", "0.5,0.5"], "prune ratios list 2 values but cifar10-k2 has 4 stages"),
    (["--importance", "fpgm"], "unknown importance 'fpgm'; valid: l1, l2, bn, taylor, random"),
    (["--set", "compress.hook=magic"], "unknown compression hook 'magic'; valid: none, prune"),
    (["--trainer", "layerwise"], "unknown trainer 'layerwise'; valid: greedy, decoupled, end-to-end"),
    (["--set", "train.total_epochs=-1"], "train.total_epochs must be a positive number, got -1.0"),
    (["--set", "train.lr=0"], "train.lr must be a positive number, got 0.0"),
    (["--set", "compress.finetune_lr=-0.01"], "compress.finetune_lr must be a positive number, got -0.01"),
    (["--set", "compress.repair_lr=inf"], "compress.repair_lr must be a positive number, got inf"),
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'; valid keys: trainer, epochs"),
    (["--set", "train.batch_size=big"], "train.batch_size: expected an integer, got 'big'"),
    (["--epochs", "1,1"], "train.epochs lists 2 values but cifar10-k2 has 4 stages; give --epochs E (every stage) "
                          "or 4 values, e.g. --epochs 2,2,2,2"),
    (["--config", "nonesuch"], "config 'nonesuch' is neither a YAML file nor a recipe; recipes: cifar10-cpu"),
    (["--config", "{bad_yaml}"], "is not valid YAML at line 2"),
    (["--dataset", "cifar10", "--config", "quick", "--data-dir", "{missing}"], "does not exist"),
    (["--dataset", "cifar10", "--config", "quick", "--data-dir", "{empty}"],
     "is neither in cifar-10-batches-py layout"),
    (["--dataset", "imagefolder", "--data-dir", "{no_images}"], "holds no images"),
    (["--dataset", "cifar10", "--config", "quick", "--data-dir", "{corrupt}"], "cannot decode image"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_no_folder(tmp_path, cache_dir, args, message):
    (tmp_path / "bad.yaml").write_text("train: [oops\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "test" / "cat").mkdir(parents=True)
    paths = {"bad_yaml": tmp_path / "bad.yaml", "missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "no_images": tmp_path / "no_images"}
    if "{corrupt}" in args:
        paths["corrupt"] = _corrupt_copy(tmp_path)
    args = [a.format(**paths) for a in args]
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), *args, *TINY])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not out.exists()


def test_a_recipe_given_another_network_spreads_its_epochs_and_keeps_its_cuts_for_training_from_scratch():
    from prunegreedy.api.run import _resolve
    from prunegreedy.trainers.common import NullUI

    resolve = lambda **o: _resolve("cifar10-fast", None, "cifar10-sample", NullUI(), o)[0]  # noqa: E731
    cfg = resolve(model="resnet20")  # cifar10-fast's [4, 4] are its two stages' epochs
    assert (cfg.train.epochs, cfg.model.split, cfg.compress.at, cfg.compress.scope) == (4.0, None, 0.5, "all")
    assert resolve(model="resnet20", epochs=[1, 2, 3]).train.epochs == [1.0, 2.0, 3.0]
    assert resolve().train.epochs == [4.0, 4.0]
    c = resolve(model="resnet20", trainer="compress", weights="w.safetensors", prune_ratio=0.5).compress
    assert (c.at, c.cuts, c.rewind, c.scope, c.ratio) == (1.0, 1, False, "internal", 0.5)
    c = resolve(trainer="compress", set={"compress.scope": "all"}).compress
    assert (c.at, c.scope) == (1.0, "all")


@pytest.mark.parametrize("dataset", ["imagefolder", "imagenet"])
def test_class_without_training_images_is_refused_before_the_run_folder(tmp_path, cache_dir, dataset):
    from PIL import Image

    root = tmp_path / "d"
    for split, classes in (("train", ["cat"]), ("test", ["cat", "dog"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 30, 90)).save(root / split / c / "0.jpg")
    (root / "train" / "dog").mkdir()
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), "--dataset", dataset, "--data-dir", str(root), *TINY])
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines() == [f"error: class 'dog' has no training images in {root}/train; every class "
                                       f"needs images in train/ and test/"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_out_folder_holding_a_run_is_never_overwritten(tmp_path, cache_dir):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", "--out", str(out), "--epochs", "0.2", *TINY]).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["run", "--out", str(out), "--epochs", "0.2", *TINY])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {out} already holds a run; choose another --out or --name"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_dataset_cifar10_without_config_names_the_recipe_it_chose(tmp_path, cache_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = runner.invoke(app, ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "recipe: cifar10-fast - the CPU recipe" in res.stdout and "no GPU found" in res.stdout
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    res = runner.invoke(app, ["run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                              "--out", str(tmp_path / "r")])
    assert "recipe: cifar10-k2 - the paper's k=2 recipe" in res.stdout
