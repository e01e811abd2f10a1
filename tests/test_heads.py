"""Auxiliary head types: shapes, exact parameter counts, spec round trips, folding, pruning, selection."""
import json

import pytest
import torch
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.compress.graph import prune_stage
from prunegreedy.compress.network import head_settings, network_spec
from prunegreedy.deploy.export import export_network
from prunegreedy.deploy.network import deployable, fold_trained
from prunegreedy.errors import ConfigError
from prunegreedy.measure.size import count_macs, count_params, output_shape
from prunegreedy.nn.blocks import ConvBlock
from prunegreedy.nn.heads import HEADS, MaxHead, MLPSRHead, PooledHead
from prunegreedy.nn.network import build_network, make_head
from prunegreedy.nn.plans import make_plan
from prunegreedy.nn.spec import StageSpec


def tiny_network(head: str):
    """cifar10-k2 at widths 8, 8, 16, 16 with `head` heads, every stage made and headed as a run
    makes them, untrained: (network, heads, spec)."""
    torch.manual_seed(0)
    net = build_network("cifar10-k2", 10, 32, {"widths": [8, 8, 16, 16], "head": head})
    spec = network_spec(net, {"image_shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
                              "classes": [str(i) for i in range(10)]})
    heads, shape = [], (3, 32, 32)
    for j, stage in enumerate(net.stages):
        shape = output_shape(net.module(j, shape[0]), shape)
        spec["heads"][str(j)] = head_settings(stage.spec)
        heads.append(net.head(j, shape))
    spec["pruning"] = [None] * len(heads)
    return net, heads, spec


# Hand counts for in_channels 8, hidden 4, 10 classes, an 8x8 map pooled to 2x2 first:
#   pooled k=2: conv3x3 8*4*9 = 288, BN(4) 8, BN(4) 8, fc 16*10+10 = 170           -> 474
#   pooled k=1: BN(8) 16, fc 32*10+10 = 330                                         -> 346
#   mlp-sr: conv1x1 8*4 + 4*4 + 4*4 = 64, three BN(4) 24, fc1 16*4 = 64, BN1d(4) 8,
#           fc 4*10+10 = 50                                                         -> 210
#   max k=2: conv3x3 8*4*9 = 288, BN(4) 8, fc 4*10 (no bias) = 40                   -> 336
#   max k=1: fc 8*10 = 80                                                           -> 80
CASES = [("pooled", 2, 474), ("pooled", 1, 346), ("mlp-sr", 2, 210), ("aux", 2, 474), ("max", 2, 336),
         ("max", 1, 80)]
STAGE_HEADS = [name for name in HEADS if name != "vgg"]  # vgg is VGG's own classifier, not a stage's head


@pytest.mark.parametrize("name,k,params", CASES)
def test_head_shape_params_and_spec_round_trip(name, k, params):
    head = make_head(8, StageSpec(8, k=k, head_width=4, head=name), 10, (8, 8)).eval()
    x = torch.randn(3, 8, 8, 8)
    assert head(x).shape == (3, 10) and count_params(head) == params
    again = HEADS[name].from_spec(head.spec())
    again.load_state_dict(head.state_dict())
    assert again.spec() == head.spec() and torch.equal(again.eval()(x), head(x))


def test_default_head_pool_is_a_quarter_of_the_side_at_least_2():
    assert make_head(8, StageSpec(8, head="pooled"), 10, (32, 32)).spec()["in_pool"] == 8
    assert make_head(8, StageSpec(8, head="mlp-sr"), 10, (16, 16)).spec()["in_pool"] == 4
    assert make_head(8, StageSpec(8, head="pooled"), 10, (4, 4)).spec()["in_pool"] == 2
    assert make_head(8, StageSpec(8, head="pooled", head_pool=3), 10, (32, 32)).spec()["in_pool"] == 3


def test_pooled_heads_cost_a_fraction_of_the_paper_head():
    # Stage 2 of the CPU recipe's plan: 64 filters at 32x32, head width 64.
    stage = StageSpec(64, head_width=64)
    block_macs = count_macs(ConvBlock(64, 64), (64, 32, 32))
    macs = {name: count_macs(make_head(64, StageSpec(64, head_width=64, head=name), 10, (32, 32)), (64, 32, 32))
            for name in ("aux", "pooled", "mlp-sr")}
    assert macs["aux"] > block_macs  # the paper head's conv runs at the block's resolution
    assert macs["pooled"] < 0.07 * block_macs and macs["mlp-sr"] < 0.03 * block_macs
    assert stage.head == "aux"


@pytest.mark.parametrize("name", STAGE_HEADS)
def test_folded_export_equals_the_trained_network(name, tmp_path):
    net, heads, spec = tiny_network(name)
    with torch.no_grad():  # non-trivial BN statistics, so folding has something to fold
        for m in [*net.model.modules(), *(m for h in heads for m in h.modules())]:
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    trained = deployable(net, heads, with_head=True).eval()
    folded = deployable(*fold_trained(net, heads, spec)[:2], with_head=True).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        diff = (folded(x) - trained(x)).abs().max().item()
    assert diff < 1e-4
    for fmt in ("native", "onnx"):
        r = export_network(net, heads, spec, tmp_path / fmt, fmt, with_head=True)
        assert r["export_max_diff"] < 1e-4 and r["fold_max_diff"] < 1e-4
    assert json.loads((tmp_path / "native" / "backbone.json").read_text())["network"]["heads"] == spec["heads"]
    loaded = prunegreedy.load_network(tmp_path / "native")  # its heads rebuilt from the spec, then folded
    assert type(loaded[-1]) is type(folded[-1])
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))


@pytest.mark.parametrize("name", STAGE_HEADS)
def test_pruning_a_block_shrinks_any_heads_input(name):
    head = make_head(16, StageSpec(16, head_width=8, head=name), 10, (8, 8))
    block = ConvBlock(4, 16)
    removed = prune_stage(block, head, None, (4, 8, 8), 0.5, "l1").cuts[0].removed
    assert len(removed) == 8 and block.conv.out_channels == 8 and head.spec()["in_channels"] == 8
    assert head(block(torch.randn(2, 4, 8, 8))).shape == (2, 10)
    assert isinstance(head, (PooledHead, MLPSRHead, MaxHead)) or name == "aux"


def test_paper_recipes_still_build_the_aux_head_and_model_head_replaces_it():
    for plan in ("cifar10-k1", "cifar10-k2", "cifar10-k3", "imagenet-k2"):
        assert {s.head for s in make_plan(plan)} == {"aux"}
    assert {s.head for s in make_plan("cifar10-k2", head="mlp-sr")} == {"mlp-sr"}
    assert [s.head for s in make_plan("vgg11", head="pooled")] == ["pooled"] * 7 + ["vgg"]
    with pytest.raises(ConfigError, match="unknown model.head 'mlp'; valid: aux, pooled, mlp-sr, max, vgg"):
        make_plan("cifar10-k2", head="mlp")
    with pytest.raises(ConfigError, match=r"model.head_pool 32 is larger than stage 3's 16x16 map; valid: 1 to 16"):
        make_plan("cifar10-k2", head="pooled", head_pool=32, input_size=32)


@pytest.mark.parametrize("sets,message", [
    (["model.head=mlp"], "error: unknown model.head 'mlp'; valid: aux, pooled, mlp-sr, max, vgg"),
    (["model.head=pooled", "model.head_pool=17"],
     "error: model.head_pool 17 is larger than stage 3's 16x16 map; valid: 1 to 16"),
    (["model.head=pooled", "model.head_pool=0"], "error: model.head_pool must be at least 1, got 0"),
])
def test_bad_head_options_are_one_line_exit_2_and_no_folder(tmp_path, sets, message):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 2 and res.stderr.strip() == message and not out.exists()
