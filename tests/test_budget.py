"""Pruning to a budget (issue 15): the held-out slice, the cost model, the ratio rule, budgeted runs, bad input."""
import copy
import dataclasses
import json
import shutil

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.compress.budget import BlockCost, CostModel, choose, parse_budget, rest_ratio, widths_at
from prunegreedy.compress.graph import kept_filters, prune_stage
from prunegreedy.compress.sensitivity import measure, recalibrate
from prunegreedy.config import load
from prunegreedy.measure.size import count_macs, count_params, output_shape
from prunegreedy.data.base import Normalize
from prunegreedy.nn.network import make_block, make_head
from prunegreedy.nn.plans import make_plan
from prunegreedy.records import RunRecord
from prunegreedy.report.plots import PLOTS
from prunegreedy.trainers.run import new_meta, open_session

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

runner = CliRunner()
TINY = ["--set", "model.widths=8,8,16,16", "--set", "data.train_limit=400", "--set", "data.test_limit=200",
        "--set", "data.holdout=100", "--set", "run.threads=1", "--quiet"]
BUDGETED = ["--epochs", "0.3", "--set", "compress.finetune_epochs=0.2", "--target-macs", "0.25x", *TINY]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def prune_block(block, head, input_shape, ratio, importance) -> list[int]:
    """The filters a paper block's cut removes (its one group), [] when it removes none."""
    record = prune_stage(block, head, None, input_shape, ratio, importance)
    return list(record.cuts[0].removed) if record.cuts else []


def images(x: torch.Tensor) -> set[bytes]:
    return {bytes(i.cpu().numpy().tobytes()) for i in x}


# ---------------------------------------------------------------------------------------------
# The held-out slice

def test_holdout_is_stratified_seeded_and_disjoint_from_training_and_test(sample):
    train, held = sample.split_holdout(300, seed=0)
    assert len(held) == 300 and train.num_train == sample.num_train - 300
    assert torch.bincount(held.y, minlength=10).tolist() == [30] * 10  # 150 per class in the sample
    kept = sorted(set(range(sample.num_train)) - set(held.indices.tolist()))
    assert torch.equal(train.train_x, sample.train_x[kept])  # the rest, in order
    assert torch.equal(held.x, sample.train_x[held.indices]) and torch.equal(held.y, sample.train_y[held.indices])
    assert not images(held.x) & images(train.train_x) and not images(held.x) & images(sample.test_x)
    assert torch.equal(train.test_x, sample.test_x)
    assert torch.equal(sample.split_holdout(300, seed=0)[1].indices, held.indices)
    assert not torch.equal(sample.split_holdout(300, seed=1)[1].indices, held.indices)


def test_only_runs_that_decide_from_data_hold_images_out(tmp_path, sample):
    plain = load("quick", {"run": {"device": "cpu"}})
    budget = load("quick", {"compress": {"hook": "prune", "target_macs": "0.5x"}, "run": {"device": "cpu"}})
    cpu = torch.device("cpu")
    a = open_session(plain, RunRecord(tmp_path / "a", new_meta(plain, sample, cpu), writes=False), sample, cpu)
    assert a.decisions is None and torch.equal(a.ds.train_x, sample.train_x)
    assert "holdout_images" not in a.record.meta.dataset
    b = open_session(budget, RunRecord(tmp_path / "b", new_meta(budget, sample, cpu), writes=False), sample, cpu)
    held = b.decisions.holdout
    assert len(held) == 300 and b.ds.num_train == 1200 and b.record.meta.dataset["holdout_images"] == 300
    # the images every gradient step draws from (b.ds) never include a held-out one
    assert not images(held.x) & images(b.ds.train_x) and not images(held.x) & images(b.ds.test_x)


# ---------------------------------------------------------------------------------------------
# Sensitivity: pruned heads read the kept channels of one block output; BatchNorm recalibration

def _stage2(sample, head="pooled"):
    """Blocks 1-2 of the k=2 plan (widths 8, 8) and block 2's head, with BN statistics that are not
    the defaults (as after training), on the sample's images."""
    plan = [dataclasses.replace(s, head=head) for s in make_plan("cifar10-k2", 0.0625)]
    torch.manual_seed(0)
    b1, b2 = make_block(3, plan[0]), make_block(plan[0].width, plan[1])
    head = make_head(plan[1].width, plan[1], 10, (32, 32))
    for m in [*b1.modules(), *b2.modules(), *head.modules()]:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return b1, b2, head, Normalize(sample.mean, sample.std, torch.device("cpu"), False)


@pytest.mark.parametrize("kind", ["pooled", "mlp-sr", "aux"])  # the first two share their pool
def test_sensitivity_scores_each_pruned_copy_exactly_as_the_copy_itself(sample, kind):
    b1, b2, head, norm = _stage2(sample, kind)
    held = sample.split_holdout(200, seed=0)[1]
    rows = measure([b1], b2, head, (8, 32, 32), [0.25, 0.5, 0.75], "l1", 1, held, norm, 64, torch.device("cpu"))
    assert [r["width"] for r in rows] == [8, 6, 4, 2]
    for r in rows:
        b, h = copy.deepcopy(b2).eval(), copy.deepcopy(head).eval()
        prune_block(b, h, (8, 32, 32), r["ratio"], "l1")
        with torch.no_grad():
            pred = h(b(b1.eval()(norm(held.x)))).argmax(1)
        assert r["holdout_acc"] == round(100.0 * (pred == held.y).sum().item() / len(held), 4)
    # The sliced output is the pruned block's output, channel for channel.
    b = copy.deepcopy(b2).eval()
    removed = prune_block(b, copy.deepcopy(head), (8, 32, 32), 0.5, "l1")
    kept = [i for i in range(8) if i not in removed]
    with torch.no_grad():
        x = b1(norm(held.x[:16]))
        assert torch.allclose(b(x), b2.eval()(x)[:, kept], atol=1e-6)


def test_recalibration_re_estimates_the_heads_batch_norm_and_leaves_the_stage_alone(sample):
    b1, b2, head, norm = _stage2(sample)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    calib = sample.train_x[:300]
    kept = [0, 2, 3, 5, 6, 7]
    h = copy.deepcopy(head)
    with torch.no_grad():  # the pruned head's input conv keeps the input channels `kept`
        conv = h.body[0]
        conv.weight = torch.nn.Parameter(conv.weight[:, kept].clone())
        conv.in_channels = len(kept)
    seen = []
    hook = h.body[1].register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    with torch.no_grad():
        out = b2.eval()(b1.eval()(norm(calib)))
    recalibrate([(h, kept)], iter([(0, out)]), torch.device("cpu"))
    hook.remove()
    z = seen[0].transpose(0, 1).flatten(1)  # the BN's input, per channel: one batch of all 300 images
    assert torch.allclose(h.body[1].running_mean, z.mean(1), atol=1e-5)
    assert torch.allclose(h.body[1].running_var, z.var(1, unbiased=True), rtol=1e-4)
    assert h.body[1].momentum == head.body[1].momentum and int(h.body[1].num_batches_tracked) == 1
    held = sample.split_holdout(200, seed=0)[1]
    measure([b1], b2, head, (8, 32, 32), [0.5], "l1", 1, held, norm, 64, torch.device("cpu"), calibration=calib)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


# ---------------------------------------------------------------------------------------------
# The cost model: the same count as fvcore

@pytest.mark.parametrize("plan,mult,side", [("cifar10-k2", 0.125, 32), ("cifar10-k1", 0.03, 32), ("vgg11", 0.0625, 32)])
def test_cost_model_equals_fvcore_at_any_kept_widths(plan, mult, side):
    stages = make_plan(plan, mult)
    model = CostModel.of(stages, (3, side, side))
    gen = torch.Generator().manual_seed(0)
    for trial in range(3):
        widths = [s.width if trial == 0 else int(torch.randint(1, s.width + 1, (1,), generator=gen)) for s in stages]
        blocks, shape = [], (3, side, side)
        for s, w in zip(stages, widths):
            blocks.append(make_block(shape[0], dataclasses.replace(s, width=w)))
            shape = output_shape(blocks[-1], shape)
        backbone = torch.nn.Sequential(*blocks)
        assert model.cost("macs", widths) == count_macs(backbone, (3, side, side)), widths
        assert model.cost("params", widths) == count_params(backbone), widths


# ---------------------------------------------------------------------------------------------
# The ratio rule on a synthetic table

# Three blocks of 10 filters on 4 input channels, each costing (input width) x (width): widths
# (a, b, c) cost 4a + a*b + b*c; unpruned 240. Target 100, chance accuracy 10 %. Measured ratios
# 0, 0.2, 0.4, 0.6, 0.8 keep 10, 8, 6, 4, 2 filters. Python rounds halves to even (round(6.5) = 6).
SYNTH = CostModel(4, [10, 10, 10], [BlockCost(1, 0, 1, 0)] * 3)
RATIOS = [0.0, 0.2, 0.4, 0.6, 0.8]
STAGE1 = list(zip(RATIOS, [80.0, 79.0, 76.0, 68.0, 50.0]))  # drops 0, 1, 4, 12, 30; 70 at ratio 1
STAGE2 = list(zip(RATIOS, [85.0, 85.0, 84.0, 80.0, 70.0]))  # drops 0, 0, 1, 5, 15; 75 at ratio 1
STEEP2 = list(zip(RATIOS, [85.0, 84.0, 65.0, 55.0, 45.0]))  # drops 0, 1, 20, 30, 40; 75 at ratio 1


def test_ratio_rule_on_a_synthetic_table_gives_the_hand_computed_ratios():
    # Stage 1, 2 stages left. R(w): the common ratio later blocks then need (k = their kept width).
    #   w=10: 40 + 10k + k^2 <= 100 -> k <= 4 -> R = 0.55;  w=8: 32 + 8k + k^2 -> k <= 5 -> R = 0.45
    #   w=6:  24 +  6k + k^2 -> k <= 6 -> R = 0.35;          w=4: 16 + 4k + k^2 -> k <= 7 -> R = 0.25
    #   w=2:   8 +  2k + k^2 -> k <= 8 -> R = 0.15.  r* (one ratio for all): 4k + 2k^2 <= 100 -> k = 6,
    #   the measured 0.4. All feasible (5w + 1 <= 100) and reachable (14w + 100 >= 99).
    #   d1(0.55) = 4 + 8 * 0.75 = 10, d1(0.45) = 4 + 8 * 0.25 = 6, d1(0.35) = 1 + 3 * 0.75 = 3.25,
    #   d1(0.25) = 1 + 3 * 0.25 = 1.75, d1(0.15) = 0.75
    #   predicted d1(r) + 2 d1(R): r=0: 20, 0.2: 1 + 12 = 13, 0.4: 4 + 6.5 = 10.5, 0.6: 12 + 3.5 = 15.5,
    #   0.8: 30 + 1.5 = 31.5  -> ratio 0.4, width 6.
    c1 = choose(SYNTH, "macs", 100, [], [STAGE1], round_to=1, chance=10.0)
    assert (c1.ratio, c1.width, c1.rule) == (0.4, 6, "sensitivity")
    assert c1.rest_ratio == pytest.approx(0.35, abs=1e-6) and c1.predicted_drop == pytest.approx(10.5, abs=1e-4)
    # Stage 2 after width 6, 1 stage left: cost 24 + 6w + w*k.
    #   w=4 and w=2 are over-cut: with the last block unpruned 24 + 16w = 88 and 56 < 99 (1 % under target).
    #   w=10: 84 + 10k -> k = 1 -> R = 0.85; w=8: 72 + 8k -> k = 3 -> R = 0.65; w=6: 60 + 6k -> k = 6 -> R = 0.35.
    #   predicted d2(r) + mean(d1(R), d2(R)):
    #   r=0:   0 + (40 + 30) / 2 = 35          [d1(0.85) = 30 + 40/4, d2(0.85) = 15 + 60/4]
    #   r=0.2: 0 + (16.5 + 7.5) / 2 = 12       [d1(0.65) = 12 + 18/4, d2(0.65) = 5 + 10/4]
    #   r=0.4: 1 + (3.25 + 0.75) / 2 = 3       -> ratio 0.4, width 6.
    c2 = choose(SYNTH, "macs", 100, [6], [STAGE1, STAGE2], round_to=1, chance=10.0)
    assert (c2.ratio, c2.width) == (0.4, 6) and c2.predicted_drop == pytest.approx(3.0, abs=1e-4)
    # The same stage with a steep curve is cut less:
    #   r=0: (40 + 48.75) / 2 = 44.375; r=0.2: 1 + (16.5 + 32.5) / 2 = 25.5; r=0.4: 20 + (3.25 + 15.25) / 2 = 29.25
    c2s = choose(SYNTH, "macs", 100, [6], [STAGE1, STEEP2], round_to=1, chance=10.0)
    assert (c2s.ratio, c2s.width) == (0.2, 8) and c2s.predicted_drop == pytest.approx(25.5, abs=1e-4)
    # Last stage: the largest width within the target, never above it. After (6, 6): 60 + 6k -> 6
    # filters (cost 96); after (6, 8): 72 + 8k -> 3 (cost 96), or 2 with round_to 2 (cost 88).
    assert (choose(SYNTH, "macs", 100, [6, 6], [STAGE1] * 3, 1, 10.0).width, SYNTH.cost("macs", [6, 6, 6])) == (6, 96)
    c3 = choose(SYNTH, "macs", 100, [6, 8], [STAGE1] * 3, round_to=1, chance=10.0)
    assert (c3.ratio, c3.width, c3.rule) == (0.7, 3, "last stage") and SYNTH.cost("macs", [6, 8, 3]) == 96
    c4 = choose(SYNTH, "macs", 100, [6, 8], [STAGE1] * 3, round_to=2, chance=10.0)
    assert (c4.ratio, c4.width) == (0.8, 2) and kept_filters(10, c4.ratio, 2) == 2


def test_rest_ratio_is_the_smallest_common_ratio_that_fits():
    r = rest_ratio(SYNTH, "macs", 100, [10], 1)
    assert r == pytest.approx(0.55, abs=1e-9)
    assert SYNTH.cost("macs", [10] + widths_at([10, 10], r, 1)) <= 100
    assert SYNTH.cost("macs", [10] + widths_at([10, 10], r - 1e-6, 1)) > 100
    assert rest_ratio(SYNTH, "macs", 500, [10], 1) == 0.0
    assert rest_ratio(SYNTH, "macs", 50, [10], 1) is None  # 40 + 10 + 1 > 50 even at one filter


def test_budget_parsing():
    assert parse_budget("40M", "macs").target(0) == 40_000_000
    assert parse_budget("120k", "params").target(0) == 120_000
    assert parse_budget("0.25x", "macs").target(1001) == 250  # floored: never above the request
    assert parse_budget("1x", "macs").target(7) == 7


# ---------------------------------------------------------------------------------------------
# A budgeted run end to end

@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("budget") / "run"
    res = invoke("run", "--out", out, *BUDGETED)
    assert res.exit_code == 0, res.output
    return out


def test_budgeted_run_meets_its_target_and_records_its_choices(budgeted):
    meta = json.loads((budgeted / "run.json").read_text())
    b = meta["budget"]
    assert b["kind"] == "macs" and b["request"] == "0.25x" and b["target"] == b["unpruned"] // 4
    assert b["final"] == meta["macs"] and b["met"] and 0.98 <= meta["macs"] / b["target"] <= 1.0
    assert len(b["ratios"]) == 4 and b["stages"]["4"]["rule"] == "last stage"
    assert meta["dataset"]["train_images"] == 300 and meta["dataset"]["holdout_images"] == 100
    stages = pd.read_csv(budgeted / "stages.csv")
    final = stages.groupby("stage").tail(1)
    assert final["prune_ratio"].tolist() == b["ratios"]
    assert final["width"].tolist() == meta["widths"]
    assert meta["widths"] == [kept_filters(n, r) for n, r in zip([8, 8, 16, 16], b["ratios"])]
    sens = pd.read_csv(budgeted / "sensitivity.csv")
    assert list(sens.columns) == ["stage", "ratio", "width", "holdout_acc", "params_backbone", "macs_backbone"]
    assert sens.groupby("stage").size().tolist() == [10] * 4  # ratio 0 and 0.1 .. 0.9
    trained = stages[stages["phase"] == "trained"].set_index("stage")
    at0 = sens[sens["ratio"] == 0].set_index("stage")
    assert at0["macs_backbone"].equals(trained["macs_backbone"]) and at0["width"].equals(trained["width"])


def test_budgeted_run_macs_equal_fvcore_on_its_model_and_export(budgeted, tmp_path):
    meta = json.loads((budgeted / "run.json").read_text())
    model, _ = prunegreedy.load_network(budgeted, heads=True)
    assert count_macs(torch.nn.Sequential(*model.blocks), (3, 32, 32)) == meta["macs"]
    res = invoke("export", budgeted, "--out", tmp_path / "export")
    assert res.exit_code == 0, res.output
    exported = prunegreedy.load_backbone(tmp_path / "export").eval()
    # The export folds BatchNorm into the convs: fvcore's count loses exactly BN's 2 MACs per output element.
    bn, shape = 0, (3, 32, 32)
    for block in model.blocks:
        shape = output_shape(block, shape)
        bn += 2 * shape[0] * shape[1] * shape[2]
    assert count_macs(exported, (3, 32, 32)) == meta["macs"] - bn


def test_budgeted_run_report_marks_the_budget_and_draws_sensitivity(budgeted):
    summary = pd.read_csv(budgeted / "summary.csv")
    row = summary.iloc[0]
    assert row["budget"] == "macs 0.25x" and bool(row["budget_met"]) and not bool(row["reference"])
    assert row["prune_ratio"] == ",".join(f"{r:g}" for r in json.loads((budgeted / "run.json").read_text())[
        "budget"]["ratios"])
    html = (budgeted / "report.html").read_text()
    assert html.count("<img") == len(PLOTS) + 1 and "Sensitivity: run" in html
    assert "budget macs 0.25x" in html and "Budget met" in html


def test_resumed_budgeted_run_decides_as_the_uninterrupted_one(budgeted, tmp_path):
    # Pretend the run stopped after stage 2: its records of stages 3-4 are thrown away and redone.
    run = tmp_path / "resumed"
    shutil.copytree(budgeted, run)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "status": "interrupted", "stages_done": 2}))
    for p in (run / "checkpoints").glob("stage-[34].*"):
        p.unlink()
    res = invoke("run", "--resume", run, "--quiet")
    assert res.exit_code == 0, res.output
    a, b = (json.loads((p / "run.json").read_text()) for p in (budgeted, run))
    assert a["budget"] == b["budget"] and a["widths"] == b["widths"] and a["final_acc"] == b["final_acc"]
    assert (budgeted / "sensitivity.csv").read_text() == (run / "sensitivity.csv").read_text()


def test_sweep_over_budgets_gives_the_accuracy_versus_budget_table(tmp_path, cache_dir):
    out = tmp_path / "sweep"
    args = ["sweep", "--out", out, "--target-macs", "0.5x,0.1x", "--epochs", "0.2",
            "--set", "compress.finetune_epochs=0.1", *TINY]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["run"].tolist() == ["macs-0.5x", "macs-0.1x"]
    assert summary["budget"].tolist() == ["macs 0.5x", "macs 0.1x"] and summary["budget_met"].all()
    assert ((summary["budget_final"] <= summary["budget_target"])
            & (summary["budget_final"] >= 0.98 * summary["budget_target"])).all()
    assert "macs 0.1x: final test acc" in res.output
    again = invoke(*args)
    assert again.exit_code == 0 and again.output.count("already finished, skipped") == 2


def test_sensitivity_without_a_budget_keeps_the_configured_ratio(tmp_path, cache_dir):
    out = tmp_path / "run"
    res = invoke("run", "--out", out, "--epochs", "0.2", "--set", "compress.sensitivity=true",
                 "--set", "compress.sensitivity_ratios=0.25,0.5", *TINY)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "run.json").read_text())
    assert "budget" not in meta and meta["widths"] == [8, 8, 16, 16] and meta["dataset"]["train_images"] == 300
    assert meta["sensitivity"]["bn_images"] == 300  # the default 2,000, capped at the training images
    sens = pd.read_csv(out / "sensitivity.csv")
    assert sens["ratio"].tolist() == [0.0, 0.25, 0.5] * 4 and sens["width"].tolist()[:3] == [8, 6, 4]
    assert "Sensitivity: run" in (out / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming what is valid, exit 2, no run folder

BAD = [
    (["--target-macs", "40Q"], "--target-macs expects an absolute count with an optional K, M or G suffix"),
    (["--target-macs", "-1"], "--target-macs expects an absolute count"),
    (["--target-macs", "0x"], "--target-macs 0x: a fraction of the unpruned plan must be in (0, 1]"),
    (["--target-params", "1.5x"], "--target-params 1.5x: a fraction of the unpruned plan must be in (0, 1]"),
    (["--target-macs", "0.5x", "--prune-ratio", "0.5"], "--target-macs chooses every stage's prune ratio itself; "
                                                         "drop --prune-ratio"),
    (["--target-macs", "0.5x", "--prune-ratios", "0.5,0.5,0.5,0.5"], "drop --prune-ratios"),
    (["--target-macs", "0.5x", "--target-params", "0.5x"], "give one budget: --target-macs or --target-params"),
    (["--set", "compress.target_macs=0.5x", "--set", "compress.target_params=1M"], "give one budget"),
    (["--set", "compress.target_params=12Q"], "--target-params expects"),
    (["--target-macs", "1K"], "--target-macs 1K (1,000 MACs) cannot be met: plan cifar10-k2 with one filter per "
                              "block"),
    (["--target-params", "0.001x"], "cannot be met"),
    (["--target-macs", "0.5x", "--set", "data.holdout=400"],
     "data.holdout 400 is not smaller than the training set (400 images of cifar10-sample); valid: 1 to 399"),
    (["--target-macs", "0.5x", "--set", "compress.at=0.5"], "needs compress.at 1"),
    (["--target-macs", "0.5x", "--trainer", "end-to-end"], "needs the greedy trainer"),
    (["--target-macs", "0.5x", "--set", "compress.hook=none"], "prunes with compress.hook prune, got 'none'"),
    (["--set", "compress.sensitivity_ratios=0.5,1.2"], "compress.sensitivity_ratios must be distinct ratios in (0, 1)"),
    (["--set", "compress.sensitivity_bn_images=-1"], "compress.sensitivity_bn_images must be >= 0"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_budget_input_is_one_line_exit_2_and_no_folder(tmp_path, cache_dir, args, message):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), *TINY, *args])  # args last: their --set wins
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--target-macs", "0.5x,40Q"], "--target-macs expects"),
    (["--target-macs", "0.5x,0.5x"], "--target-macs needs distinct budgets"),
    (["--target-macs", "0.5x", "--prune-ratios", "0.5"], "sweep needs exactly one of --prune-ratios, --target-macs"),
    ([], "sweep needs exactly one of"),
])
def test_bad_sweep_budgets_are_refused_before_any_run(tmp_path, cache_dir, args, message):
    out = tmp_path / "sweep"
    res = runner.invoke(app, ["sweep", "--out", str(out), *args, *TINY])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().startswith("error: ") and message in res.stderr
    assert not out.exists()
