"""Networks the cut once crashed on: grouped convs, channel shuffle, a stage that ends the network,
a split that reaches the classifier. Small stand-ins of the torchvision blocks, cut in memory."""
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.models.shufflenetv2 import InvertedResidual

import prunegreedy as pg
from prunegreedy.compress.graph import PieceGraphs, prune_stage, replay, stage_groups, trace_groups
from prunegreedy.errors import ConfigError
from prunegreedy.nn.heads import PooledHead


def _head(c, side=4):
    torch.manual_seed(0)
    return PooledHead(c, 8, 1, 10, 2, [side, side])


def _resnext_stage():
    """Two ResNeXt bottlenecks: 4 groups of 4 channels in each 3x3 conv."""
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(Bottleneck(16, 8, downsample=down, groups=4, base_width=32),
                         Bottleneck(32, 8, groups=4, base_width=32))


def test_grouped_conv_is_cut_at_the_same_positions_in_every_group():
    stage = _resnext_stage()
    assert stage[0].conv2.groups == 4 and stage[0].conv2.in_channels == 16
    graph, found = trace_groups(stage, _head(32, 8), None, (16, 8, 8))
    internal = [info for info, _ in found if info.kind == "internal"]
    assert [(g.root, g.width, g.channel_groups) for g in internal] == [
        ("0.conv1", 16, 4), ("0.conv2", 16, 4), ("1.conv1", 16, 4), ("1.conv2", 16, 4)]
    record = prune_stage(stage, _head(32, 8), None, (16, 8, 8), 0.5, "l1")
    for cut in record.cuts:  # two of each group's four positions, the same two in all four groups
        first = [i for i in cut.removed if i < 4]
        assert len(first) == 2 and sorted(cut.removed) == sorted(i + 4 * g for g in range(4) for i in first)
    assert (stage[0].conv2.groups, stage[0].conv2.in_channels, stage[0].conv2.out_channels) == (4, 8, 8)
    assert stage(torch.zeros(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    fresh = _resnext_stage()
    replay(fresh, _head(32, 8), None, (16, 8, 8), record)
    assert fresh.state_dict().keys() == stage.state_dict().keys()
    assert all(fresh.state_dict()[k].shape == v.shape for k, v in stage.state_dict().items())


def _shuffle_stage():
    torch.manual_seed(0)
    return nn.Sequential(InvertedResidual(16, 32, 2), InvertedResidual(32, 32, 1), InvertedResidual(32, 32, 1))


def test_channel_shuffle_stage_is_cut_inside_each_block_and_its_outputs_kept():
    stage = _shuffle_stage()
    groups, note = stage_groups(stage, _head(32), None, (16, 8, 8))
    assert note.startswith("traced part by part") and "ZeroDivisionError" in note
    assert [(g.root, g.width, g.kind) for g in groups] == [
        ("0.branch2.0", 16, "internal"), ("1.branch2.0", 16, "internal"), ("2.branch2.0", 16, "internal")]
    assert isinstance(trace_groups(stage, _head(32), None, (16, 8, 8))[0], PieceGraphs)
    record = prune_stage(stage, _head(32), None, (16, 8, 8), 0.5, "l1")
    assert [len(c.removed) for c in record.cuts] == [8, 8, 8]
    assert [stage[i].branch2[0].out_channels for i in range(3)] == [8, 8, 8]
    assert stage(torch.zeros(1, 16, 8, 8)).shape == (1, 32, 4, 4)


class _ConvClassifier(nn.Module):
    """SqueezeNet's ending: the class scores are a conv's output channels, then pooled."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 10, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def test_a_stage_that_ends_the_network_never_cuts_the_class_scores():
    torch.manual_seed(0)
    model = _ConvClassifier()
    stage, head = model.classifier, nn.Flatten()  # the last stage with the model's own tail as its head
    record = prune_stage(stage, head, None, (8, 4, 4), 0.5, "l1")
    assert [(c.root, len(c.removed)) for c in record.cuts] == [("0", 8)]
    assert model.classifier[2].out_channels == 10 and model(torch.zeros(1, 3, 4, 4)).shape == (1, 10)


def test_plan_keeps_squeezenets_class_scores():
    df = pg.plan(dataset="cifar10-sample", model="torchvision:squeezenet1_1",
                 split=["features.0", "features.4", "features.7", "classifier"], prune_ratio=0.5)
    assert df.width.tolist() == [64, 128, 256, 10] and df.width_after.tolist()[-1] == 10


def test_a_split_that_reaches_the_classifier_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^'fc' in the split of CifarResNet gives an output \(10\), not a "
                                          r"feature map.*\(the last that does: 'layer3'\)$"):
        pg.plan(dataset="cifar10-sample", model="resnet20", split=["layer1", "layer2", "layer3", "fc"])


class _AuxLogits(nn.Module):
    """As GoogLeNet with aux_logits: a tuple of outputs in training."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.b(self.a(x)), 1), 1))
        return (y, y) if self.training else y


def test_a_network_whose_training_output_is_not_class_scores_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^_AuxLogits's forward gives a tuple in training, not a tensor of class "
                                          r"scores; give a model whose forward returns them \(torchvision: "
                                          r"aux_logits=False\)$"):
        pg.plan(dataset="cifar10-sample", model=_AuxLogits(), split=["a", "b"])


class _Attending(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        z = self.conv(x).flatten(2).transpose(1, 2)
        return self.attn(z, z, z)[0].transpose(1, 2).reshape(x.shape)


def test_a_stage_with_an_attention_layer_is_refused_in_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"^'attn' is an attention layer \(MultiheadAttention\): prunegreedy cuts "
                                          r"the channels of convolutional networks, not attention heads; train it "
                                          r"unpruned \(--prune-ratio 0\)$"):
        prune_stage(_Attending(), _head(8, 4), None, (8, 4, 4), 0.5, "l1")
