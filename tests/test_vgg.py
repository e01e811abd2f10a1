"""VGG-11 as a greedy plan: equal to torchvision's vgg11_bn, prunable per stage, exportable with BN folded."""
import copy
import json

import pytest
import torch
import torchvision

import prunegreedy
from prunegreedy.compress.graph import prune_stage
from prunegreedy.compress.network import head_settings, network_spec
from prunegreedy.nn import network as models_net
from prunegreedy.nn import plans as models_plans
from prunegreedy.deploy.backbone import SPEC_FILE
from prunegreedy.nn.blocks import VGGBlock
from prunegreedy.deploy.export import export_network
from prunegreedy.deploy.network import deployable
from prunegreedy.measure.size import output_shape
from prunegreedy.nn.heads import AuxHead
from prunegreedy.nn.heads import VGGHead

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def prune_block(block, head, input_shape, ratio, importance) -> list[int]:
    """The filters a plain block's cut removes (its one group: the block's output filters)."""
    return list(prune_stage(block, head, None, input_shape, ratio, importance).cuts[0].removed)


def _shapes(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for v in module.state_dict().values()]


def _vgg11_features() -> torch.nn.Sequential:
    plan, blocks, c = models_plans.make_plan("vgg11"), [], 3
    for s in plan:
        blocks.append(models_net.make_block(c, s))
        c = s.width
    return torch.nn.Sequential(*blocks)


def test_vgg11_plan_is_torchvision_vgg11_bn():
    plan = models_plans.make_plan("vgg11")
    with torch.device("meta"):  # shapes only: 133M parameters, nothing initialised
        features, head = _vgg11_features(), models_net.make_head(512, plan[-1], 1000)
        ref = torchvision.models.vgg11_bn(weights=None)
        head_types = [type(models_net.make_head(s.width, s, 1000)) for s in plan]
    assert sum(p.numel() for p in features.parameters()) == sum(p.numel() for p in ref.features.parameters()) \
        == 9_225_984
    assert _shapes(features) == _shapes(ref.features)  # same tensors in the same order, BN buffers included
    assert [b.spec()["pool"] for b in features] == [True, True, False, True, False, True, False, True]
    assert isinstance(head, VGGHead) and _shapes(head) == _shapes(ref.classifier)
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in ref.classifier.parameters()) \
        == 123_642_856
    assert head_types == [AuxHead] * 7 + [VGGHead]
    assert [(s.k, s.head_width) for s in plan[:7]] == [(3, 64), (3, 128), (3, 256), (3, 256), (3, 512), (3, 512),
                                                       (3, 512)]


def test_vgg11_features_compute_what_torchvision_computes():
    torch.manual_seed(0)
    ours = _vgg11_features().eval()
    ref = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"], batch_norm=True).eval()
    ours.load_state_dict(dict(zip(ours.state_dict(), ref.state_dict().values())))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def _trained(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Distinct filter magnitudes and BN statistics, as after training; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.rand(m.out_channels, 1, 1, 1, generator=gen) * 2 + 0.1)
                m.bias.uniform_(-0.5, 0.5, generator=gen) if m.bias is not None else None
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_var.uniform_(0.5, 2, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
    return module.eval()


def test_prune_vgg_block_before_an_aux_head():
    torch.manual_seed(0)
    block, head = _trained(VGGBlock(8, 32, pool=False)), AuxHead(32, 16, 3, 10).eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        full = block(x)
    removed = prune_block(block, head, (8, 12, 12), 0.25, "l1")
    kept = [c for c in range(32) if c not in set(removed)]
    assert len(removed) == 8
    assert block.conv.weight.shape == (24, 8, 3, 3) and block.conv.bias.shape == (24,)
    assert block.bn.num_features == 24 and block.bn.running_var.shape == (24,)
    assert head.body[0].weight.shape == (16, 24, 3, 3) and head.body[3].weight.shape == (16, 16, 3, 3)
    assert head.fc.weight.shape == (10, 64) and block.spec()["out_channels"] == 24
    with torch.no_grad():
        assert torch.equal(block(x), full[:, kept])


def test_prune_last_vgg_block_cuts_49_classifier_inputs_per_filter():
    torch.manual_seed(0)
    block, head = _trained(VGGBlock(8, 16, pool=True)), VGGHead(16, 32, 10).eval()
    unpruned_head = copy.deepcopy(head)
    x = torch.randn(2, 8, 28, 28)  # pooled to 14x14, then averaged to 7x7
    with torch.no_grad():
        full = block(x)
    removed = prune_block(block, head, (8, 28, 28), 0.5, "l1")
    kept = [c for c in range(16) if c not in set(removed)]
    assert len(removed) == 8
    assert block.conv.weight.shape == (8, 8, 3, 3) and block.bn.num_features == 8
    assert head.classifier[0].weight.shape == (32, 8 * 49) and head.in_channels == 8
    assert head.classifier[3].weight.shape == (32, 32) and head.classifier[6].weight.shape == (10, 32)
    assert head.spec() == {"type": "vgg", "in_channels": 8, "hidden": 32, "num_classes": 10}
    zeroed = full.clone()
    zeroed[:, removed] = 0  # the right 49 columns per filter went: same logits as the unpruned head on zeros
    with torch.no_grad():
        assert torch.equal(block(x), full[:, kept])
        assert torch.allclose(head(block(x)), unpruned_head(zeroed), atol=1e-6, rtol=0)


def _tiny_vgg():
    """vgg11 at widths 4, 4, 8, ..., 8 on 224x224 (the classifier's 7x7 pool is exact, so ONNX can
    export it), every stage made and headed as a run makes them, with trained-like BN statistics:
    (network, heads, spec)."""
    torch.manual_seed(0)
    net = models_net.build_network("vgg11", 10, 224, {"widths": [4, 4, 8, 8, 8, 8, 8, 8]})
    spec = network_spec(net, {"image_shape": [3, 224, 224], "mean": [0.5] * 3, "std": [0.25] * 3,
                              "classes": [str(i) for i in range(10)]})
    heads, shape = [], (3, 224, 224)
    for j, stage in enumerate(net.stages):
        shape = output_shape(_trained(net.module(j, shape[0]), j), shape)
        spec["heads"][str(j)] = head_settings(stage.spec)
        heads.append(net.head(j, shape).eval())
    spec["pruning"] = [None] * len(heads)
    return net, heads, spec


@pytest.mark.parametrize("fmt", ["native", "torchscript", "onnx"])
def test_export_folds_a_vgg_network(tmp_path, fmt):
    net, heads, model_spec = _tiny_vgg()
    summary = export_network(net, heads, model_spec, tmp_path / "e", fmt, with_head=True)
    assert summary["fold_max_diff"] <= 1e-5 and summary["export_max_diff"] <= 1e-5
    spec = json.loads((tmp_path / "e" / SPEC_FILE).read_text())
    assert spec["bn_folded"] and spec["folded"] == [[f"blocks.{j}.conv", f"blocks.{j}.bn"] for j in range(8)]
    assert [b.spec()["pool"] for b in net.model.blocks] == [True, True, False, True, False, True, False, True]
    assert spec["head"] == {"type": "aux"} and spec["network"]["heads"]["7"] == {
        "type": "vgg", "k": 3, "hidden": 64, "in_pool": None}
    assert isinstance(heads[-1], VGGHead) and heads[-1].spec() == {"type": "vgg", "in_channels": 8, "hidden": 64,
                                                                   "num_classes": 10}
    if fmt == "native":
        loaded = prunegreedy.load_backbone(tmp_path / "e", with_head=True)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
        x = torch.randn(4, 3, 224, 224)
        with torch.no_grad():
            assert (loaded(x) - deployable(net, heads, True).eval()(x)).abs().max().item() <= 1e-5
            features = deployable(net, heads, False).eval()(x)
            assert (prunegreedy.load_backbone(tmp_path / "e")(x) - features).abs().max().item() <= 1e-5
