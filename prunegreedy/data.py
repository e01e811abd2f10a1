"""Datasets as cached uint8 tensors, with batched augmentation on the training device.

Images are decoded once (both cores), stored as uint8 tensors in a cache keyed by the data
folder's file list, sizes and mtimes, and read back in a fraction of a second. Training batches
are slices of a permutation; crop and flip are done on the whole batch with tensor indexing, so
there are no per-sample transforms and no worker processes.
Datasets too large to hold as tensors (imagenet) are streamed from disk instead: prunegreedy.stream.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from .config import DataConfig
from .errors import DataError, RunError
from .records import atomic_write

if TYPE_CHECKING:
    from .stream import StreamDataset

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Per-channel statistics of the CIFAR-10 training images (0..1 scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
SAMPLE_DIR = Path(__file__).parent / "sample_data" / "cifar10-sample"
CACHE_FORMAT = 1


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, 3, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def to(self, device: torch.device) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y),
                       self.classes, self.mean, self.std)

    def limit(self, train_limit: int | None, test_limit: int | None) -> "Dataset":
        """The first `train_limit` / `test_limit` images of each split (None: all)."""
        return replace(self, train_x=self.train_x[:train_limit], train_y=self.train_y[:train_limit],
                       test_x=self.test_x[:test_limit], test_y=self.test_y[:test_limit])

    def train_batches(self, batch_size: int, norm: "Normalize", generator: torch.Generator,
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return train_batches(self.train_x, self.train_y, batch_size, norm, generator, shard=shard)

    def eval_batches(self, batch_size: int, norm: "Normalize") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.test_x, self.test_y, batch_size, norm)


# ---------------------------------------------------------------------------------------------
# Decoding image folders

def _decode(args: tuple[str, int | None]) -> np.ndarray:
    from PIL import Image

    path, size = args
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except Exception as e:  # PIL raises many types for a corrupt file
        raise DataError(f"cannot decode image {path}: {e.__class__.__name__}: {e}") from None


def _list_split(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"missing folder {root} (expected image-folder layout <split>/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} holds no class folders (expected {root}/<class>/<image>)")
    items = []
    for label, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        items += [(p, label) for p in files]
    if not items:
        raise DataError(f"{root} holds no images with extensions {', '.join(sorted(IMAGE_EXTS))}")
    return classes, items


def _fingerprint(items: list[tuple[Path, int]], extra: str) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}|{extra}".encode())
    for p, label in items:
        st = p.stat()
        h.update(f"{p}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode_all(items: list[tuple[Path, int]], size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    args = [(str(p), size) for p, _ in items]
    workers = min(len(args) // 500 + 1, os.cpu_count() or 1)
    if workers > 1:
        # fork: workers only run PIL, and skip re-importing torch (seconds per worker under spawn).
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as ex:
            arrays = list(ex.map(_decode, args, chunksize=512))
    else:
        arrays = [_decode(a) for a in args]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images have different sizes {sorted(shapes)[:3]}; use the imagefolder dataset with "
                        f"data.image_size to resize them")
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return x, y


def default_cache_dir() -> Path:
    """$PRUNEGREEDY_CACHE, else $XDG_CACHE_HOME/prunegreedy, else ~/.cache/prunegreedy."""
    if os.environ.get("PRUNEGREEDY_CACHE"):
        return Path(os.environ["PRUNEGREEDY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunegreedy"


def _cached(cache_dir: Path, key: str, build: Callable[[], dict[str, torch.Tensor]], meta: dict) -> dict:
    """Load tensors cached under `key`, or build and store them (atomically, never beside the data)."""
    path = cache_dir / f"{key}.safetensors"
    if path.exists():
        try:
            return load_file(path)
        except Exception:
            pass  # a damaged cache entry is rebuilt
    tensors = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(_safetensors_bytes(tensors, meta)))
    except (OSError, RunError):
        pass  # a read-only cache only costs the decode next time
    return tensors


def _safetensors_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"meta": json.dumps(meta)})


def load_image_folder(root: Path, name: str, cache_dir: Path, size: int | None,
                      expect_classes: list[str] | None = None) -> tuple[dict, list[str]]:
    train_classes, train_items = _list_split(root / "train")
    test_classes, test_items = _list_split(root / "test")
    if train_classes != test_classes:
        raise DataError(f"{root}: train/ and test/ have different class folders")
    if expect_classes is not None and train_classes != expect_classes:
        raise DataError(f"{root}: class folders {train_classes} are not the CIFAR-10 classes {expect_classes}")
    key = f"{name}-" + _fingerprint(train_items + test_items, f"{root.resolve()}|{size}")

    def build() -> dict[str, torch.Tensor]:
        tx, ty = _decode_all(train_items, size)
        vx, vy = _decode_all(test_items, size)
        return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}

    return _cached(cache_dir, key, build, {"classes": train_classes, "root": str(root)}), train_classes


# ---------------------------------------------------------------------------------------------
# CIFAR-10 in torchvision's python-pickle layout, read without executing pickled code

class _ArrayUnpickler(pickle.Unpickler):
    """Allow only what CIFAR batch files contain: dicts, lists, bytes and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from a CIFAR batch file")


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    try:
        d = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return data, list(d[b"labels"])
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"corrupt CIFAR-10 batch file {path}: {e.__class__.__name__}") from None


def load_cifar_batches(folder: Path) -> dict[str, torch.Tensor]:
    train = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = _read_batch(folder / "test_batch")
    return {"train_x": torch.from_numpy(np.concatenate([a for a, _ in train])),
            "train_y": torch.tensor([l for _, ls in train for l in ls], dtype=torch.int64),
            "test_x": torch.from_numpy(tx), "test_y": torch.tensor(ty, dtype=torch.int64)}


def _batches_dir(root: Path) -> Path | None:
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").exists() and (cand / "test_batch").exists():
            return cand
    return None


def _download_cifar10(cache_dir: Path) -> Path:
    try:
        import torchvision

        torchvision.datasets.CIFAR10(root=str(cache_dir / "torchvision"), download=True)
    except Exception as e:
        raise DataError(f"CIFAR-10 is not available locally and the download failed ({e.__class__.__name__}); "
                        f"pass --data-dir PATH to a copy in cifar-10-batches-py or image-folder "
                        f"(train/<class>/, test/<class>/) layout") from None
    return cache_dir / "torchvision" / "cifar-10-batches-py"


def load_cifar10(cfg: DataConfig, cache_dir: Path) -> Dataset:
    if cfg.data_dir is None:
        local = _batches_dir(cache_dir / "torchvision") or _download_cifar10(cache_dir)
        root = local
    else:
        root = Path(cfg.data_dir).expanduser()
        if not root.exists():
            raise DataError(f"data folder {root} does not exist")
    batches = _batches_dir(root)
    if batches is not None:
        t = load_cifar_batches(batches)
    elif (root / "train").is_dir():
        t, _ = load_image_folder(root, "cifar10", cache_dir, None, expect_classes=CIFAR10_CLASSES)
    else:
        raise DataError(f"{root} is neither in cifar-10-batches-py layout (data_batch_1..5, test_batch) nor in "
                        f"image-folder layout (train/<class>/, test/<class>/)")
    if tuple(t["train_x"].shape[1:]) != (3, 32, 32):
        raise DataError(f"{root}: CIFAR-10 images must be 32x32 RGB, got {tuple(t['train_x'].shape[1:])}")
    return Dataset("cifar10", t["train_x"], t["train_y"], t["test_x"], t["test_y"], list(CIFAR10_CLASSES),
                   CIFAR10_MEAN, CIFAR10_STD)


def load_cifar10_sample(cfg: DataConfig, cache_dir: Path) -> Dataset:
    t, _ = load_image_folder(SAMPLE_DIR, "cifar10-sample", cache_dir, None, expect_classes=CIFAR10_CLASSES)
    return Dataset("cifar10-sample", t["train_x"], t["train_y"], t["test_x"], t["test_y"], list(CIFAR10_CLASSES),
                   CIFAR10_MEAN, CIFAR10_STD)


def load_imagefolder(cfg: DataConfig, cache_dir: Path) -> Dataset:
    if cfg.data_dir is None:
        raise DataError("the imagefolder dataset needs --data-dir PATH "
                        "(a folder with train/<class>/ and test/<class>/)")
    root = Path(cfg.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    t, classes = load_image_folder(root, "imagefolder", cache_dir, cfg.image_size)
    x = t["train_x"].float() / 255
    mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return Dataset(f"imagefolder:{root.name}", t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes,
                   mean, std)  # type: ignore[arg-type]


def load_imagenet(cfg: DataConfig, cache_dir: Path) -> StreamDataset:
    """Streamed from disk by prunegreedy.stream, which builds on this module: imported on use."""
    from .stream import load_imagenet

    return load_imagenet(cfg, cache_dir)


DATASETS: dict[str, Callable[[DataConfig, Path], Dataset | StreamDataset]] = {
    "cifar10": load_cifar10,
    "cifar10-sample": load_cifar10_sample,
    "imagefolder": load_imagefolder,
    "imagenet": load_imagenet,
}


def load_dataset(cfg: DataConfig) -> Dataset | StreamDataset:
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset '{cfg.name}'; valid: {', '.join(DATASETS)}")
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return DATASETS[cfg.name](cfg, cache_dir).limit(cfg.train_limit, cfg.test_limit)


# ---------------------------------------------------------------------------------------------
# Batched augmentation and batches

def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding `pad` and horizontal flip, for a whole uint8 batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2)


class Normalize:
    """uint8 (N, C, H, W) -> float, normalised by the dataset's mean and std."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale - self.shift).contiguous(memory_format=self.memory_format)


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, norm: Normalize, generator: torch.Generator,
                  augment: bool = True, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented, normalised batches (the last partial batch included).

    `shard = (rank, world)`: every rank draws the same global batch and augmentation (same
    generator state), then keeps images rank, rank + world, ...; so N processes see exactly the
    batches one process would. A last batch smaller than `world` is dropped on every rank alike.
    """
    rank, world = shard
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        idx = perm[start:start + batch_size]
        if len(idx) < world:
            return
        xb = x[idx]
        if augment:
            xb = random_crop_flip(xb, 4, generator)
        yield norm(xb[rank::world]), y[idx][rank::world]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, norm: Normalize):
    for start in range(0, len(x), batch_size):
        yield norm(x[start:start + batch_size]), y[start:start + batch_size]
