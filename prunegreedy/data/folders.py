"""Image folders and CIFAR-10 batch files decoded once into uint8 tensors, cached on disk.

Images are decoded by worker processes (both cores) and stored as uint8 tensors in a cache keyed
by the folder's file list, sizes and mtimes, so later runs read them back in a fraction of a
second. CIFAR-10's python batch files are read without executing pickled code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from ..errors import DataError, RunError
from ..fileio import atomic_write

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
CACHE_FORMAT = 1
EVAL_SPLITS = ("test", "val")  # the evaluation split's folder: test/, or val/ as in ImageNet's layout


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


def list_split(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
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


def check_classes(root: Path, test_split: str, classes: list[str], train_labels, test_labels) -> None:
    """Refuse folders that would train but mean nothing: with one class every answer is right, a class
    without training images is never learned and one without test images is never scored. Runs on
    the file lists, before anything is decoded."""
    if len(classes) < 2:
        raise DataError(f"image folder {root / 'train'} has {len(classes)} class ({', '.join(classes)}); "
                        f"a classifier needs at least two")
    for split, labels, kind in (("train", train_labels, "training"), (test_split, test_labels, "test")):
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
        for c, n in zip(classes, counts):
            if n == 0:
                raise DataError(f"class '{c}' has no {kind} images in {root / split}; every class needs images "
                                f"in train/ and {test_split}/")


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


def eval_split(root: Path) -> str:
    """The evaluation split's folder name: test/, else val/ (torchvision ImageFolder's usual layout)."""
    for name in EVAL_SPLITS:
        if (root / name).is_dir():
            return name
    return EVAL_SPLITS[0]  # list_split then names the missing folder


def load_image_folder(root: Path, name: str, cache_dir: Path, size: int | None,
                      expect_classes: list[str] | None = None) -> tuple[dict, list[str]]:
    split = eval_split(root)
    train_classes, train_items = list_split(root / "train")
    test_classes, test_items = list_split(root / split)
    if train_classes != test_classes:
        only = sorted(set(train_classes) ^ set(test_classes))
        raise DataError(f"{root}: train/ and {split}/ have different class folders ('{only[0]}' is in only one)")
    if expect_classes is not None and train_classes != expect_classes:
        raise DataError(f"{root}: class folders {train_classes} are not the CIFAR-10 classes {expect_classes}")
    check_classes(root, split, train_classes, [l for _, l in train_items], [l for _, l in test_items])
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


def batches_dir(root: Path) -> Path | None:
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").exists() and (cand / "test_batch").exists():
            return cand
    return None
