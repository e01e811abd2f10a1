"""Whole networks by name, to train greedily stage by stage: the CIFAR ResNets and torchvision's.

Your own module builds as MODULE:FACTORY (`mynets:MyNet`, imported from the working directory or
PYTHONPATH and called with no arguments), so a run of it resumes and loads by that name.
Like the plans, models are a dict of factories (timm's registry): `build_model("resnet20", 10, 32)`
or `build_model("torchvision:resnet18", 10, 32)`. Each entry also says where its stages end
(`default_split`), in the module names `nn.split.split_stages` cuts at. Any torchvision
classification model builds as `torchvision:NAME`; the registered ones also carry a split.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .fastcifar import NAME as FASTCIFAR
from .fastcifar import fast_cifar
from .autosplit import auto_split

SMALL_IMAGE = 64  # at this side or below, stems that shrink the map by 4 shrink it by 1 (ResNet) or 2 (MobileNet)
TORCHVISION = "torchvision:"
USER = "user:"  # a module passed from Python: nothing can build it again by name

Factory = Callable[[int, int], nn.Module]  # (num_classes, image_size) -> model


class BasicBlock(nn.Module):
    """He et al. 2016's two 3x3 convs with BN; the shortcut is a 1x1 conv + BN where the shape changes (option B)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """The CIFAR ResNet-(6n+2): a 16-filter 3x3 stem, three stages of n blocks at 16, 32, 64 filters."""

    def __init__(self, n: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _torchvision(name: str) -> Factory:
    def build(num_classes: int, image_size: int) -> nn.Module:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            valid = ", ".join(torchvision.models.list_models(module=torchvision.models)[:12])
            raise ConfigError(f"unknown torchvision classification model '{name}'; valid include: {valid}, ...")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if image_size <= SMALL_IMAGE:
            _small_stem(model)
        return model
    return build


def _small_stem(model: nn.Module) -> None:
    """Keep a small image's resolution through the stem: a ResNet's 7x7/2 conv becomes 3x3/1 and
    its max-pool goes; MobileNet's first conv keeps stride 2 -> 1. Other models are left as built."""
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool"):
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, bias=old.bias is not None)
        model.maxpool = nn.Identity()
    elif type(model).__name__ == "MobileNetV2":
        model.features[0][0].stride = (1, 1)


@dataclass(frozen=True)
class ModelEntry:
    factory: Factory
    split: list[str] | None  # module names ending each stage; None: the caller must give one


RESNET_SPLIT = ["layer1", "layer2", "layer3", "layer4"]
# MobileNetV2's maps halve at features 2, 4, 7 and 14; its stages end just before the last three,
# and at the end: 16x16 (24 ch), 8x8 (32), 4x4 (96) and 2x2 (1280) on a 32x32 input with the small stem.
MOBILENET_V2_SPLIT = ["features.3", "features.6", "features.13", "features.18"]

MODELS: dict[str, ModelEntry] = {
    "resnet20": ModelEntry(lambda num_classes, image_size: CifarResNet(3, num_classes), RESNET_SPLIT[:3]),
    "resnet56": ModelEntry(lambda num_classes, image_size: CifarResNet(9, num_classes), RESNET_SPLIT[:3]),
    f"{TORCHVISION}resnet18": ModelEntry(_torchvision("resnet18"), RESNET_SPLIT),
    f"{TORCHVISION}resnet50": ModelEntry(_torchvision("resnet50"), RESNET_SPLIT),
    f"{TORCHVISION}mobilenet_v2": ModelEntry(_torchvision("mobilenet_v2"), MOBILENET_V2_SPLIT),
    # airbench94's network at its two published widths; fastcifar-W1-W2-... builds any others
    f"{FASTCIFAR}-64-256-256": ModelEntry(*fast_cifar(f"{FASTCIFAR}-64-256-256")),
    f"{FASTCIFAR}-64-128-128": ModelEntry(*fast_cifar(f"{FASTCIFAR}-64-128-128")),
}


def register_model(name: str, factory: Factory, split: list[str] | None = None) -> None:
    """Add a model under `name`: factory(num_classes, image_size) builds it, `split` ends its stages."""
    if name in MODELS:
        raise ConfigError(f"model '{name}' is already registered")
    MODELS[name] = ModelEntry(factory, list(split) if split is not None else None)


def is_model(name: str) -> bool:
    """Whether `name` builds a model: registered, torchvision:NAME, the fast network at any widths,
    or your own module as MODULE:FACTORY."""
    return name in MODELS or name.startswith((TORCHVISION, f"{FASTCIFAR}-")) or (":" in name and not name.startswith(USER))


def _entry(name: str) -> ModelEntry:
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION):  # any torchvision classifier, without a default split
        return ModelEntry(_torchvision(name[len(TORCHVISION):]), None)
    if name.startswith(f"{FASTCIFAR}-"):  # the fast network at any widths
        return ModelEntry(*fast_cifar(name))
    if ":" in name and not name.startswith(USER):  # your own module as MODULE:FACTORY, built by importing it
        return ModelEntry(lambda num_classes, image_size: import_module_factory(name), None)
    raise ConfigError(f"unknown model '{name}'; valid: {', '.join(MODELS)}, {FASTCIFAR}-W1-W2-..., torchvision:NAME "
                      f"or MODULE:FACTORY")


def build_model(name_or_module: str | nn.Module, num_classes: int, image_size: int) -> nn.Module:
    """The named model for num_classes at image_size x image_size inputs; a module passes through
    unchanged (the caller's own network), so callers take either."""
    if isinstance(name_or_module, nn.Module):
        return name_or_module
    return _entry(name_or_module).factory(num_classes, image_size)


def registered_split(name: str) -> list[str] | None:
    """The split registered with the named model, if any."""
    split = _entry(name).split
    return list(split) if split is not None else None


def default_split(model: str | nn.Module, input_shape: tuple[int, ...] | None = None, stages: int = 4,
                  ) -> list[str]:
    """Where the model's stages end: the split registered with its name, else, given the input's
    shape, where its traced feature map shrinks (nn.autosplit, at most `stages` stages)."""
    if isinstance(model, str):
        split = registered_split(model)
        if split is not None:
            return split
        if input_shape is None:
            raise ConfigError(f"model '{model}' has no default split; give the module names that end its stages")
        with torch.random.fork_rng(devices=[]):  # building it draws weights the run must not see drawn
            model = build_model(model, 10, input_shape[1])
    if input_shape is None:
        raise ConfigError(f"{type(model).__name__} needs split=[module names ending its stages] or an input shape")
    return auto_split(model, tuple(input_shape), stages)


def import_module_factory(path: str) -> nn.Module:
    """A fresh instance of your own module named as MODULE:FACTORY (mynets:MyNet), imported from
    your code and called with no arguments: how the command line gets one (Python passes model=)."""
    import importlib
    import os
    import sys

    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"--model takes MODULE:FACTORY (e.g. mynets:MyNet), got '{path}'")
    here = os.getcwd() not in sys.path and "" not in sys.path  # the `prunegreedy` script does not look here
    if here:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--model {path}: cannot import it ({e})") from None
    finally:
        if here:
            sys.path.remove(os.getcwd())
    if not callable(factory):
        raise ConfigError(f"--model {path} is a {type(factory).__name__}, not a class or function")
    made = factory()
    if not isinstance(made, nn.Module):
        raise ConfigError(f"--model {path} gave a {type(made).__name__}, not an nn.Module")
    return made

