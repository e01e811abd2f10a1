"""Every network registered by name, through the one path: build, plan, a short greedy fit with a
cut on the bundled sample, export and reload. A new registration is tested here for free."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.compress.graph import prune_stage
from prunegreedy.errors import ConfigError
from prunegreedy.nn.models import MODELS
from prunegreedy.nn.network import build_network
from prunegreedy.nn.plans import PLANS
from prunegreedy.report.tables import load_runs

runner = CliRunner()
TINY_SET = {"data.train_limit": 96, "data.test_limit": 64, "run.threads": 1, "train.batch_size": 32}
# Paper nets at a width a test can train; whole models as registered.
OPTIONS = {name: {"width_mult": 1 / 16} for name in PLANS}
NETWORKS = sorted([*PLANS, *MODELS])


@pytest.mark.parametrize("name", NETWORKS)
def test_every_registered_network_plans_fits_with_a_cut_exports_and_reloads(name, tmp_path, cache_dir):
    options = {f"model.{k}": v for k, v in OPTIONS.get(name, {}).items()}
    planned = prunegreedy.plan(model=name, prune_ratio=0.5, set={**TINY_SET, **options})
    assert (planned.width_after < planned.width).any() or (planned.params_after < planned.params).any()
    run = prunegreedy.fit(out=tmp_path / "run", model=name, prune_ratio=0.5, epochs=0.1, quiet=True,
                          set={**TINY_SET, **options, "compress.finetune_epochs": 0.1})
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["status"] == "finished" and meta["plan"] == name
    assert meta["params"] == planned.attrs["totals"]["params_after"]  # the plan counts what the run records
    assert not load_runs([run.path])[0].partial
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trained = run.backbone()(x)
        reloaded = prunegreedy.load_network(run.path)(x)
    # the trained model runs channels_last, the reloaded one not: the same up to float rounding
    assert trained.shape == (2, 10) and torch.allclose(trained, reloaded, rtol=1e-4, atol=1e-4 * reloaded.abs().max())
    summary = prunegreedy.export_run(run.path, tmp_path / "export", "native", with_head=True)
    with torch.no_grad():
        exported = prunegreedy.load_network(tmp_path / "export")(x)
    # BatchNorm folded: equal up to float rounding, relative to the logits' size (export.TOLERANCE)
    assert summary["export_max_diff"] == 0.0
    assert (exported - reloaded).abs().max().item() <= 1e-4 * max(1.0, reloaded.abs().max().item())


def test_a_finished_resnet20_run_is_not_partial(tmp_path, cache_dir):
    run = prunegreedy.fit(out=tmp_path / "r20", model="resnet20", epochs=0.1, quiet=True, set=TINY_SET)
    (loaded,) = load_runs([run.path])
    assert loaded.planned == 3 and loaded.done == 3 and not loaded.partial


def test_the_object_fit_trained_is_handed_back(tmp_path, cache_dir):
    mine = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    run = prunegreedy.fit(out=tmp_path / "mine", model=mine, split=["2", "5"], epochs=0.1, quiet=True,
                          set=TINY_SET)
    assert run.backbone() is mine and not mine.training


def test_model_options_apply_where_declared_and_are_refused_elsewhere(cache_dir):
    planned = prunegreedy.plan(model="resnet20", k=3, set=TINY_SET)
    assert planned["head"].tolist() == ["pooled k=3", "pooled k=3", "own (avgpool, fc)"]
    assert build_network("cifar10-k2", 10, 32, {"k": 3}).stages[0].spec.k == 3
    res = runner.invoke(app, ["plan", "--model", "resnet20", "--set", "model.width_mult=0.5"])
    assert res.exit_code == 2
    assert "model.width_mult applies to the networks that declare it" in res.output
    assert "resnet20 takes model.k, model.head, model.head_pool" in res.output


def test_sensitivity_and_budgets_are_checked_for_every_network(cache_dir):
    res = runner.invoke(app, ["run", "--model", "resnet20", "--trainer", "decoupled",
                              "--set", "compress.sensitivity=true", "--quiet"])
    assert res.exit_code == 2 and "compress.sensitivity needs the greedy trainer" in res.output


def test_an_unknown_trainer_is_named_whatever_the_network(cache_dir):
    res = runner.invoke(app, ["run", "--model", "resnet20", "--trainer", "layerwise", "--quiet"])
    assert res.exit_code == 2
    assert "unknown trainer 'layerwise'; valid: greedy, decoupled, end-to-end" in res.output


def test_the_next_stage_is_cut_with_the_block_but_never_scored():
    """Two untrained next stages of different weights: the block's cut is the same."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    cuts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nxt = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        nxt[0].weight.data.mul_(100.0 * seed)  # a next stage whose weights would dominate a shared score
        b, h = __import__("copy").deepcopy((block, head))
        record = prune_stage(b, h, nxt, (3, 8, 8), 0.5, "l1", scope="all")
        assert nxt[0].in_channels == 4  # its input is cut with the block's filters
        cuts.append(record.cuts[0].removed)
    alone = prune_stage(*__import__("copy").deepcopy((block, head)), None, (3, 8, 8), 0.5, "l1").cuts[0].removed
    assert cuts[0] == cuts[1] == alone


def test_a_run_folder_written_before_one_spec_loads_to_the_same_outputs(sample):
    """tests/data/old-run-quick-r05: quick at --prune-ratio 0.5, written by the code before networks
    had one spec, with the logits that code gave on 16 sample test images."""
    from safetensors.torch import load_file

    from prunegreedy.data.base import Normalize

    old = Path(__file__).parent / "data" / "old-run-quick-r05"
    x = Normalize(sample.mean, sample.std, torch.device("cpu"), channels_last=False)(sample.test_x[:16])
    with torch.no_grad():
        logits = prunegreedy.load_network(old)(x)
    assert torch.equal(logits, load_file(old / "logits-before.safetensors")["logits"])
    assert type(prunegreedy.Run(old).backbone(with_head=False)[0]).__name__ == "ConvBlock"


def test_an_old_run_folder_loads(cache_dir):
    """The committed benchmark run, written before networks had one spec."""
    old = "reports/benchmarks/accuracy-cpu2-runs/runs/greedy-r0.5"
    net = prunegreedy.load_network(old)
    meta = json.loads(open(f"{old}/run.json").read())
    assert sum(p.numel() for p in net.parameters()) == meta["params_with_head"]
    assert [m.conv.out_channels for m in net[:4]] == meta["widths"] == [32, 32, 64, 64]
    with pytest.raises(ConfigError):
        build_network("cifar10-k2", 10, 32, split=["blocks.0"])
