"""`prunegreedy plan` / prunegreedy.plan: what a run will build and cut, checked against what real
runs of the same command record (stages.csv, run.json), and refusing what `run` refuses."""
import json

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app

runner = CliRunner()
TINY = ["--epochs", "0.2", "--set", "data.train_limit=200", "--set", "data.test_limit=100", "--set", "run.threads=1",
        "--quiet"]
# a whole network: one step per stage, no fine-tuning; the cut is what is compared
ONE_STEP = ["--epochs", "0.01", "--set", "data.train_limit=64", "--set", "data.test_limit=32",
            "--set", "compress.finetune_epochs=0", "--set", "run.threads=1", "--quiet"]


def _options(args: list[str]) -> dict:
    """The CLI's arguments as prunegreedy.plan's keyword arguments."""
    out, sets = {}, {}
    for key, value in zip(args[::2], args[1::2]):
        if key == "--set":
            k, v = value.split("=", 1)
            sets[k] = v
        else:
            out[key[2:].replace("-", "_")] = float(value) if key in ("--prune-ratio", "--epochs") else value
    return {**out, "set": sets}


def _run(out, args):
    res = runner.invoke(app, ["run", "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "stages.csv")
    return rows, json.loads((out / "run.json").read_text())


def _check_counts(plan: pd.DataFrame, rows: pd.DataFrame, meta: dict) -> None:
    """Every count the plan predicts equals the run's: as each stage trained and after its cut."""
    trained = rows[rows.phase == "trained"].set_index("stage")
    last = rows.groupby("stage").tail(1).set_index("stage")
    for s in plan.itertuples():
        assert (s.params_backbone, s.macs_backbone, s.params, s.macs, s.width) == tuple(
            trained.loc[s.stage, ["params_backbone", "macs_backbone", "params_stage", "macs_stage", "width"]])
        assert (s.params_backbone_after, s.macs_backbone_after, s.params_after, s.macs_after, s.head_params_after,
                s.head_macs_after, s.width_after, s.ratio) == tuple(last.loc[s.stage, [
                    "params_backbone", "macs_backbone", "params_stage", "macs_stage", "params_head", "macs_head",
                    "width", "prune_ratio"]])
    t = plan.attrs["totals"]
    assert (t["params_after"], t["macs_after"], t["params_with_head_after"], t["macs_with_head_after"]) == (
        meta["params"], meta["macs"], meta["params_with_head"], meta["macs_with_head"])
    assert meta["planned"] == json.loads(json.dumps(plan.attrs))  # run.json keeps the same plan


@pytest.mark.parametrize("ratios", [["--prune-ratio", "0.5"], ["--prune-ratios", "0.25,0.5,0.5,0.75"]],
                         ids=["uniform", "per-stage"])
def test_the_quick_plan_predicts_what_the_run_records(tmp_path, cache_dir, ratios):
    plan = prunegreedy.plan(**_options([*ratios, *TINY[:-1]]))
    rows, meta = _run(tmp_path / "run", [*ratios, *TINY])
    assert len(plan) == 4 and plan.width.tolist() == [16, 16, 32, 32]
    _check_counts(plan, rows, meta)
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert "plan of cifar10-k2: 4 stages" in log[1] and "MACs" in log[1]


@pytest.mark.parametrize("scope", ["internal", "all"])
@pytest.mark.parametrize("model", ["resnet20", "torchvision:resnet18"])
def test_a_models_groups_and_widths_are_what_the_run_prunes(tmp_path, cache_dir, model, scope):
    args = ["--model", model, "--prune-ratio", "0.5", "--set", f"compress.scope={scope}", *ONE_STEP]
    plan = prunegreedy.plan(**_options(args[:-1]))
    rows, meta = _run(tmp_path / "run", args)
    _check_counts(plan, rows, meta)
    for s in plan.attrs["stages"]:  # every group the plan lists, and no other, is cut to its width
        cut = {c["root"]: c["width"] - len(c["removed"]) for c in meta["removed_filters"][str(s["stage"])]["cuts"]}
        assert {g["root"]: g["kept"] for g in s["groups"]} == cut
        assert all(g["kept"] == g["width"] // 2 for g in s["groups"])
    kinds = {g["kind"] for s in plan.attrs["stages"] for g in s["groups"]}
    assert kinds == ({"internal", "output"} if scope == "all" else {"internal"})
    assert (plan.width_after < plan.width).all() if scope == "all" else (plan.width_after == plan.width).all()


def test_the_cli_prints_one_line_per_stage_and_writes_plan_csv_only_with_out(tmp_path, cache_dir):
    res = runner.invoke(app, ["plan", "--model", "resnet20", "--prune-ratio", "0.5"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "MACs" in lines[0] and "MACs" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["1", "2", "3"] and "total backbone" in lines[5]
    assert "layer1.0.conv1 16->8: layer1.0.bn1, layer1.0.conv2 (in)  [internal]" in res.output
    out = tmp_path / "plan"
    res = runner.invoke(app, ["plan", "--model", "resnet20", "--prune-ratio", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["plan.csv"]
    table = pd.read_csv(out / "plan.csv")
    assert table.stage.tolist() == ["1", "2", "3", "total"] and table.width_after.tolist()[:3] == [16, 32, 64]
    res = runner.invoke(app, ["plan", "--model", "resnet20", "--out", str(out)])
    assert res.exit_code == 2 and "not an empty folder" in res.stderr


def test_the_cpu_recipe_plans(cache_dir):
    res = runner.invoke(app, ["plan", "--dataset", "cifar10-sample", "--config", "cifar10-cpu", "--prune-ratio", "0.5"])
    assert res.exit_code == 0, res.output
    assert "plan of cifar10-k2: 4 stages" in res.output and "pooled" in res.output


def test_a_budget_shows_its_target_and_the_uniform_ratio_that_meets_it(cache_dir):
    plan = prunegreedy.plan(target_macs="0.25x")
    b = plan.attrs["budget"]
    assert b["kind"] == "macs" and b["target"] == b["unpruned"] // 4 and 0 < b["uniform_ratio"] < 1
    assert plan.attrs["totals"]["macs_after"] <= b["target"] and (plan.ratio == b["uniform_ratio"]).all()
    assert any("no ratio is known yet" in n for n in plan.attrs["notes"])


def test_planning_keeps_the_random_state_and_the_callers_module(cache_dir):
    stages = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())]
    state = torch.get_rng_state()
    plan = prunegreedy.plan(model=stages, prune_ratio=0.5)
    assert torch.equal(state, torch.get_rng_state())
    assert plan.width_after.tolist() == [4, 4] and stages[0][0].out_channels == 8


BAD = [["--model", "nonesuch"], ["--model", "resnet20", "--split", "layer1,nonesuch"],
       ["--model", "resnet20", "--set", "compress.scope=most"], ["--prune-ratio", "1.5"],
       ["--model", "resnet20", "--set", "model.balance=10"], ["--model", "resnet20", "--set", "model.balance=-1"],
       ["--set", "model.balance=2"],
       ["--trainer", "end-to-end", "--prune-ratio", "0.5", "--set", "compress.finetune_epochs=1,1"],
       ["--dataset", "cifar10", "--config", "quick", "--data-dir", "{missing}"],
       ["--dataset", "cifar10", "--config", "quick", "--data-dir", "{empty}"],
       ["--dataset", "imagefolder", "--data-dir", "{no_images}"], ["--dataset", "imagenet", "--data-dir", "{empty}"]]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_input_is_refused_as_run_refuses_it(tmp_path, cache_dir, args):
    (tmp_path / "empty").mkdir()
    for split in ("train", "test"):
        (tmp_path / "no_images" / split / "cat").mkdir(parents=True)
    args = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty", no_images=tmp_path / "no_images")
            for a in args]
    said = []
    for command in ("plan", "run"):
        out = tmp_path / command
        res = runner.invoke(app, [command, "--out", str(out), *args, *TINY])
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and not out.exists()
        said.append(lines[0])
    assert said[0] == said[1]
