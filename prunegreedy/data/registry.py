"""Datasets by name (`data.name`): CIFAR-10, its bundled sample, any image folder, ImageNet (streamed)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config import DataConfig
from ..errors import DataError
from .base import Dataset
from .folders import batches_dir, default_cache_dir, list_split, load_cifar_batches, load_image_folder
from .stream import StreamDataset, imagenet_root, load_imagenet

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Per-channel statistics of the CIFAR-10 training images (0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
SAMPLE_DIR = Path(__file__).parent / "sample_data" / "cifar10-sample"


def _download_cifar10(cache_dir: Path) -> Path:
    try:
        import torchvision

        torchvision.datasets.CIFAR10(root=str(cache_dir / "torchvision"), download=True)
    except Exception as e:
        raise DataError(f"CIFAR-10 is not available locally and the download failed ({e.__class__.__name__}); "
                        f"pass --data-dir PATH to a copy in cifar-10-batches-py or image-folder "
                        f"(train/<class>/, test/<class>/) layout") from None
    return cache_dir / "torchvision" / "cifar-10-batches-py"


def _cifar10_root(cfg: DataConfig) -> Path:
    """The local copy given as data_dir, in either layout (checked without decoding anything)."""
    root = Path(cfg.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if batches_dir(root) is None and not (root / "train").is_dir():
        raise DataError(f"{root} is neither in cifar-10-batches-py layout (data_batch_1..5, test_batch) nor in "
                        f"image-folder layout (train/<class>/, test/<class>/)")
    return root


def load_cifar10(cfg: DataConfig, cache_dir: Path) -> Dataset:
    root = _cifar10_root(cfg) if cfg.data_dir is not None else \
        batches_dir(cache_dir / "torchvision") or _download_cifar10(cache_dir)
    batches = batches_dir(root)
    if batches is not None:
        t = load_cifar_batches(batches)
    else:
        t, _ = load_image_folder(root, "cifar10", cache_dir, None, expect_classes=CIFAR10_CLASSES)
    if tuple(t["train_x"].shape[1:]) != (3, 32, 32):
        raise DataError(f"{root}: CIFAR-10 images must be 32x32 RGB, got {tuple(t['train_x'].shape[1:])}")
    return Dataset("cifar10", t["train_x"], t["train_y"], t["test_x"], t["test_y"], list(CIFAR10_CLASSES),
                   CIFAR10_MEAN, CIFAR10_STD)


def load_cifar10_sample(cfg: DataConfig, cache_dir: Path) -> Dataset:
    t, _ = load_image_folder(SAMPLE_DIR, "cifar10-sample", cache_dir, None, expect_classes=CIFAR10_CLASSES)
    return Dataset("cifar10-sample", t["train_x"], t["train_y"], t["test_x"], t["test_y"], list(CIFAR10_CLASSES),
                   CIFAR10_MEAN, CIFAR10_STD)


def _imagefolder_root(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        raise DataError("the imagefolder dataset needs --data-dir PATH "
                        "(a folder with train/<class>/ and test/<class>/ or val/<class>/)")
    root = Path(cfg.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    return root


def load_imagefolder(cfg: DataConfig, cache_dir: Path) -> Dataset:
    root = _imagefolder_root(cfg)
    t, classes = load_image_folder(root, "imagefolder", cache_dir, cfg.image_size)
    x = t["train_x"].float() / 255
    mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return Dataset(f"imagefolder:{root.name}", t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes,
                   mean, std)  # type: ignore[arg-type]


DATASETS: dict[str, Callable[[DataConfig, Path], Dataset | StreamDataset]] = {
    "cifar10": load_cifar10,
    "cifar10-sample": load_cifar10_sample,
    "imagefolder": load_imagefolder,
    "imagenet": load_imagenet,
}


def _cifar10_shape(cfg: DataConfig) -> tuple[int, tuple[int, int, int]]:
    if cfg.data_dir is not None:
        _cifar10_root(cfg)
    return len(CIFAR10_CLASSES), (3, 32, 32)


def _imagefolder_shape(cfg: DataConfig) -> tuple[int, tuple[int, int, int]]:
    classes, _ = list_split(_imagefolder_root(cfg) / "train")  # file names only, nothing decoded
    return len(classes), (3, cfg.image_size, cfg.image_size)


def _imagenet_shape(cfg: DataConfig) -> tuple[int, tuple[int, int, int]]:
    root, _ = imagenet_root(cfg)
    classes = [p for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return len(classes), (3, cfg.image_size, cfg.image_size)


# name -> (number of classes, image shape), from the config and the folders' names alone: what a
# network built for the data needs, without decoding an image (prunegreedy plan).
SHAPES: dict[str, Callable[[DataConfig], tuple[int, tuple[int, int, int]]]] = {
    "cifar10": _cifar10_shape,
    "cifar10-sample": lambda cfg: (len(CIFAR10_CLASSES), (3, 32, 32)),
    "imagefolder": _imagefolder_shape,
    "imagenet": _imagenet_shape,
}


def data_shape(cfg: DataConfig) -> tuple[int, tuple[int, int, int]]:
    """(classes, image shape) of the dataset `cfg` names, without loading it."""
    if cfg.name not in SHAPES:
        raise DataError(f"unknown dataset '{cfg.name}'; valid: {', '.join(DATASETS)}")
    return SHAPES[cfg.name](cfg)


def load_dataset(cfg: DataConfig) -> Dataset | StreamDataset:
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset '{cfg.name}'; valid: {', '.join(DATASETS)}")
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return DATASETS[cfg.name](cfg, cache_dir).limit(cfg.train_limit, cfg.test_limit)
