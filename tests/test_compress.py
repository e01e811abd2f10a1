import pytest
import torch
from torch import nn

from prunegreedy.compress import context as compress_context
from prunegreedy.compress import hooks as compress_hooks
from prunegreedy.compress import importance as compress_importance
from prunegreedy.compress.graph import kept_filters, prune_stage
from prunegreedy.measure import size as metrics
from prunegreedy.train import modes as train_modes
from prunegreedy.nn.blocks import ConvBlock
from prunegreedy.config import CompressConfig
from prunegreedy.errors import ConfigError
from prunegreedy.nn.heads import AuxHead
from prunegreedy.nn.network import build_network

from helpers import cpu_norm, quick_train_cfg, same, snapshot


def prune_block(block, head, input_shape, ratio, importance, round_to=1, gradients=None) -> list[int]:
    """The filters a paper block's cut removes (its one group), [] when it removes none."""
    record = prune_stage(block, head, None, input_shape, ratio, importance, round_to, gradients=gradients)
    return list(record.cuts[0].removed) if record.cuts else []


def _trained_pair(k=2, width=128, bn=True, seed=0):
    torch.manual_seed(seed)
    block, head = ConvBlock(16, width, bn=bn), AuxHead(width, 32, k, 10)
    with torch.no_grad():  # distinct filter magnitudes and BN statistics, as after training
        block.conv.weight.mul_(torch.linspace(0.1, 2.0, width).view(-1, 1, 1, 1)[torch.randperm(width)])
        if bn:
            block.bn.running_mean.uniform_(-1, 1)
            block.bn.running_var.uniform_(0.5, 2)
            block.bn.weight.uniform_(0.5, 1.5)
    return block.eval(), head.eval()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_prune_128_to_64_keeps_exact_channels(k):
    block, head = _trained_pair(k)
    x = torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        full = block(x)
        head_in_before = head.in_channels
    removed = prune_block(block, head, (16, 8, 8), 0.5, "l1")
    kept = [c for c in range(128) if c not in set(removed)]
    assert len(removed) == 64 and len(kept) == 64 and head_in_before == 128
    assert block.conv.out_channels == 64 and block.conv.weight.shape == (64, 16, 3, 3)
    assert block.bn.num_features == 64 and block.bn.running_mean.shape == (64,)
    assert head.in_channels == 64
    if k == 1:
        assert head.fc.in_features == 4 * 64  # flatten of the 2x2 pool, cut four columns per channel
    else:
        assert head.body[0].in_channels == 64 and head.body[0].out_channels == 32  # hidden width untouched
    assert head.fc.out_features == 10
    with torch.no_grad():
        assert torch.allclose(block(x), full[:, kept], atol=1e-6, rtol=0)
        assert head(block(x)).shape == (4, 10)


def test_l1_removes_the_smallest_filters():
    block, head = _trained_pair(k=2)
    norms = block.conv.weight.detach().abs().sum((1, 2, 3))
    removed = prune_block(block, head, (16, 8, 8), 0.25, "l1")
    # group L1 also weighs BN and the head's input weights, so compare with the conv's own ranking loosely
    assert len(removed) == 32
    assert norms[removed].mean() < norms.mean()


def test_every_importance_runs_and_round_to():
    for name in compress_importance.IMPORTANCES:
        block, head = _trained_pair(k=2, width=64)
        grads = lambda: head(block(torch.randn(8, 16, 8, 8))).logsumexp(1).sum().backward()  # noqa: E731
        removed = prune_block(block, head, (16, 8, 8), 0.3, name, round_to=8, gradients=grads)
        assert block.conv.out_channels == 48 and len(removed) == 16, name
    with pytest.raises(ConfigError, match="unknown importance 'fpgm'; valid: l1, l2, bn, taylor, random"):
        prune_block(*_trained_pair(), (16, 8, 8), 0.5, "fpgm")
    with pytest.raises(ConfigError, match="importance 'bn' does not apply"):
        prune_block(*_trained_pair(bn=False), (16, 8, 8), 0.5, "bn")


def test_kept_filters():
    assert [kept_filters(128, r) for r in (0, 0.25, 0.5, 0.75, 0.99)] == [128, 96, 64, 32, 1]
    assert kept_filters(100, 0.5, round_to=8) == 48
    assert kept_filters(4, 0.9, round_to=8) == 4


def test_ratio_zero_leaves_model_unchanged():
    block, head = _trained_pair()
    before = snapshot(nn.Sequential(block, head))
    assert prune_block(block, head, (16, 8, 8), 0.0, "l1") == []
    assert same(before, snapshot(nn.Sequential(block, head)))


@pytest.mark.parametrize("epochs", [0.2, [0.0, 0.2]], ids=["one", "per-stage"])  # the hook's stage is 1
def test_prune_hook_freezes_prefix_and_finetunes_new_parameters(sample, epochs):
    torch.manual_seed(0)
    net = build_network("cifar10-k2", 10, 32, {"widths": [8, 16, 16, 16]})
    prefix = train_modes.freeze(nn.Sequential(net.module(0, 3)))
    block = net.module(1, 8)
    head = net.head(1, (16, 32, 32))
    prefix_before = snapshot(prefix)
    rows = []

    class Rec:
        def __call__(self, phase, block, head, seconds, **extra):
            rows.append((phase, block.conv.out_channels, snapshot(block)))

        def progress(self, desc):
            return None

    gen = torch.Generator().manual_seed(0)
    ctx = compress_context.StageContext(1, prefix, block, head, (8, 32, 32), sample, cpu_norm(sample), quick_train_cfg(),
                                torch.device("cpu"), gen, 0.5, net=net)
    out_block, out_head = compress_hooks.prune_hook(ctx, CompressConfig(hook="prune", ratio=0.5, finetune_epochs=epochs), Rec())
    assert [(p, w) for p, w, _ in rows] == [("pruned", 8), ("finetuned", 8)]
    pruned_w, tuned_w = rows[0][2]["conv.weight"], rows[1][2]["conv.weight"]
    assert pruned_w.shape == tuned_w.shape == (8, 8, 3, 3)
    assert not torch.equal(pruned_w, tuned_w)  # the optimizer held the new (pruned) parameters
    assert same(prefix_before, snapshot(prefix))
    assert out_head.in_channels == 8


def test_finetune_epochs_are_one_for_all_or_each_stages_own():
    assert [CompressConfig(finetune_epochs=[0.0, 0.2]).finetune(j) for j in (0, 1)] == [0.0, 0.2]
    assert CompressConfig(finetune_epochs=0.5).finetune(3) == 0.5
    assert CompressConfig().finetune(3) == 1.0 and CompressConfig(at=0.5).finetune(3) == 0.0  # the defaults


def test_macs_of_a_tiny_net_equal_the_formula():
    # conv 3->4 (3x3, pad 1, bias) at 8x8, then psi, conv 16->2 at 4x4 without BN; fvcore counts MACs
    net = nn.Sequential(ConvBlock(3, 4, bn=False), ConvBlock(4, 2, psi=True, bn=False))
    assert metrics.count_macs(net, (3, 8, 8)) == 8 * 8 * 4 * 3 * 9 + 4 * 4 * 2 * 16 * 9
    assert metrics.count_params(net) == 4 * 3 * 9 + 4 + 2 * 16 * 9 + 2
    bn_net = ConvBlock(3, 4, bn=True).train()
    before = snapshot(bn_net)
    metrics.count_macs(bn_net, (3, 8, 8))
    assert same(before, snapshot(bn_net))  # counting never moves BN statistics
