"""Least-squares refit after a cut (compress.reconstruct): exact where the removed channels are
copies of kept ones, a residual stage's refit layers, and what a run records."""

import copy

import torch
from torch import nn

import prunegreedy
from prunegreedy.compress.graph import prune_stage
from prunegreedy.compress.reconstruct import refit
from prunegreedy.nn.heads import AuxHead, PooledHead
from prunegreedy.nn.models import build_model, default_split
from prunegreedy.nn.split import split_stages

from test_stop import SETS


def _block_with_halved_copies() -> nn.Sequential:
    """Conv 3 -> 4 whose filters 2 and 3 are half of filters 0 and 1, so their L1 is lowest and, with
    an identity BN and a ReLU, their output channels are exactly half of channels 0 and 1."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        block[0].weight[2:] = 0.5 * block[0].weight[:2]
    return block.eval()


def test_refit_is_exact_when_the_removed_channels_are_copies_of_kept_ones():
    block = _block_with_halved_copies()
    head = PooledHead(4, 6, 2, 10, 4, [8, 8]).eval()
    pair = nn.Sequential(block, head)
    uncut = copy.deepcopy(pair)
    x = torch.randn(48, 3, 8, 8)
    want = uncut[1].body[0](uncut[0](x))  # the head's first conv, before the cut
    record = prune_stage(block, head, None, (3, 8, 8), 0.5, "l1", 1)
    assert record.cuts[0].removed == (2, 3)
    before = (head.body[0](block(x)) - want).abs().max().item()
    assert refit(uncut, pair, [x[:24], x[24:]]) == ["1.body.0"]
    after = (head.body[0](block(x)) - want).abs().max().item()
    assert before > 0.1 and after < 1e-2 * want.abs().max().item()  # the ridge aside
    # the refit weight is the kept columns plus half of their copies' (ridge aside)
    w = uncut[1].body[0].weight
    torch.testing.assert_close(head.body[0].weight, w[:, :2] + 0.5 * w[:, 2:], atol=2e-3, rtol=0)


def test_sampled_patches_are_the_unfolded_rows_at_those_positions():
    from prunegreedy.compress.reconstruct import _rows
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 7).contiguous(memory_format=torch.channels_last)
    for conv in (nn.Conv2d(5, 4, 3, padding=1), nn.Conv2d(5, 4, 3, stride=2, padding=1),
                 nn.Conv2d(5, 4, (3, 1), dilation=2, padding=(2, 0)), nn.Conv2d(5, 4, 1)):
        every = _rows(conv, x, None)  # unfold: image-major, then position
        n_pos = len(every) // len(x)
        at = torch.tensor([0, n_pos - 1, n_pos // 2])
        want = every.view(len(x), n_pos, -1)[:, at].reshape(-1, every.shape[1])
        torch.testing.assert_close(_rows(conv, x, at), want, rtol=0, atol=0)
        torch.testing.assert_close(every @ conv.weight.flatten(1).T + conv.bias,
                                   conv(x).flatten(2).transpose(1, 2).reshape(-1, 4), rtol=0, atol=1e-5)


def test_a_residual_stage_refits_the_second_conv_of_each_basic_block():
    torch.manual_seed(0)
    stages, _ = split_stages(build_model("resnet20", 10, 32), default_split("resnet20"))
    stage, head = stages[1].eval(), AuxHead(32, 32, 2, 10).eval()  # layer2, 16 -> 32 channels
    pair = nn.Sequential(stage, head)
    uncut = copy.deepcopy(pair)
    x = torch.randn(16, 16, 32, 32)
    want = uncut(x)
    prune_stage(stage, head, stages[2], (16, 32, 32), 0.5, "l1")  # the internal conv1 groups
    before = (pair(x) - want).pow(2).mean().item()
    assert refit(uncut, pair, [x]) == [f"0.layer2.{i}.conv2" for i in range(3)]
    assert (pair(x) - want).pow(2).mean().item() < 0.5 * before


def test_a_layer_whose_outputs_were_cut_too_is_left_alone():
    torch.manual_seed(0)
    stages, _ = split_stages(build_model("resnet20", 10, 32), default_split("resnet20"))
    stage, head = stages[1].eval(), AuxHead(32, 32, 2, 10).eval()
    pair = nn.Sequential(stage, head)
    uncut = copy.deepcopy(pair)
    prune_stage(stage, head, stages[2], (16, 32, 32), 0.5, "l1", scope="all")  # the stream too
    # conv1 and conv2 of every block lost inputs and outputs; the head's conv reads the cut stream
    # and keeps its outputs; the downsample conv reads the stage's uncut input
    assert refit(uncut, pair, [torch.randn(8, 16, 32, 32)]) == ["1.body.0"]


def test_a_run_refits_after_every_cut_and_the_first_cut_removes_the_same_filters(tmp_path, cache_dir):
    fit = lambda out, **sets: prunegreedy.fit("quick", out=out, epochs=2, prune_ratio=0.5,  # noqa: E731
                                              set={**SETS, **sets}, quiet=True)
    plain, refit_run = fit(tmp_path / "plain"), fit(tmp_path / "refit", **{"compress.reconstruct": 64})
    # Stage 1 trains alike up to its cut, and the refit comes after the cut: the same filters go.
    assert plain.meta["removed_filters"]["1"] == refit_run.meta["removed_filters"]["1"]
    pruned = lambda run: run.stages[run.stages.phase == "pruned"]  # noqa: E731
    # Every stage keeps the same widths; the accuracy just after each cut differs.
    assert pruned(plain)[["stage", "width_before", "width", "params_backbone"]].values.tolist() == \
        pruned(refit_run)[["stage", "width_before", "width", "params_backbone"]].values.tolist()
    assert pruned(plain).test_acc.tolist() != pruned(refit_run).test_acc.tolist()


def test_a_cut_after_training_refits_by_default_and_one_inside_the_schedule_does_not():
    from prunegreedy import config
    c = lambda **over: config.load("cifar10-cpu", {"compress": {"ratio": 0.5, **over}}).compress  # noqa: E731
    assert (c(at=1.0).refit_images(), c(at=0.5).refit_images()) == (2048, 0)
    assert (c(at=1.0, reconstruct=0).refit_images(), c(at=0.5, reconstruct=300).refit_images()) == (0, 300)
