"""Image folders too large to hold as tensors (ImageNet), streamed from disk by DataLoader workers.

Workers decode each JPEG with PIL and crop it (RandomResizedCrop + flip for training; resize to
S / 0.875 + center crop S for evaluation), then hand back uint8 tensors: conversion to float and
normalisation run batched on the training device (`Normalize`), as for the in-memory datasets.

Each training image's augmentation is seeded from (epoch seed, image index), and the epoch's seeds
are drawn from the trainer's generator: an epoch is the same whatever the number of workers, and a
resumed stage (generator state restored) repeats it exactly.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision import transforms

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .augment import Augment
from .base import Normalize
from .folders import IMAGE_EXTS, check_classes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # evaluation resizes the shorter side to S / 0.875 (256 for 224), then crops S
LAYOUT = "expected DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>, e.g. ImageNet's *.JPEG"


@dataclass
class _Files(torch.utils.data.Dataset):
    """One split: file paths relative to `root` as one numpy bytes array (forked workers share it;
    a list of Python strings would be copied into every worker as they touch its refcounts)."""

    root: str
    names: np.ndarray
    labels: np.ndarray  # int64
    transform: Callable[[Image.Image], Image.Image]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """`key`: an index, or (index, seed) to make a random transform a function of the seed."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        path = os.path.join(self.root, os.fsdecode(self.names[i]))
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises many types for a corrupt file
            raise DataError(f"cannot decode image {path}: {e.__class__.__name__}: {e}") from None
        with torch.random.fork_rng(devices=[]):  # with workers=0 this is the trainer's process
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            img = self.transform(img)
        return transforms.functional.pil_to_tensor(img), int(self.labels[i])

    def head(self, n: int | None) -> _Files:
        return replace(self, names=self.names[:n], labels=self.labels[:n])


class _SeededEpoch(Sampler):
    """Keys (index, augmentation seed) in the order of this epoch's DistributedSampler.

    Each epoch swaps `order` and `seed` on the same object, so one DataLoader, and its persistent
    workers, serves every epoch.
    """

    order: DistributedSampler
    seed: int
    skip: int = 0  # keys left out at the start (a loop resumed part-way through the epoch)

    def __len__(self) -> int:
        return len(self.order) - min(self.skip, len(self.order))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, (self.seed + i) % 2**63) for k, i in enumerate(self.order) if k >= self.skip)


@dataclass
class StreamDataset:
    """The interface of `data.base.Dataset` (what the trainer, pipeline and evaluation use), streamed."""

    name: str
    classes: list[str]
    train: _Files
    test: _Files
    image_size: int
    workers: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: torch.device = torch.device("cpu")
    _loaders: dict = field(default_factory=dict, init=False, repr=False)  # persistent, one per batch layout

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def test_y(self) -> torch.Tensor:
        """All evaluation labels, in the order eval_batches yields them (CPU, int64)."""
        return torch.from_numpy(self.test.labels)

    def to(self, device: torch.device) -> StreamDataset:
        device = torch.device(device)
        return self if device == self.device else replace(self, device=device)

    def limit(self, train_limit: int | None, test_limit: int | None) -> StreamDataset:
        """The first `train_limit` / `test_limit` files of each split (None: all)."""
        return replace(self, train=self.train.head(train_limit), test=self.test.head(test_limit))

    def train_batches(self, batch_size: int, norm: Normalize, generator: torch.Generator,
                      shard: tuple[int, int] = (0, 1), skip: int = 0, aug: Augment | None = None,
                      epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; `batch_size` is global: each of `world` ranks gets batch_size // world images
        per step, from its DistributedSampler part of the epoch (the last partial batch included).
        `skip`: leave out the first batches (the epoch's order and seeds are drawn all the same).
        Streamed images take their own augmentation (train_transform), not the recipe's (`aug`)."""
        if aug is not None:
            raise ConfigError("train.flip, train.translate and train.translate_pad apply to cached datasets; "
                              "a streamed dataset (imagenet) takes the defaults (random, 4, zeros)")
        rank, world = shard
        order_seed, aug_seed = torch.randint(2**62, (2,), generator=generator).tolist()
        loader = self._loader(("train", batch_size, shard), self.train, batch_size // world, _SeededEpoch())
        loader.sampler.order = DistributedSampler(self.train, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=order_seed, drop_last=True)
        loader.sampler.seed = aug_seed
        loader.sampler.skip = skip * (batch_size // world)
        return self._deliver(loader, norm)

    def eval_batches(self, batch_size: int, norm: Normalize) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._deliver(self._loader(("eval", batch_size), self.test, batch_size, None), norm)

    def _loader(self, key: tuple, files: _Files, batch_size: int, sampler: Sampler | None) -> DataLoader:
        if key not in self._loaders:
            self._loaders[key] = DataLoader(
                files, batch_size, sampler=sampler, num_workers=self.workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0, multiprocessing_context="fork" if self.workers else None,
                generator=torch.Generator())  # its worker seeds go unused; this keeps it off the global RNG
        return self._loaders[key]

    def _deliver(self, loader: DataLoader, norm: Normalize) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in loader:
                yield norm(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
        except DataError as e:  # from a worker, the message carries the worker's traceback: keep its last line
            last = str(e).strip().splitlines()[-1]
            raise DataError(last.removeprefix(f"{DataError.__module__}.{DataError.__qualname__}: ")) from None


def train_transform(size: int) -> Callable[[Image.Image], Image.Image]:
    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()])


def eval_transform(size: int) -> Callable[[Image.Image], Image.Image]:
    return transforms.Compose([transforms.Resize(round(size / EVAL_CROP_FRACTION)), transforms.CenterCrop(size)])


def scan_split(root: Path, transform: Callable[[Image.Image], Image.Image]) -> tuple[list[str], _Files]:
    """Classes (sorted folder names) and files (sorted within each class) of one split.

    os.scandir with plain strings: ImageNet's 1.28M files list in seconds (200k files: 0.5 s, where
    the Path-based folders.list_split takes 4.3 s), so the list is not cached.
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root} holds no class folders ({LAYOUT})")
    names, labels = [], []
    for label, c in enumerate(classes):
        files = sorted(e.name for e in os.scandir(root / c) if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS)
        names += [os.fsencode(os.path.join(c, f)) for f in files]
        labels += [label] * len(files)
    if not names:
        raise DataError(f"{root} holds no images with extensions {', '.join(sorted(IMAGE_EXTS))}")
    return classes, _Files(str(root), np.array(names, dtype=np.bytes_), np.array(labels, dtype=np.int64), transform)


def imagenet_root(cfg: DataConfig) -> tuple[Path, str]:
    """(the data folder, its evaluation split's name), the layout checked without reading an image."""
    if cfg.data_dir is None:
        raise DataError(f"the imagenet dataset needs --data-dir PATH ({LAYOUT})")
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist ({LAYOUT})")
    test_split = "val" if (root / "val").is_dir() or not (root / "test").is_dir() else "test"
    for split in ("train", test_split):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder ({LAYOUT}; test/ may stand for val/)")
    return root, test_split


def load_imagenet(cfg: DataConfig, cache_dir: Path) -> StreamDataset:
    """Any image folder in ImageNet's layout; `val/` may be called `test/`. Nothing is decoded ahead,
    so `cache_dir` is unused. Crops are data.image_size square, normalised with ImageNet's statistics."""
    root, test_split = imagenet_root(cfg)
    classes, train = scan_split(root / "train", train_transform(cfg.image_size))
    test_classes, test = scan_split(root / test_split, eval_transform(cfg.image_size))
    if classes != test_classes:
        only = sorted(set(classes) ^ set(test_classes))
        raise DataError(f"{root}: train/ and {test_split}/ have different class folders ({len(classes)} vs "
                        f"{len(test_classes)}, e.g. '{only[0]}' is in only one; {LAYOUT})")
    check_classes(root, test_split, classes, train.labels, test.labels)
    return StreamDataset("imagenet", classes, train, test, cfg.image_size, cfg.workers)
