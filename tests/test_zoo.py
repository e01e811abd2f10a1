"""Models by name (nn.models) and cutting any network into sequential stages (nn.split)."""
import pytest
import torch
from torch import nn

from prunegreedy.errors import ConfigError
from prunegreedy.nn import models
from prunegreedy.nn.models import MODELS, BasicBlock, build_model, default_split, register_model


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
    register_model("tiny", lambda num_classes, image_size: nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size ** 2,
                                                                                                  num_classes)),
                   split=["1"])
    assert build_model("tiny", 4, 8)(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    assert default_split("tiny") == ["1"]
    with pytest.raises(ConfigError, match="model 'tiny' is already registered"):
        register_model("tiny", lambda n, s: nn.Identity())
    mine = nn.Conv2d(3, 4, 1)
    assert build_model(mine, 10, 32) is mine
