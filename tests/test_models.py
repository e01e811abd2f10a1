import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunegreedy
from prunegreedy.compress.network import checkpoint_module, head_settings, network_spec, with_head
from prunegreedy.measure.size import output_shape

from prunegreedy.nn import network as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.nn import spec as models_spec
from prunegreedy.nn.blocks import ConvBlock
from prunegreedy.nn.blocks import Psi
from prunegreedy.errors import ConfigError
from prunegreedy.errors import SpecError
from prunegreedy.nn.heads import AuxHead, VGGHead
from prunegreedy.nn.blocks import VGGBlock


def test_psi_is_invertible_space_to_depth():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    y = Psi()(x)
    assert y.shape == (2, 12, 2, 2)
    assert torch.equal(Psi().inverse(y), x)
    assert torch.equal(y[0, :4, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))  # one 2x2 patch of channel 0


def test_paper_plans_match_method_md():
    k1 = models_plans.make_plan("cifar10-k1")
    assert [(s.width, s.psi, s.bn, s.k) for s in k1] == [
        (256, False, False, 1), (256, False, False, 1), (512, True, False, 1), (1024, True, False, 1),
        (1024, False, False, 1)]
    for k in (2, 3):
        plan = models_plans.make_plan(f"cifar10-k{k}")
        assert [(s.width, s.psi, s.bn, s.k, s.head_width) for s in plan] == [
            (128, False, True, k, 128), (128, False, True, k, 128), (256, True, True, k, 256),
            (256, False, True, k, 256)]
    half = models_plans.make_plan("cifar10-k2", 0.5)
    assert [(s.width, s.head_width) for s in half] == [(64, 64), (64, 64), (128, 128), (128, 128)]
    explicit = models_plans.make_plan("cifar10-k2", widths=[16, 16, 32, 32])
    assert [(s.width, s.head_width) for s in explicit] == [(16, 16), (16, 16), (32, 32), (32, 32)]
    both = models_plans.make_plan("cifar10-k2", 0.5, widths=[32, 32, 64, 64])  # widths win over width_mult
    assert [s.head_width for s in both] == [32, 32, 64, 64]


def test_unknown_plan_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown model plan 'resnet'; valid: cifar10-k1, cifar10-k2, cifar10-k3"):
        models_plans.make_plan("resnet")
    with pytest.raises(ConfigError, match="has 2 entries but plan 'cifar10-k2' has 4 stages"):
        models_plans.make_plan("cifar10-k2", widths=[8, 8])


def test_block_and_head_shapes_and_params():
    block = ConvBlock(128, 256, psi=True, bn=True)  # psi 512 -> conv 256 at half resolution
    assert block(torch.zeros(2, 128, 32, 32)).shape == (2, 256, 16, 16)
    assert sum(p.numel() for p in block.parameters()) == 512 * 256 * 9 + 2 * 256
    head = AuxHead(256, 256, k=3, num_classes=10)
    assert len(head.body) == 6  # two conv+BN+ReLU
    assert head(torch.zeros(2, 256, 16, 16)).shape == (2, 10)
    assert head.fc.in_features == 4 * 256  # pooled to 2x2
    k1 = AuxHead(64, 999, k=1, num_classes=10)
    assert len(k1.body) == 0 and k1.fc.in_features == 256
    assert ConvBlock(3, 8, bn=False).conv.bias is not None


DATASET = {"image_shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "classes": [str(i) for i in range(10)]}


def _saved(stem, name: str, widths: list[int], stages: int, heads: dict | None = None) -> nn.Module:
    """The first `stages` stages of plan `name` at `widths`, made and headed as a run makes them
    (`heads`: {stage: settings} for a head other than the plan's), saved as a run saves them (spec
    and weights at `stem`); returns the network with its last head, in eval mode."""
    torch.manual_seed(0)
    net = models_net.build_network(name, 10, 32, {"widths": widths})
    spec, made, shape = network_spec(net, DATASET), [], (3, 32, 32)
    for j in range(stages):
        block = net.module(j, shape[0])
        shape = output_shape(block, shape)
        spec["heads"][str(j)] = (heads or {}).get(j, head_settings(net.stages[j].spec))
        made.append(net.head(j, shape, with_head(net.stages[j].spec, spec["heads"][str(j)])))
    spec["pruning"] = [None] * stages
    save_file({k: v.contiguous() for k, v in checkpoint_module(net, made).state_dict().items()},
              stem.with_suffix(".safetensors"))
    stem.with_suffix(".json").write_text(json.dumps(spec))
    return nn.Sequential(*net.modules_of(), made[-1]).eval()


def _tampered(stem, edit):
    spec = json.loads(stem.with_suffix(".json").read_text())
    edit(spec)
    stem.with_suffix(".json").write_text(json.dumps(spec))
    return stem


def _refused(stem, monkeypatch, error, message):
    """Loading the network at `stem` fails with `error` matching `message`, before any weight is loaded."""
    def forbidden(*a, **k):
        raise AssertionError("loaded weights a bad spec must never reach")

    with monkeypatch.context() as m:
        m.setattr(nn.Module, "load_state_dict", forbidden)
        with pytest.raises(error, match=message):
            prunegreedy.load_network(stem, heads=True)


def test_spec_round_trip_and_validation(tmp_path, monkeypatch):
    net = _saved(tmp_path / "model", "cifar10-k2", [8, 8, 16, 16], 4)
    rebuilt = prunegreedy.load_network(tmp_path / "model")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    # block 1 narrower than its saved weights (and than block 2's input): refused, named
    stem = _tampered(tmp_path / "model", lambda s: s["args"].update(widths=[8, 7, 16, 16]))
    _refused(stem, monkeypatch, SpecError, r"does not match its spec: heads.1.body.0.weight has shape \(8, 8, 3, 3\), "
                                           r"spec says \(8, 7, 3, 3\)")
    _saved(tmp_path / "model", "cifar10-k2", [8, 8, 16, 16], 4)
    stem = _tampered(tmp_path / "model", lambda s: s.update(kind="lambda"))
    _refused(stem, monkeypatch, SpecError, r"^not the spec of a network \(kind 'prunegreedy-network'\)$")


def test_imagenet_plans_follow_the_official_code():
    k1 = models_plans.make_plan("imagenet-k1")
    assert [(s.width, s.psi, s.bn, s.k) for s in k1] == [
        (256, True, False, 1), (256, False, False, 1), (512, True, False, 1), (1024, True, False, 1),
        (2048, True, False, 1), (2048, False, False, 1), (4096, True, False, 1), (4096, False, False, 1)]
    for k in (2, 3):
        plan = models_plans.make_plan(f"imagenet-k{k}")
        assert [(s.width, s.psi, s.bn, s.k, s.head_width) for s in plan] == [
            (128, True, True, k, 512), (128, False, True, k, 512), (256, True, True, k, 1024),
            (256, False, True, k, 1024), (512, True, True, k, 2048), (512, False, True, k, 2048),
            (1024, True, True, k, 4096), (1024, False, True, k, 4096)]
    for name in ("imagenet-k1", "imagenet-k2", "imagenet-k3"):
        assert {(s.block, s.pool, s.head) for s in models_plans.make_plan(name)} == {("conv", False, "aux")}
    first = models_net.make_block(3, models_plans.make_plan("imagenet-k2")[0])
    assert first.conv.in_channels == 12  # psi on the input: 3x224x224 -> 12x112x112
    head = models_net.make_head(128, models_plans.make_plan("imagenet-k2")[0], 1000)
    assert head.pool_size == 2 and head.fc.in_features == 4 * 512


@pytest.mark.parametrize("name", list(models_plans.PLANS))
def test_every_plan_runs_stage_by_stage(name):
    """Each stage's block and head at 1/16 width on a 64x64 image: shapes chain through the plan."""
    torch.manual_seed(0)
    x, c = torch.randn(1, 3, 64, 64), 3
    with torch.no_grad():
        for s in models_plans.make_plan(name, 1 / 16):
            block = models_net.make_block(c, s).eval()
            x = block(x)
            assert x.shape[1] == s.width == block.out_channels
            assert models_net.make_head(s.width, s, 10).eval()(x).shape == (1, 10)
            c = s.width


def test_blocks_and_heads_are_picked_by_name():
    vgg = models_spec.StageSpec(16, False, True, 3, 8, block="vgg", pool=True, head="vgg")
    block, head = models_net.make_block(4, vgg), models_net.make_head(16, vgg, 10)
    assert block.spec() == {"type": "vgg", "in_channels": 4, "out_channels": 16, "pool": True, "bn": True}
    assert head.spec() == {"type": "vgg", "in_channels": 16, "hidden": 8, "num_classes": 10}
    assert block.conv.bias is not None and block(torch.zeros(1, 4, 8, 8)).shape == (1, 16, 4, 4)
    assert isinstance(models_net.make_block(4, models_spec.StageSpec(16, True, False, 1, 16)), ConvBlock)  # old positional form
    with pytest.raises(ConfigError, match="unknown block type 'resnet'; valid: conv, vgg"):
        models_net.make_block(4, models_spec.StageSpec(16, block="resnet"))
    with pytest.raises(ConfigError, match="unknown head type 'mlp'; valid: aux, pooled, mlp-sr, max, vgg"):
        models_net.make_head(16, models_spec.StageSpec(16, head="mlp"), 10)
    explicit = models_plans.make_plan("vgg11", widths=[8, 8, 16, 16, 32, 32, 32, 32])  # widths keep block/pool/head
    assert [(s.block, s.pool, s.head, s.head_width) for s in explicit][-2:] == [
        ("vgg", False, "aux", 32), ("vgg", True, "vgg", 256)]


def test_vgg_spec_round_trip_and_per_type_validation(tmp_path, monkeypatch):
    vgg = {"type": "vgg", "k": 3, "hidden": 16, "in_pool": None}  # stage 3 learns against VGG's classifier
    net = _saved(tmp_path / "model", "vgg11", [4, 4, 8, 8, 8, 8, 8, 8], 3, heads={2: vgg})
    model, heads = prunegreedy.load_network(tmp_path / "model", heads=True)  # 3 of 8 stages: no final head yet
    rebuilt = nn.Sequential(*model.blocks, heads[-1])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    spec = json.loads((tmp_path / "model.json").read_text())
    assert [h["type"] for h in spec["heads"].values()] == ["aux", "aux", "vgg"]
    assert isinstance(rebuilt[-1], VGGHead) and [type(b) for b in rebuilt[:-1]] == [VGGBlock] * 3
    stem = _tampered(tmp_path / "model", lambda s: s["heads"]["2"].update(hidden=0))
    _refused(stem, monkeypatch, SpecError, r"^head 2: field 'hidden' must be a positive integer, got 0$")
    stem = _tampered(tmp_path / "model", lambda s: s["heads"]["1"].pop("k"))
    _refused(stem, monkeypatch, SpecError, r"^head 1: field 'k' must be a positive integer, got None$")
