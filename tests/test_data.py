import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from prunegreedy.data import base as data_base
from prunegreedy.data import folders as data_folders
from prunegreedy.data import registry as data_registry
from prunegreedy.config import DataConfig
from prunegreedy.errors import DataError


def test_sample_is_real_cifar10(sample):
    assert sample.train_x.shape == (1500, 3, 32, 32) and sample.train_x.dtype == torch.uint8
    assert sample.test_x.shape == (500, 3, 32, 32)
    assert sample.train_y.bincount().tolist() == [150] * 10
    assert sample.test_y.bincount().tolist() == [50] * 10
    assert sample.classes == data_registry.CIFAR10_CLASSES
    assert 80 < sample.train_x.float().mean() < 160  # natural images, not blank or noise


def test_cache_is_reused_and_keyed_by_folder_contents(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    for split, n in (("train", 3), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i, f in enumerate(sorted((data_registry.SAMPLE_DIR / split / c).iterdir())[:n]):
                shutil.copy(f, root / split / c / f"{i}.jpg")
    cfg = DataConfig(name="imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"), image_size=16)
    first = data_registry.load_dataset(cfg)
    assert first.train_x.shape == (6, 3, 16, 16) and first.classes == ["cat", "dog"]
    assert first.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    decoded = []
    real = data_folders._decode_all
    monkeypatch.setattr(data_folders, "_decode_all", lambda *a: decoded.append(1) or real(*a))
    again = data_registry.load_dataset(cfg)
    assert decoded == [] and torch.equal(again.train_x, first.train_x)
    shutil.copy(root / "train" / "cat" / "0.jpg", root / "train" / "cat" / "9.jpg")  # the folder changed
    changed = data_registry.load_dataset(cfg)
    assert decoded == [1, 1] and changed.train_x.shape[0] == 7
    assert not any(p.suffix == ".safetensors" for p in root.rglob("*"))  # nothing written beside the data


def test_corrupt_image_and_bad_layouts(tmp_path):
    root = tmp_path / "c"
    for split in ("train", "test"):
        for c in data_registry.CIFAR10_CLASSES:
            (root / split / c).mkdir(parents=True)
            shutil.copy(next(iter(sorted((data_registry.SAMPLE_DIR / split / c).iterdir()))), root / split / c / "a.jpg")
    (root / "train" / "cat" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cfg = DataConfig(name="cifar10", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"cannot decode image .*train/cat/b\.jpg"):
        data_registry.load_dataset(cfg)
    with pytest.raises(DataError, match="does not exist"):
        data_registry.load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path / "none")))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="neither in cifar-10-batches-py layout"):
        data_registry.load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path / "flat")))
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        data_registry.load_dataset(DataConfig(name="imagefolder", data_dir=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="unknown dataset 'mnist'; valid: cifar10, cifar10-sample, imagefolder"):
        data_registry.load_dataset(DataConfig(name="mnist"))


def _write_batches(folder, evil=False):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        if evil and name == "test_batch":
            d = {b"data": __import__("os").system}  # unpickling would import a callable
        (folder / name).write_bytes(pickle.dumps(d))


def test_cifar_python_batches_are_read_without_code(tmp_path):
    _write_batches(tmp_path / "cifar-10-batches-py")
    ds = data_registry.load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_y.tolist() == [0, 1, 2, 3]
    evil = tmp_path / "evil"
    _write_batches(evil, evil=True)
    with pytest.raises(DataError, match="refusing to unpickle posix.system"):
        data_registry.load_dataset(DataConfig(name="cifar10", data_dir=str(evil)))


def _reference_crop_flip(x, dy, dx, flip, pad=4):
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    out = []
    for i in range(len(x)):
        img = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        out.append(img.flip(2) if flip[i] else img)
    return torch.stack(out)


def test_batched_crop_flip_matches_per_image_reference(sample):
    x = sample.train_x[:64]
    gen = torch.Generator().manual_seed(3)
    got = data_base.random_crop_flip(x, 4, gen)
    gen = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 9, (64,), generator=gen)
    dx = torch.randint(0, 9, (64,), generator=gen)
    flip = torch.rand(64, generator=gen) < 0.5
    assert 10 < flip.sum() < 54 and len(set(dy.tolist())) > 3
    assert torch.equal(got, _reference_crop_flip(x, dy, dx, flip))


def test_normalize(sample):
    norm = data_base.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"), channels_last=True)
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert torch.allclose(norm(x), torch.tensor([-2.0, 2.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    batches = list(data_base.train_batches(sample.train_x, sample.train_y, 128, norm, torch.Generator().manual_seed(0)))
    assert len(batches) == 12 and sum(len(y) for _, y in batches) == 1500
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)


def test_no_local_cifar10_and_no_network_says_how_to_pass_data_dir(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)  # never download in tests
    with pytest.raises(DataError, match="download failed \\(OSError\\); pass --data-dir PATH"):
        data_registry.load_dataset(DataConfig(name="cifar10", cache_dir=str(tmp_path)))


def test_imagefolder_accepts_val_as_the_evaluation_split(tmp_path, sample):
    root = tmp_path / "folder"
    shutil.copytree(data_registry.SAMPLE_DIR / "train", root / "train")
    shutil.copytree(data_registry.SAMPLE_DIR / "test", root / "val")
    ds = data_registry.load_dataset(DataConfig(name="imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "c")))
    assert ds.classes == data_registry.CIFAR10_CLASSES and ds.num_train == sample.num_train
    assert torch.equal(ds.test_x, sample.test_x) and torch.equal(ds.test_y, sample.test_y)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=r"missing folder .*folder/test \(expected image-folder layout"):
        data_registry.load_dataset(DataConfig(name="imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "c")))


def _jpegs(root, splits):
    """`splits`: {split: {class: number of images}}; tiny solid-colour JPEGs."""
    for split, classes in splits.items():
        for label, (c, n) in enumerate(classes.items()):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * label, 20 * i, 90)).save(root / split / c / f"{i}.jpg")
    return root


@pytest.mark.parametrize("splits,message", [
    ({"train": {"cat": 2}, "test": {"cat": 1}}, "image folder {root}/train has 1 class (cat); a classifier needs "
                                                "at least two"),
    ({"train": {"cat": 2, "dog": 0}, "test": {"cat": 1, "dog": 1}},
     "class 'dog' has no training images in {root}/train; every class needs images in train/ and test/"),
    ({"train": {"cat": 2, "dog": 2}, "val": {"cat": 0, "dog": 1}},
     "class 'cat' has no test images in {root}/val; every class needs images in train/ and val/"),
    ({"train": {"cat": 2, "dog": 2, "eel": 1}, "test": {"cat": 1, "dog": 1}},
     "{root}: train/ and test/ have different class folders ('eel' is in only one)"),
], ids=["one-class", "no-train-images", "no-val-images", "class-missing-from-test"])
def test_imagefolder_that_cannot_train_is_refused_naming_the_class(tmp_path, splits, message):
    root = _jpegs(tmp_path / "d", splits)
    cfg = DataConfig(name="imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as e:
        data_registry.load_dataset(cfg)
    assert str(e.value) == message.format(root=root)
    assert not (tmp_path / "cache").exists()  # refused on the file list, before decoding
