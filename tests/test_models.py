import pytest
import torch

from prunegreedy import models
from prunegreedy.blocks import ConvBlock, Psi
from prunegreedy.config import ConfigError
from prunegreedy.errors import SpecError
from prunegreedy.heads import AuxHead


def test_psi_is_invertible_space_to_depth():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    y = Psi()(x)
    assert y.shape == (2, 12, 2, 2)
    assert torch.equal(Psi().inverse(y), x)
    assert torch.equal(y[0, :4, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))  # one 2x2 patch of channel 0


def test_paper_plans_match_method_md():
    k1 = models.make_plan("cifar10-k1")
    assert [(s.width, s.psi, s.bn, s.k) for s in k1] == [
        (256, False, False, 1), (256, False, False, 1), (512, True, False, 1), (1024, True, False, 1),
        (1024, False, False, 1)]
    for k in (2, 3):
        plan = models.make_plan(f"cifar10-k{k}")
        assert [(s.width, s.psi, s.bn, s.k, s.head_width) for s in plan] == [
            (128, False, True, k, 128), (128, False, True, k, 128), (256, True, True, k, 256),
            (256, False, True, k, 256)]
    half = models.make_plan("cifar10-k2", 0.5)
    assert [(s.width, s.head_width) for s in half] == [(64, 64), (64, 64), (128, 128), (128, 128)]
    explicit = models.make_plan("cifar10-k2", widths=[16, 16, 32, 32])
    assert [(s.width, s.head_width) for s in explicit] == [(16, 16), (16, 16), (32, 32), (32, 32)]
    both = models.make_plan("cifar10-k2", 0.5, widths=[32, 32, 64, 64])  # widths win over width_mult
    assert [s.head_width for s in both] == [32, 32, 64, 64]


def test_unknown_plan_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown model plan 'resnet'; valid: cifar10-k1, cifar10-k2, cifar10-k3"):
        models.make_plan("resnet")
    with pytest.raises(ConfigError, match="has 2 entries but plan 'cifar10-k2' has 4 stages"):
        models.make_plan("cifar10-k2", widths=[8, 8])


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
    plan = models.make_plan("cifar10-k2", widths=[8, 8, 16, 16])
    blocks, heads, c = [], [], 3
    for s in plan:
        blocks.append(models.make_block(c, s))
        heads.append(models.make_head(s.width, s, 10))
        c = s.width
    net = models.GreedyNet(blocks, heads).eval()
    rebuilt = models.build_from_spec(net.spec())
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), net(x))
    spec = net.spec()
    spec["blocks"][1]["in_channels"] = 7
    with pytest.raises(SpecError, match="block 1: in_channels 7 does not match block 0's out_channels 8"):
        models.build_from_spec(spec)
    spec = net.spec()
    spec["blocks"][0]["type"] = "lambda"
    with pytest.raises(SpecError, match="block 0: unknown block type 'lambda'; valid: conv"):
        models.build_from_spec(spec)
