"""A split cut again into stages of about equal training memory (measure.balance, model.balance)."""
import itertools

import pytest
import torch
import yaml
from typer.testing import CliRunner

import prunegreedy as pg
from prunegreedy.cli import app
from prunegreedy.errors import ConfigError
from prunegreedy.measure.balance import _stage_bytes, balanced_split, cut_points
from prunegreedy.nn.models import build_model

from helpers import LinesUI

SPLIT = ["layer1", "layer2", "layer3"]


def _largest(cost, ends):
    return max(cost[i][j] for i, j in zip((0, *ends), ends))


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 5, 9])
def test_the_largest_stage_is_the_smallest_any_cut_gives(stages):
    net = build_model("resnet20", 10, 32)
    points = cut_points(net, SPLIT)
    cost = _stage_bytes(net, points, (3, 32, 32))
    best = min(_largest(cost, (*c, len(points))) for c in itertools.combinations(range(1, len(points)), stages - 1))
    split = balanced_split(net, SPLIT, stages, (3, 32, 32))
    ends = [points.index(e if e in points else f"{e}.2") + 1 for e in split]
    assert len(split) == stages and _largest(cost, ends) == best


def test_resnet20_cut_again():
    net = build_model("resnet20", 10, 32)
    assert cut_points(net, SPLIT) == [f"layer{g}.{b}" for g in (1, 2, 3) for b in range(3)]
    assert balanced_split(net, SPLIT, 3, (3, 32, 32)) == ["layer1.1", "layer2.0", "layer3"]
    assert balanced_split(net, SPLIT, 4, (3, 32, 32)) == ["layer1.0", "layer1.1", "layer2.0", "layer3"]
    cost = _stage_bytes(net, cut_points(net, SPLIT), (3, 32, 32))
    fmap, image, bn = 2 * 16 * 32 * 32 * 4, 2 * 3 * 32 * 32 * 4, 2 * 16 * 4  # batch 2, fp32; a BN's mean and invstd
    # the stem and a block: the image, BN inputs and ReLU outputs (6 maps), 3 BNs; every block after: 4 maps, 2 BNs
    assert [cost[0][b] for b in (1, 2, 3)] == [image + (2 + 4 * b) * fmap + (1 + 2 * b) * bn for b in (1, 2, 3)]
    state = net.layer1[0].bn1.running_mean.clone()
    balanced_split(net, SPLIT, 2, (3, 32, 32))
    assert torch.equal(net.layer1[0].bn1.running_mean, state)  # measured on a copy


def test_out_of_range_is_refused():
    net = build_model("resnet20", 10, 32)
    with pytest.raises(ConfigError, match=r"^model.balance must be between 1 and 9 for CifarResNet split at "
                                          r"layer1,layer2,layer3 \(its cut points: layer1.0,.*,layer3.2\), got 10$"):
        balanced_split(net, SPLIT, 10, (3, 32, 32))


def test_plan_and_run_use_the_balanced_split_and_record_it(tmp_path, cache_dir):
    ui = LinesUI()
    df = pg.plan(dataset="cifar10-sample", model="resnet20", prune_ratio=0.5, set={"model.balance": 4}, ui=ui)
    assert ui.lines[0] == ("split of resnet20: layer1.0,layer1.1,layer2.0,layer3 (layer1,layer2,layer3 cut again "
                           "into 4 stages whose largest keeps the fewest activations for training: model.balance)")
    assert df.out_shape.tolist() == ["16x32x32", "16x32x32", "32x16x16", "64x8x8"]
    res = CliRunner().invoke(app, [
        "run", "--dataset", "cifar10-sample", "--model", "resnet20", "--trainer", "end-to-end", "--epochs", "0.01",
        "--set", "model.balance=3", "--set", "data.train_limit=64", "--set", "data.test_limit=32",
        "--set", "run.threads=1", "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    model = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (model["split"], model["balance"]) == (["layer1.1", "layer2.0", "layer3"], 0)  # resumes as it ran
