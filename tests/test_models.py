import pytest
import torch

from prunegreedy.nn import net as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.nn import spec as models_spec
from prunegreedy.nn.blocks import ConvBlock
from prunegreedy.nn.blocks import Psi
from prunegreedy.errors import ConfigError
from prunegreedy.errors import SpecError
from prunegreedy.nn.heads import AuxHead


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


def test_spec_round_trip_and_validation():
    plan = models_plans.make_plan("cifar10-k2", widths=[8, 8, 16, 16])
    blocks, heads, c = [], [], 3
    for s in plan:
        blocks.append(models_net.make_block(c, s))
        heads.append(models_net.make_head(s.width, s, 10))
        c = s.width
    net = models_net.GreedyNet(blocks, heads).eval()
    rebuilt = models_net.build_from_spec(net.spec())
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), net(x))
    spec = net.spec()
    spec["blocks"][1]["in_channels"] = 7
    with pytest.raises(SpecError, match="block 1: in_channels 7 does not match block 0's out_channels 8"):
        models_net.build_from_spec(spec)
    spec = net.spec()
    spec["blocks"][0]["type"] = "lambda"
    with pytest.raises(SpecError, match="block 0: unknown block type 'lambda'; valid: conv"):
        models_net.build_from_spec(spec)


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
    with pytest.raises(ConfigError, match="unknown head type 'mlp'; valid: aux, pooled, mlp-sr, vgg"):
        models_net.make_head(16, models_spec.StageSpec(16, head="mlp"), 10)
    explicit = models_plans.make_plan("vgg11", widths=[8, 8, 16, 16, 32, 32, 32, 32])  # widths keep block/pool/head
    assert [(s.block, s.pool, s.head, s.head_width) for s in explicit][-2:] == [
        ("vgg", False, "aux", 32), ("vgg", True, "vgg", 256)]


def _vgg_net() -> models_net.GreedyNet:
    plan = models_plans.make_plan("vgg11", widths=[4, 4, 8, 8, 8, 8, 8, 8])[:3]
    blocks, c = [], 3
    for s in plan:
        blocks.append(models_net.make_block(c, s))
        c = s.width
    last = models_spec.StageSpec(8, head="vgg", head_width=16)
    return models_net.GreedyNet(blocks, [models_net.make_head(4, plan[0], 10), models_net.make_head(8, last, 10)]).eval()


def test_vgg_spec_round_trip_and_per_type_validation():
    net = _vgg_net()
    rebuilt = models_net.build_from_spec(net.spec()).eval()
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), net(x))
    assert [h["type"] for h in net.spec()["heads"]] == ["aux", "vgg"]
    spec = net.spec()
    del spec["blocks"][1]["pool"]  # a vgg block is checked for its own fields, not the conv block's
    with pytest.raises(SpecError, match="block 1: field 'pool' must be a bool, got None"):
        models_net.build_from_spec(spec)
    spec = net.spec()
    spec["heads"][1]["hidden"] = 0
    with pytest.raises(SpecError, match="head 1: field 'hidden' must be a positive integer, got 0"):
        models_net.build_from_spec(spec)
    spec = net.spec()
    spec["blocks"][0] = {"type": "conv", "in_channels": 3, "out_channels": 4, "pool": True, "bn": True}
    with pytest.raises(SpecError, match="block 0: field 'psi' must be a bool, got None"):
        models_net.build_from_spec(spec)
