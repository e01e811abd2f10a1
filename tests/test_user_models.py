"""Whole networks (model.arch, model=) trained greedily stage by stage and pruned through the
dependency graph, checkpointed after every stage and reloaded as the user's own class."""
import json
import shutil

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.errors import ConfigError, SpecError
from prunegreedy.nn.models import CifarResNet

runner = CliRunner()
TINY = ["--epochs", "0.2", "--set", "data.train_limit=200", "--set", "data.test_limit=100",
        "--set", "run.threads=1", "--quiet"]
TINY_SET = {"data.train_limit": 200, "data.test_limit": 100, "run.threads": 1}
PHASES = ("trained", "pruned", "finetuned")
TIMING = ["seconds", "images_per_s"]


def _run(out, *args):
    res = runner.invoke(app, ["run", "--out", str(out), *args, *TINY])
    assert res.exit_code == 0, res.output
    return pd.read_csv(out / "stages.csv")


def _first_convs(net: CifarResNet) -> list[int]:
    return [b.conv1.out_channels for layer in (net.layer1, net.layer2, net.layer3) for b in layer]


@pytest.fixture(scope="module")
def r20(tmp_path_factory, cache_dir):
    """resnet20 in its 3 default stages, half of every residual block's inner channels cut."""
    out = tmp_path_factory.mktemp("r20") / "run"
    _run(out, "--model", "resnet20", "--prune-ratio", "0.5")
    return out


def test_resnet20_internal_scope_halves_inner_convs_and_keeps_stage_outputs(r20):
    rows = pd.read_csv(r20 / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == [(s, p) for s in (1, 2, 3) for p in PHASES]
    assert rows.width.tolist() == [16] * 3 + [32] * 3 + [64] * 3
    assert rows[rows.phase == "pruned"].removed.tolist() == [3 * 8, 3 * 16, 3 * 32]
    meta = json.loads((r20 / "run.json").read_text())
    assert meta["status"] == "finished" and meta["widths"] == [16, 32, 64] and meta["plan"] == "resnet20"
    net = prunegreedy.load_network(r20)
    assert type(net) is CifarResNet and not net.training
    assert _first_convs(net) == [8] * 3 + [16] * 3 + [32] * 3
    assert [b.conv2.out_channels for b in net.layer3] == [64] * 3 and net.fc.in_features == 64
    assert sorted(p.name for p in (r20 / "checkpoints").iterdir()) == [
        f"stage-{j}.{ext}" for j in (1, 2, 3) for ext in ("json", "probs.safetensors", "safetensors")]


def test_a_kill_at_a_stage_boundary_resumes_to_the_same_run(r20, tmp_path):
    """What a SIGKILL right after stage 2's checkpoint leaves: run.json says 2 stages, stage 3 absent."""
    killed = tmp_path / "killed"
    shutil.copytree(r20, killed)
    meta = json.loads((killed / "run.json").read_text())
    meta.update(status="running", stages_done=2)
    for key in ("seconds", "final_acc", "head_accs", "params", "macs", "widths", "ensemble_acc", "writer"):
        meta.pop(key, None)
    (killed / "run.json").write_text(json.dumps(meta))
    for p in (killed / "checkpoints").glob("stage-3.*"):
        p.unlink()
    for p in ("model.json", "model.safetensors"):
        shutil.copy(killed / "checkpoints" / p.replace("model", "stage-2"), killed / p)
    res = runner.invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert res.exit_code == 0, res.output
    a, b = (pd.read_csv(p / "stages.csv").drop(columns=TIMING) for p in (killed, r20))
    pd.testing.assert_frame_equal(a, b)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(prunegreedy.load_network(killed)(x), prunegreedy.load_network(r20)(x))


def test_scope_all_also_narrows_the_stage_outputs(tmp_path, cache_dir):
    out = tmp_path / "all"
    rows = _run(out, "--model", "resnet20", "--prune-ratio", "0.5", "--set", "compress.scope=all")
    final = rows[rows.phase == "finetuned"]
    assert final.width.tolist() == [8, 16, 32] and final.width_in.tolist() == [3, 8, 16]
    net = prunegreedy.load_network(out)
    assert net.conv1.out_channels == 8 and net.fc.in_features == 32 and _first_convs(net)[0] == 8


class TwoBlocks(nn.Module):
    """A user's own network: two conv stages and a classifier, nothing registered."""

    def __init__(self):
        super().__init__()
        self.body1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body2(self.body1(x))), 1))


def test_fit_a_users_module_and_load_it_back_onto_a_fresh_instance(tmp_path, cache_dir):
    net = TwoBlocks()
    run = prunegreedy.fit(out=tmp_path / "mine", model=net, split=["body1", "body2"], prune_ratio=0.5,
                          epochs=0.2, quiet=True, set=TINY_SET)
    # Trained and pruned in place: body1's inner conv (scope internal), and body2, a single conv, at its output
    assert run.status == "finished" and [net.body1[0].out_channels, net.body1[3].out_channels] == [4, 16]
    assert net.body2[0].out_channels == 8 and net.fc.in_features == 8
    with pytest.raises(SpecError, match="TwoBlocks is not a registered model; pass a fresh"):
        prunegreedy.load_network(run.path)
    with pytest.raises(SpecError, match="not the TwoBlocks this network was trained as"):
        prunegreedy.load_network(run.path, model=CifarResNet(3, 10))
    loaded = prunegreedy.load_network(run.path, model=TwoBlocks())
    assert type(loaded) is TwoBlocks and [loaded.body1[0].out_channels, loaded.body2[0].out_channels] == [4, 8]
    x = torch.randn(4, 3, 32, 32)
    net.eval().to(memory_format=torch.contiguous_format)
    assert torch.equal(net(x), loaded(x))


def test_a_cifar_resnet_instance_reloads_with_identical_outputs(tmp_path, cache_dir):
    net = CifarResNet(3, 10)
    run = prunegreedy.fit(out=tmp_path / "inst", model=net, split=["layer1", "layer2", "layer3"], prune_ratio=0.5,
                          epochs=0.2, quiet=True, set={**TINY_SET, "compress.finetune_epochs": 0.2})
    loaded = prunegreedy.load_network(run.path, model=CifarResNet(3, 10))
    assert type(loaded) is CifarResNet and _first_convs(loaded) == _first_convs(net) == [8] * 3 + [16] * 3 + [32] * 3
    x = torch.randn(4, 3, 32, 32)
    net.eval().to(memory_format=torch.contiguous_format)
    assert torch.equal(net(x), loaded(x))


def test_torchvision_resnet18_in_four_stages_reloads_as_torchvisions_resnet(tmp_path, cache_dir):
    import torchvision

    out = tmp_path / "r18"
    res = runner.invoke(app, ["run", "--out", str(out), "--model", "torchvision:resnet18", "--split",
                              "layer1,layer2,layer3,layer4", "--prune-ratio", "0.5", "--epochs", "0.01",
                              "--set", "data.train_limit=64", "--set", "data.test_limit=64", "--set",
                              "compress.finetune_epochs=0.01", "--set", "run.threads=1", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == [(s, p) for s in (1, 2, 3, 4) for p in PHASES]
    net = prunegreedy.load_network(out)
    assert type(net) is torchvision.models.ResNet
    assert [net.layer1[0].conv1.out_channels, net.layer4[0].conv1.out_channels, net.fc.in_features] == [32, 256, 512]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet21"], "unknown model 'resnet21'; valid: resnet20, resnet56, torchvision:resnet18"),
    (["--model", "resnet20", "--split", "layer1,layer9"], "'layer9' is not a module of CifarResNet"),
    (["--model", "resnet20", "--set", "compress.scope=most"], "compress.scope must be internal or all, got 'most'"),
])
def test_bad_models_and_splits_exit_2_without_a_folder(tmp_path, cache_dir, args, message):
    out = tmp_path / "bad"
    res = runner.invoke(app, ["run", "--out", str(out), *args, *TINY])
    assert res.exit_code == 2 and message in res.output and not out.exists(), res.output


def test_fit_refuses_a_users_module_with_a_bad_split_before_any_folder(tmp_path):
    with pytest.raises(ConfigError, match="'body3' is not a module of TwoBlocks"):
        prunegreedy.fit(out=tmp_path / "x", model=TwoBlocks(), split=["body1", "body3"], quiet=True)
    assert not (tmp_path / "x").exists()  # without a split it gets the default one (test_autosplit.py)


def test_sensitivity_of_a_residual_stage_cuts_copies_as_its_hook_does(tmp_path, cache_dir):
    out = tmp_path / "sens"
    rows = _run(out, "--model", "resnet20", "--prune-ratio", "0.5", "--set", "compress.sensitivity=true",
                "--set", "data.holdout=50", "--set", "compress.sensitivity_ratios=0.25,0.5")
    sens = pd.read_csv(out / "sensitivity.csv")
    assert list(zip(sens.stage, sens.ratio)) == [(s, r) for s in (1, 2, 3) for r in (0.0, 0.25, 0.5)]
    assert sens.width.tolist() == [16] * 3 + [32] * 3 + [64] * 3  # internal scope: stage outputs kept
    at = lambda r: sens[sens.ratio == r].params_backbone.tolist()  # noqa: E731
    assert at(0.0) == rows[rows.phase == "trained"].params_backbone.tolist()
    assert at(0.5) == rows[rows.phase == "pruned"].params_backbone.tolist()  # the copy lost what the hook cut
    assert at(0.5)[0] == 7520 and at(0.0)[0] == 14480
    assert all(a > b > c for a, b, c in zip(at(0.0), at(0.25), at(0.5)))
    assert sens.holdout_acc.between(0, 100).all() and len(pd.unique(sens.holdout_acc)) > 1


def test_a_budget_on_a_model_cuts_every_stage_at_the_one_ratio_that_meets_it(tmp_path, cache_dir):
    out = tmp_path / "budget"
    rows = _run(out, "--model", "resnet20", "--target-macs", "0.6x")
    meta = json.loads((out / "run.json").read_text())
    b = meta["budget"]
    assert (b["kind"], b["text"], b["unpruned"], b["target"]) == ("macs", "0.6x", 41213952, 24728371)
    assert meta["macs"] == b["final"] == b["predicted"] <= b["target"] and b["met"] is True
    assert rows[rows.phase == "pruned"].prune_ratio.tolist() == [b["uniform_ratio"]] * 3
    # The smallest such ratio (to 4 decimals): a hair less misses the target.
    cut = lambda r: prunegreedy.plan(model="resnet20", dataset="cifar10-sample", prune_ratio=r).attrs  # noqa: E731
    assert cut(b["uniform_ratio"])["totals"]["macs_after"] == b["final"]
    assert cut(b["uniform_ratio"] - 1e-4)["totals"]["macs_after"] > b["target"]
    assert "holdout_images" not in meta["dataset"] and not (out / "sensitivity.csv").exists()
    assert "target_macs: 0.6x" in (out / "config.yaml").read_text()  # the request, as given


@pytest.mark.parametrize("args, message", [
    (["--target-macs", "0.05x"], "--target-macs 0.05x (2060697 MACs) cannot be met: model resnet20 cut at ratio 0.99"),
    (["--target-macs", "0.5x", "--prune-ratio", "0.5"],
     "--target-macs chooses every stage's prune ratio itself; drop --prune-ratio"),
])
def test_a_budget_a_model_cannot_meet_is_refused_before_any_folder(tmp_path, cache_dir, args, message):
    out = tmp_path / "bad"
    res = runner.invoke(app, ["run", "--out", str(out), "--model", "resnet20", *args, *TINY])
    assert res.exit_code == 2 and message in res.output.replace(",", "") and not out.exists(), res.output


def test_three_cuts_of_a_residual_stage_count_from_its_original_widths_and_reload(tmp_path, cache_dir):
    out = tmp_path / "cuts"
    rows = _run(out, "--model", "resnet20", "--prune-ratio", "0.5", "--set", "compress.at=0.6",
                "--set", "compress.cuts=3", "--set", "train.batch_size=8")  # 5 steps: a cut at 1, 2 and 3
    pruned = rows[rows.phase == "pruned"]
    # Cubic ratios 0.352, 0.481, 0.5 of the original inner widths: 16 -> 10 -> 8 (the third cut finds
    # 8 already: no row), 32 -> 21 -> 17 -> 16, 64 -> 41 -> 33 -> 32; three blocks a stage.
    assert pruned.groupby("stage").size().tolist() == [2, 3, 3]
    assert pruned.removed.tolist() == [3 * 6, 3 * 2, 3 * 11, 3 * 4, 3 * 1, 3 * 23, 3 * 8, 3 * 1]
    cuts = json.loads((out / "run.json").read_text())["removed_filters"]
    assert [len(cuts[s]["cuts"]) for s in ("1", "2", "3")] == [6, 9, 9]  # every cut of every block, in order
    net = prunegreedy.load_network(out)
    assert _first_convs(net) == [8] * 3 + [16] * 3 + [32] * 3


def test_a_cut_inside_the_schedule_is_an_event_of_the_stage_loop(tmp_path, cache_dir):
    out = tmp_path / "at"
    rows = _run(out, "--model", "resnet20", "--prune-ratio", "0.5", "--set", "compress.at=0.5")
    assert list(zip(rows.stage, rows.phase)) == [(s, p) for s in (1, 2, 3) for p in ("pruned", "trained")]
    assert _first_convs(prunegreedy.load_network(out)) == [8] * 3 + [16] * 3 + [32] * 3


def test_last_head_aux_gives_the_last_stage_an_aux_head_and_run_backbone_loads_the_model(tmp_path, cache_dir):
    out = tmp_path / "aux"
    rows = _run(out, "--model", "resnet20", "--set", "model.last_head=aux")
    assert rows.phase.tolist() == ["trained"] * 3 and rows.params_head.iloc[-1] > 650  # not the 64 -> 10 fc
    net, heads = prunegreedy.load_network(out, heads=True)
    assert type(net) is CifarResNet and len(heads) == 3 and all(type(h).__name__ == "PooledHead" for h in heads)
    backbone = prunegreedy.Run(out).backbone()  # its own fc never trained: the stages, then the aux head
    assert type(backbone) is torch.nn.Sequential and type(backbone[-1]).__name__ == "PooledHead"
    plan_net = prunegreedy.load_network(_plan_run(tmp_path))  # a paper net loads the same way
    assert type(plan_net) is torch.nn.Sequential and type(plan_net[-1]).__name__ == "AuxHead"


def _plan_run(tmp_path):
    out = tmp_path / "plan"
    _run(out, "--set", "model.widths=4,4,8,8")
    return out


def test_a_run_of_a_users_module_resumes_only_with_the_module(tmp_path, cache_dir):
    run = prunegreedy.fit(out=tmp_path / "mine", model=TwoBlocks(), split=["body1", "body2"], epochs=0.2,
                          quiet=True, set=TINY_SET)
    meta = json.loads((run.path / "run.json").read_text())
    meta.update(status="interrupted", stages_done=1)
    (run.path / "run.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["run", "--resume", str(run.path), "--quiet"])
    assert res.exit_code == 2 and "resume it from Python with prunegreedy.resume(path, model=" in res.output
    done = prunegreedy.resume(run.path, model=TwoBlocks(), quiet=True)
    assert done.status == "finished" and done.stages.stage.tolist() == [1, 2]
