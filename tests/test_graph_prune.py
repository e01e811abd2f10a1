"""Pruning any stage through the dependency graph (compress.graph): groups, cuts, and their replay."""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helpers import same, snapshot
from prunegreedy.compress import graph as cgraph
from prunegreedy.compress.graph import Member, coupled_groups, prune_stage, replay
from prunegreedy.compress.network import cut_stage
from prunegreedy.errors import ConfigError, SpecError
from prunegreedy.nn import network as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.nn.heads import AuxHead, PooledHead
from prunegreedy.nn.models import build_model, default_split
from prunegreedy.nn.split import split_stages, stage_shapes


def _resnet20(seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet20", 10, 32)
    stages, _ = split_stages(model, default_split("resnet20"))
    return model, stages, AuxHead(32, 32, 2, 10)


def test_resnet20_stage2_internal_groups_are_the_three_conv1_groups():
    model, stages, head = _resnet20()
    groups = coupled_groups(stages[1], head, stages[2], (16, 32, 32), "internal")
    assert [g.root for g in groups] == ["layer2.0.conv1", "layer2.1.conv1", "layer2.2.conv1"]
    assert groups[0].members == (Member("block", "layer2.0.conv1", "out"), Member("block", "layer2.0.bn1", "out"),
                                 Member("block", "layer2.0.conv2", "in"))
    assert all(g.width == 32 and g.kind == "internal" and not g.reaches_next for g in groups)
    record = prune_stage(stages[1], head, stages[2], (16, 32, 32), 0.5, "l1")
    assert [(c.root, c.width, len(c.removed)) for c in record.cuts] == [
        ("layer2.0.conv1", 32, 16), ("layer2.1.conv1", 32, 16), ("layer2.2.conv1", 32, 16)]
    blk = model.layer2[0]  # the user's model itself is narrowed
    assert (blk.conv1.out_channels, blk.bn1.num_features, blk.conv2.in_channels) == (16, 16, 16)
    assert stage_shapes(stages, (3, 32, 32))[1] == (32, 16, 16) and head.body[0].in_channels == 32
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_resnet20_stage2_scope_all_cuts_the_output_into_the_next_stage():
    model, stages, head = _resnet20()
    groups = coupled_groups(stages[1], head, stages[2], (16, 32, 32), "all")
    out = [g for g in groups if g.kind == "output"]
    assert len(groups) == 4 and len(out) == 1 and out[0].reaches_next and out[0].root == "layer2.0.conv2"
    assert {Member("next", "layer3.0.conv1", "in"), Member("next", "layer3.0.downsample.0", "in"),
            Member("head", "body.0", "in"), Member("block", "layer2.0.downsample.1", "out")} <= set(out[0].members)
    prune_stage(stages[1], head, stages[2], (16, 32, 32), 0.5, "l1", scope="all")
    assert [model.layer2[i].conv2.out_channels for i in range(3)] == [16, 16, 16]
    assert model.layer3[0].conv1.in_channels == 16 and model.layer3[0].downsample[0].in_channels == 16
    assert head.body[0].in_channels == 16 and stage_shapes(stages, (3, 32, 32))[1] == (16, 16, 16)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10) and head(torch.zeros(1, 16, 16, 16)).shape == (1, 10)


def test_torchvision_resnet18_stage1_has_the_groups_the_notes_observed():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 10, 32)
    stages, _ = split_stages(model, default_split("torchvision:resnet18"))
    head = PooledHead(64, 64, 2, 10, in_pool=8, in_size=[32, 32])  # the notes' small pooled aux head
    graph, found = cgraph.trace_groups(stages[0], head, stages[1], (3, 32, 32))
    out = [info for info, _ in found if info.kind == "output"]
    internal = [info for info, _ in found if info.kind == "internal"]
    assert [g.root for g in internal] == ["layer1.0.conv1", "layer1.1.conv1"]
    assert len(out) == 1 and out[0].root == "conv1" and out[0].reaches_next and out[0].width == 64
    assert {m.name for m in out[0].members if m.part == "block" and m.dim == "out"} == {
        "conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.bn2"}
    assert {(m.part, m.name) for m in out[0].members if m.dim == "in"} == {
        ("block", "layer1.0.conv1"), ("block", "layer1.1.conv1"), ("head", "body.0"),
        ("next", "layer2.0.conv1"), ("next", "layer2.0.downsample.0")}
    root = stages[0].get_submodule("conv1")
    group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs=list(range(64)))
    assert len(group.items) == 17  # the 11 named modules and tp's six elementwise nodes (adds, ReLUs, pool)
    assert [len(g.members) for g in internal] == [3, 3]
    prune_stage(stages[0], head, stages[1], (3, 32, 32), 0.5, "l1", scope="all")
    assert model.conv1.out_channels == 32 and model.layer2[0].downsample[0].in_channels == 32
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_the_last_stage_cuts_into_the_models_own_classifier():
    model, stages, _ = _resnet20()
    _, tail = split_stages(model, default_split("resnet20"))
    groups = coupled_groups(stages[2], tail, None, (32, 16, 16), "all")
    assert [g.kind for g in groups] == ["internal", "output", "internal", "internal"]
    assert Member("head", "fc", "in") in groups[1].members and not groups[1].reaches_next
    prune_stage(stages[2], tail, None, (32, 16, 16), 0.5, "l1", scope="all")
    assert model.fc.in_features == 32 and model.fc.out_features == 10
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_mobilenet_v2_depthwise_convs_are_cut_with_their_producers():
    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v2", 10, 32).eval()
    stages, _ = split_stages(model, default_split("torchvision:mobilenet_v2"))
    head = AuxHead(24, 24, 2, 10)
    groups = {g.root: g for g in coupled_groups(stages[0], head, stages[1], (3, 32, 32))}
    assert Member("block", "features.1.conv.0.0", "out") in groups["features.0.0"].members  # stem -> depthwise
    assert Member("block", "features.2.conv.1.0", "out") in groups["features.2.conv.0.0"].members  # expand -> dw
    head_before = copy.deepcopy(head)
    record = prune_stage(stages[0], head, stages[1], (3, 32, 32), 0.5, "l1")
    dw = model.features[1].conv[0][0]
    assert model.features[0][0].out_channels == 16 and (dw.in_channels, dw.out_channels, dw.groups) == (16, 16, 16)
    dw2 = model.features[2].conv[1][0]
    assert model.features[2].conv[0][0].out_channels == 48 and dw2.groups == dw2.out_channels == 48
    assert stage_shapes(stages, (3, 32, 32))[0] == (24, 16, 16)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    torch.manual_seed(1)
    fresh = build_model("torchvision:mobilenet_v2", 10, 32)
    fresh_stages, _ = split_stages(fresh, default_split("torchvision:mobilenet_v2"))
    replay(fresh_stages[0], head_before, fresh_stages[1], (3, 32, 32), record)
    fresh.load_state_dict(model.state_dict())
    assert same(snapshot(fresh), snapshot(model)) and fresh.features[1].conv[0][0].groups == 16


@pytest.mark.parametrize("plan, j, importance", [("cifar10-k2", 0, "l1"), ("cifar10-k2", 2, "bn"),
                                                 ("cifar10-k1", 1, "l2"), ("vgg11", 0, "l1")])
def test_a_paper_block_cut_in_its_network_equals_the_block_cut_alone(plan, j, importance):
    """The trainers' cut (compress.network.cut_stage: the next stage already made narrows its own
    input, psi's 4 channels per filter included) removes what the graph cut of the block alone does."""
    torch.manual_seed(0)
    widths = [8 * (i + 1) for i in range(len(models_plans.PLANS[plan](1.0)))]
    net = models_net.build_network(plan, 10, 32, {"widths": widths})
    shape = (3, 32, 32)
    for i in range(j):
        shape = stage_shapes([net.module(i, shape[0])], shape)[0]
    block = net.module(j, shape[0])
    out = stage_shapes([block], shape)[0]
    nxt = net.module(j + 1, out[0])
    head = net.head(j, out)
    for m in block.modules():  # BN scales that differ, so "bn" importance has something to rank
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight)
    block2, head2, nxt_before = copy.deepcopy(block), copy.deepcopy(head), copy.deepcopy(nxt)
    removed = list(cut_stage(net, j, head, shape, 0.5, importance).cuts[0].removed)
    assert [g.kind for g in coupled_groups(block2, head2, None, shape)] == ["output"]  # the plain-block rule
    record = prune_stage(block2, head2, None, shape, 0.5, importance)
    assert [(c.root, list(c.removed)) for c in record.cuts] == [("conv", removed)]
    assert same(snapshot(block), snapshot(block2)) and same(snapshot(head), snapshot(head2))
    per = 4 if net.stages[j + 1].spec.psi else 1
    kept = [c * per + i for c in range(out[0]) if c not in removed for i in range(per)]
    assert torch.equal(nxt.conv.weight, nxt_before.conv.weight[:, kept])
    with torch.no_grad():
        assert nxt(block(torch.zeros(1, *shape))).shape[1] == widths[j + 1]


def test_replay_on_a_fresh_model_reloads_the_pruned_weights(tmp_path):
    model, stages, head = _resnet20(seed=0)
    record = prune_stage(stages[1], head, stages[2], (16, 32, 32), 0.5, "l1", scope="all", round_to=4)
    save_file({**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"head.{k}": v for k, v in head.state_dict().items()}}, tmp_path / "w.safetensors")
    (tmp_path / "cut.json").write_text(json.dumps(record.as_dict()))
    fresh, fresh_stages, fresh_head = _resnet20(seed=1)
    replay(fresh_stages[1], fresh_head, fresh_stages[2], (16, 32, 32), json.loads((tmp_path / "cut.json").read_text()))
    weights = load_file(tmp_path / "w.safetensors")
    fresh.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")})
    fresh_head.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("head.")})
    assert type(fresh) is type(model) and same(snapshot(fresh), snapshot(model)) and same(snapshot(fresh_head),
                                                                                          snapshot(head))
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_bad_scopes_and_records_are_refused():
    _, stages, head = _resnet20()
    with pytest.raises(ConfigError, match=r"^unknown pruning scope 'outputs'; valid: internal, all$"):
        coupled_groups(stages[1], head, stages[2], (16, 32, 32), "outputs")
    with pytest.raises(ConfigError, match=r"^importance 'taylor' needs training batches for gradients$"):
        prune_stage(stages[1], head, stages[2], (16, 32, 32), 0.5, "taylor")
    bad = {"cuts": [{"root": "layer2.0.bn1", "width": 32, "removed": [0], "kind": "internal"}]}
    with pytest.raises(SpecError, match=r"^pruning record cuts 'layer2.0.bn1', which roots no group of this block; "
                                        r"roots: layer2.0.conv1, layer2.0.conv2, layer2.1.conv1, layer2.2.conv1$"):
        replay(stages[1], head, stages[2], (16, 32, 32), bad)
    wide = {"cuts": [{"root": "layer2.0.conv1", "width": 64, "removed": [0], "kind": "internal"}]}
    with pytest.raises(SpecError, match=r"^pruning record cuts 64 filters of 'layer2.0.conv1', which has 32$"):
        replay(stages[1], head, stages[2], (16, 32, 32), wide)
    twice = {"cuts": [{"root": "layer2.0.conv1", "width": 32, "removed": [3, 3], "kind": "internal"}]}
    with pytest.raises(SpecError, match=r"^pruning record removes filters \[3, 3\] of 'layer2.0.conv1', which has "
                                        r"32: each at most once, and not all$"):
        replay(stages[1], head, stages[2], (16, 32, 32), twice)
    with pytest.raises(SpecError, match=r"^a pruning record needs 'cuts'"):
        replay(stages[1], head, stages[2], (16, 32, 32), {"cut": []})


def test_every_rank_cuts_what_agree_returns():
    _, stages, head = _resnet20()
    first = list(range(16))
    record = prune_stage(stages[1], head, stages[2], (16, 32, 32), 0.5, "random",
                         agree=lambda chosen: [first for _ in chosen])
    assert all(list(c.removed) == first for c in record.cuts) and len(record.cuts) == 3
    with pytest.raises(ConfigError, match=r"^Identity has no parameters: there is nothing to prune$"):
        coupled_groups(nn.Identity(), head, None, (32, 16, 16))


def test_a_coupling_the_trace_cannot_see_is_refused_before_anything_changes():
    plan = models_plans.make_plan("cifar10-k2", widths=[8, 8, 16, 16])
    block, psi_next = models_net.make_block(8, plan[1]), models_net.make_block(8, plan[2])
    head = models_net.make_head(8, plan[1], 10, (32, 32))
    before = snapshot(nn.ModuleList([block, head, psi_next]))
    with pytest.raises(ConfigError, match=r"^cutting conv breaks the stage \(.*\): the trace misses a coupling, "
                                          r"e.g. an op that moves channels as psi does; prune without that next "
                                          r"block and cut its input directly$"):
        prune_stage(block, head, psi_next, (8, 32, 32), 0.5, "l1")
    assert same(snapshot(nn.ModuleList([block, head, psi_next])), before)


def test_the_paper_net_splits_at_its_blocks_and_prunes_into_the_next_one():
    torch.manual_seed(0)
    net = models_net.build_network("cifar10-k2", 10, 32, {"widths": [8, 8, 16, 16]})
    shape, heads = (3, 32, 32), []
    for j in range(4):
        block = net.module(j, shape[0])
        shape = stage_shapes([block], shape)[0]
        heads.append(net.head(j, shape))
    model = net.model.eval()
    stages, tail = split_stages(model, [s.name for s in net.stages])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = x
        for stage in stages:
            z = stage(z)
        assert torch.equal(z, model(x)) and tail is None  # the plan's net ends at its last block
    record = prune_stage(stages[0], heads[0], stages[1], (3, 32, 32), 0.5, "l1")
    assert [c.root for c in record.cuts] == ["blocks.0.conv"]  # the model's own names
    assert model.blocks[0].conv.out_channels == 4 and model.blocks[1].conv.in_channels == 4
    assert heads[0](model.blocks[0](x)).shape == (2, 10) and heads[3](model(x)).shape == (2, 10)
