"""Models by name (nn.models) and cutting any network into sequential stages (nn.split)."""
import re

import pytest
import torch
from torch import nn

from prunegreedy.errors import ConfigError
from prunegreedy.nn import models
from prunegreedy.nn.models import MODELS, BasicBlock, build_model, default_split, register_model
from prunegreedy.nn.split import split_stages, stage_shapes


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_builds_and_runs_at_32(name):
    torch.manual_seed(0)
    model = build_model(name, 10, 32).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_cifar_resnets_follow_he_et_al():
    r20, r56 = build_model("resnet20", 10, 32), build_model("resnet56", 10, 32)
    assert [len(getattr(r20, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert [len(getattr(r56, f"layer{i}")) for i in (1, 2, 3)] == [9, 9, 9]
    assert [getattr(r20, f"layer{i}")[0].conv2.out_channels for i in (1, 2, 3)] == [16, 32, 64]
    assert r20.layer1[0].downsample is None and r20.layer2[0].downsample[0].stride == (2, 2)
    assert isinstance(r20.layer3[2], BasicBlock) and r20.fc.in_features == 64
    # 0.27M parameters, as the paper's ResNet-20 (option B adds the two 1x1 shortcuts and their BN)
    assert sum(p.numel() for p in r20.parameters()) == 272474


def test_torchvision_models_keep_their_class_and_get_the_small_stem():
    import torchvision

    r18 = build_model("torchvision:resnet18", 10, 32)
    assert type(r18) is torchvision.models.ResNet and r18.fc.out_features == 10
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1) and isinstance(r18.maxpool, nn.Identity)
    big = build_model("torchvision:resnet18", 10, 224)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    mb = build_model("torchvision:mobilenet_v2", 10, 32)
    assert type(mb) is torchvision.models.MobileNetV2 and mb.features[0][0].stride == (1, 1)
    assert build_model("torchvision:mobilenet_v2", 10, 96).features[0][0].stride == (2, 2)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'; valid: resnet20, resnet56, torchvision:resnet18"):
        build_model("resnet21", 10, 32)
    with pytest.raises(ConfigError, match=r"unknown torchvision classification model 'resnet7'; valid include: "):
        build_model("torchvision:resnet7", 10, 32)
    with pytest.raises(ConfigError, match=r"model 'torchvision:alexnet' has no default split"):
        default_split("torchvision:alexnet")


def test_register_model_and_pass_a_module_through(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(MODELS))
    def tiny(num_classes: int, image_size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size ** 2, num_classes))

    register_model("tiny", tiny, split=["1"])
    assert build_model("tiny", 4, 8)(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    assert default_split("tiny") == ["1"]
    with pytest.raises(ConfigError, match="model 'tiny' is already registered"):
        register_model("tiny", lambda n, s: nn.Identity())
    mine = nn.Conv2d(3, 4, 1)
    assert build_model(mine, 10, 32) is mine


# --- split_stages -------------------------------------------------------------------------------

EXPECTED_STAGES = {"resnet20": 3, "resnet56": 3, "torchvision:resnet18": 4, "torchvision:resnet50": 4,
                   "torchvision:mobilenet_v2": 4, "fastcifar-64-256-256": 3, "fastcifar-64-128-128": 3}


@pytest.mark.parametrize("name", list(MODELS))
def test_default_split_stages_and_tail_compose_to_the_model_exactly(name):
    torch.manual_seed(0)
    model = build_model(name, 10, 32).eval()
    stages, tail = split_stages(model, default_split(name))
    assert len(stages) == EXPECTED_STAGES[name] and tail is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = x
        for stage in stages:
            z = stage(z)
        assert torch.equal(tail(z), model(x))


def test_stages_share_the_models_own_modules():
    model = build_model("resnet20", 10, 32)
    stages, tail = split_stages(model, ["layer1", "layer2", "layer3"])
    assert stages[0].conv1 is model.conv1 and stages[0].layer1 is model.layer1
    assert stages[1].layer2 is model.layer2 and tail.fc is model.fc
    assert [n for n, _ in stages[1].named_modules()][:3] == ["", "layer2", "layer2.0"]  # the model's names
    stages[1].layer2[0].conv1 = nn.Conv2d(16, 8, 3, 2, 1, bias=False)  # replaced in the shared container
    assert model.layer2[0].conv1.out_channels == 8
    mb = build_model("torchvision:mobilenet_v2", 10, 32)
    first, _ = split_stages(mb, default_split("torchvision:mobilenet_v2"))
    assert all(getattr(first[0].features, str(i)) is mb.features[i] for i in range(4))


def test_stage_shapes_come_from_a_forward_pass_and_keep_modes():
    model = build_model("resnet20", 10, 32).train()
    stages, _ = split_stages(model, ["layer1", "layer2", "layer3"])
    mean = model.bn1.running_mean.clone()
    assert stage_shapes(stages, (3, 32, 32)) == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert all(m.training for m in model.modules()) and torch.equal(model.bn1.running_mean, mean)


def test_a_list_of_modules_is_already_the_stages():
    blocks = [nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)]
    stages, tail = split_stages(blocks)
    assert stages[0] is blocks[0] and stages[1] is blocks[1] and tail is None
    with pytest.raises(ConfigError, match="a list of modules is already split into stages; give no split"):
        split_stages(blocks, ["0"])
    with pytest.raises(ConfigError, match="must be a non-empty list of nn.Module"):
        split_stages([])


def test_a_split_at_the_last_module_leaves_no_tail():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    stages, tail = split_stages(seq, ["1", "2"])
    assert tail is None and len(stages) == 2 and stages[1].get_submodule("2") is seq[2]


class _Skip(nn.Module):
    """A U-Net-like skip: stage 1's output is read again after stage 2."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.c(self.b(y) + y)


class _Branch(nn.Module):
    """Stage 2 reads the model's input again."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.b(self.a(x)) + x


class _Branchy(nn.Module):
    """Data-dependent control flow in the forward itself: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y) if y.sum() > 0 else y


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.a(self.a(x))


@pytest.mark.parametrize("model, split, message", [
    ("resnet20", ["layer1", "layer9"], "'layer9' is not a module of CifarResNet; its top-level modules: conv1, bn1, "
                                        "relu, layer1, layer2, layer3, avgpool, fc"),
    ("resnet20", ["layer1", "layer1"], "'layer1' is named twice in the split of CifarResNet"),
    ("resnet20", ["layer1", "layer1.2"], "'layer1.2' is inside 'layer1' in the split of CifarResNet; "
                                          "a split name ends a stage, so no split name may contain another"),
    ("resnet20", ["layer2", "layer1"], "the split of CifarResNet is out of forward order; "
                                        "in forward order: layer1, layer2"),
    ("resnet20", ["layer1", "relu"], "the split of CifarResNet is out of forward order; "
                                      "in forward order: relu, layer1"),
    ("resnet20", [], "split must be a non-empty list of module names of CifarResNet"),
    ("torchvision:resnet18", ["relu", "maxpool", "layer1"],
     "stage 2 of ResNet (ending at 'maxpool') has no parameters: it would train nothing; end it at a later module"),
])
def test_split_refusals_name_the_module_and_what_is_valid(model, split, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        split_stages(build_model(model, 10, 32), split)


@pytest.mark.parametrize("model, split, message", [
    (_Skip, ["a", "b"], "_Skip's stages do not run in sequence: the tail reads 'a' from stage 1, "
                        "not only the output of 'b'"),
    (_Branch, ["a", "b"], "_Branch's stages do not run in sequence: the tail reads the model's input, "
                          "not only the output of 'b'"),
    (_Twice, ["a"], "'a' is called 2 times in _Twice's forward; a stage must end at a module that runs once"),
    (_Branchy, ["a", "b"], "torch.fx cannot trace _Branchy (TraceError: symbolically traced variables cannot be "
                           "used as inputs to control flow); pass its stages as a list of modules instead"),
])
def test_networks_that_are_not_a_sequence_of_stages_are_refused(model, split, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        split_stages(model(), split)


def test_a_module_never_called_is_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.spare = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ConfigError, match=r"^'spare' is never called in Unused's forward; a stage must end at a "
                                          r"module that runs once$"):
        split_stages(Unused(), ["a", "spare"])


def test_parameters_read_in_forward_go_to_every_stage_that_reads_them():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.scale = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.b(self.a(x) * self.scale) * self.scale

    model = Scaled()
    stages, tail = split_stages(model, ["a", "b"])
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(tail(stages[1](stages[0](x))), model(x)) and tail.scale is model.scale


def test_a_forward_with_two_inputs_is_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)

        def forward(self, x, y):
            return self.a(x) + y

    with pytest.raises(ConfigError, match=r"^Two's forward takes 2 inputs; a network cut into stages takes one$"):
        split_stages(Two(), ["a"])


def test_the_package_exports_the_model_api():
    import prunegreedy
    from prunegreedy.nn import split

    assert prunegreedy.build_model is build_model and prunegreedy.register_model is register_model
    assert prunegreedy.split_stages is split.split_stages


def test_a_stage_reading_two_stages_back_is_named():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Conv2d(3, 3, 1) for _ in range(4))

        def forward(self, x):
            y = self.a(x)
            z = self.b(y)
            return self.d(self.c(z) * y)

    with pytest.raises(ConfigError, match=r"^Dense's stages do not run in sequence: stage 4 reads 'a' from stage 1, "
                                          r"not only the output of 'c'$"):
        split_stages(Dense(), ["a", "b", "c", "d"])
