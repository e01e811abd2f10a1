"""The default split of any network (nn.autosplit): stages end where the traced map shrinks."""
import pytest
import torch
from torch import nn

import prunegreedy as pg
from prunegreedy.errors import ConfigError
from prunegreedy.nn.autosplit import auto_split
from prunegreedy.nn.models import build_model, default_split

from helpers import LinesUI


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class Net(nn.Module):
    """A stem, a block at 16x16, a downsampling conv and two residual blocks at 8x8, a pooled classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(Res(8), nn.Conv2d(8, 16, 3, stride=2, padding=1), Res(16), Res(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(self.stem(x))), 1))


def test_stages_end_at_the_last_module_of_each_resolution_named_by_their_sequential():
    assert auto_split(Net(), (3, 32, 32)) == ["body.0", "body.3"]  # "body" would hold "body.0"
    assert auto_split(Net(), (3, 32, 32), stages=1) == ["body"]  # merged from the end


def test_one_resolution_is_one_stage():
    net = Net()
    net.stem[0].stride = (1, 1)  # stem at 32x32, the first block at 32x32 too: one stage
    assert auto_split(net, (3, 32, 32)) == ["body.0", "body.3"]
    net.body[1].stride = (1, 1)
    assert auto_split(net, (3, 32, 32)) == ["body"]


def test_torchvision_classifiers_split_where_their_maps_shrink():
    assert default_split("torchvision:resnet34", (3, 32, 32)) == ["layer1", "layer2", "layer3", "layer4"]
    assert default_split("torchvision:shufflenet_v2_x1_0", (3, 32, 32)) == ["conv1", "stage2", "stage3", "conv5"]
    assert default_split("torchvision:efficientnet_b0", (3, 32, 32)) == [
        "features.1", "features.2", "features.3", "features.8"]
    assert default_split("resnet20") == ["layer1", "layer2", "layer3"]  # a registered split wins
    state = torch.random.get_rng_state()
    default_split("torchvision:mnasnet0_5", (3, 32, 32))
    assert torch.equal(torch.random.get_rng_state(), state)  # building it drew nothing the run sees


def test_a_chosen_split_cut_again_by_balance_says_both():
    ui = LinesUI()
    torch.manual_seed(0)
    pg.plan(dataset="cifar10-sample", model=Net(), set={"model.balance": 2}, ui=ui)
    assert ui.lines[0] == ("split of user:Net: body.0,body.3 (body.0,body.3 where the map shrinks, none registered or given, "
                           "cut again into 2 stages whose largest keeps the fewest activations for training: "
                           "model.balance)")


def test_a_network_too_small_for_the_input_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^AlexNet does not run on a 3x32x32 input \(RuntimeError: Given input "
                                          r"size: \(256x1x1\)\. Calculated output size: \(256x0x0\)\. Output size is "
                                          r"too small\)$"):
        default_split("torchvision:alexnet", (3, 32, 32))
    with pytest.raises(ConfigError, match="^model.stages must be at least 1, got 0$"):
        auto_split(Net(), (3, 32, 32), stages=0)


def test_plan_of_your_own_module_without_a_split_says_the_split_it_chose():
    ui = LinesUI()
    torch.manual_seed(0)
    df = pg.plan(dataset="cifar10-sample", model=Net(), prune_ratio=0.5, ui=ui)
    lines = ui.lines
    assert lines[0] == ("split of user:Net: body.0,body.3 (none registered or given: its stages end where the map "
                        "shrinks, at most model.stages 4; --split to choose others)")
    assert df.out_shape.tolist() == ["8x16x16", "16x8x8"]
    df = pg.plan(dataset="cifar10-sample", model="torchvision:resnet34", set=["model.stages=2"])
    assert df.out_shape.tolist() == ["64x32x32", "512x4x4"]
    assert build_model("torchvision:resnet34", 10, 32).layer4[0].conv1.in_channels == 256
