import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from prunegreedy.data import base as data_base
from prunegreedy.data import registry as data_registry
from prunegreedy.train import evaluate as train_evaluate
from prunegreedy.train import loop as train_loop
from prunegreedy.nn.blocks import ConvBlock
from prunegreedy.config import DataConfig
from prunegreedy.config import TrainConfig
from prunegreedy.errors import DataError
from prunegreedy.nn.heads import AuxHead

CLASSES = ["n01", "n02", "n03"]
# mean 0, std 1/255: batches come back as the raw pixel values, as floats
RAW = data_base.Normalize((0, 0, 0), (1 / 255,) * 3, torch.device("cpu"), channels_last=False)


def make_folder(root, split_names=("train", "val"), counts=(6, 3), classes=CLASSES):
    """PNGs of different sizes. Red is noise (crops differ visibly), green is constant and names the
    image (10 + 12 * its index in the split), blue is constant and names the class (30 + 60 * label)."""
    rng = np.random.default_rng(0)
    for split, n in zip(split_names, counts):
        for label, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = 40 + 3 * i, 30 + 2 * i
                px = np.empty((h, w, 3), dtype=np.uint8)
                px[..., 0] = rng.integers(0, 256, (h, w))
                px[..., 1] = 10 + 12 * (label * n + i)
                px[..., 2] = 30 + 60 * label
                Image.fromarray(px).save(root / split / c / f"{i}.png")
            (root / split / c / "notes.txt").write_text("not an image")
    return root


def load(root, **kw):
    return data_registry.load_dataset(DataConfig(name="imagenet", data_dir=str(root), image_size=32, **dict({"workers": 0}, **kw)))


def ids(x):
    """Image index in its split, read from the constant green channel (resampling may round by 1)."""
    return ((x[:, 1].mean(dim=(1, 2)) - 10) / 12).round().long().tolist()


def epoch(ds, seed=0, batch=4, shard=(0, 1), gen=None):
    gen = gen or torch.Generator().manual_seed(seed)
    return list(ds.train_batches(batch, RAW, gen, shard=shard))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"))


def test_batches_shapes_labels_and_eval_order(folder):
    ds = load(folder)
    assert ds.classes == CLASSES and ds.num_classes == 3 and ds.num_train == 18
    assert ds.image_shape == (3, 32, 32) and ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    batches = epoch(ds)
    assert [len(y) for _, y in batches] == [4, 4, 4, 4, 2]  # the last partial batch too
    for x, y in batches:
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == "cpu" and y.device.type == "cpu"
        assert torch.equal((x[:, 2].mean(dim=(1, 2)) - 30) / 60, y.float())  # labels match the class folders
    assert sorted(i for x, _ in batches for i in ids(x)) == list(range(18))  # every image once
    norm = data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)
    assert next(iter(ds.train_batches(4, norm, torch.Generator())))[0].is_contiguous(memory_format=torch.channels_last)

    evals = list(ds.eval_batches(4, RAW))
    assert [tuple(x.shape) for x, _ in evals] == [(4, 3, 32, 32), (4, 3, 32, 32), (1, 3, 32, 32)]
    assert [i for x, _ in evals for i in ids(x)] == list(range(9))  # file order
    assert ds.test_y.dtype == torch.int64 and ds.test_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(torch.cat([y for _, y in evals]), ds.test_y)
    assert ds.to(torch.device("cpu")) is ds


def test_epochs_are_reproducible_from_the_generator_whatever_the_workers(folder):
    in_process, forked = load(folder, workers=0), load(folder, workers=2)
    first = epoch(in_process)
    gen = torch.Generator().manual_seed(0)
    for ds in (in_process, forked, forked):  # the forked loader's workers persist into the second epoch
        again = epoch(ds, gen=gen.manual_seed(0))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    second = epoch(forked, gen=gen)  # the generator moved on: another order and other crops
    assert [ids(x) for x, _ in second] != [ids(x) for x, _ in first]
    crops = {i: x[k, 0] for x, _ in first for k, i in enumerate(ids(x))}
    assert sum(not torch.equal(crops[i], x[k, 0]) for x, _ in second for k, i in enumerate(ids(x))) > 15


def test_shards_are_disjoint_and_cover_the_epoch(folder):
    ds = load(folder)
    parts = [epoch(ds, batch=4, shard=(rank, 2)) for rank in (0, 1)]
    assert [[len(y) for _, y in p] for p in parts] == [[2, 2, 2, 2, 1]] * 2  # 4 // 2 images per rank and step
    seen = [{i for x, _ in p for i in ids(x)} for p in parts]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(18))


def test_limit(folder, sample):
    ds = load(folder, train_limit=5, test_limit=4)
    assert ds.num_train == 5 and ds.test_y.tolist() == [0, 0, 0, 1]
    assert sorted(i for x, _ in epoch(ds) for i in ids(x)) == [0, 1, 2, 3, 4]
    assert [i for x, _ in ds.eval_batches(3, RAW) for i in ids(x)] == [0, 1, 2, 3]
    small = sample.limit(10, None)
    assert small.train_x.shape[0] == 10 and torch.equal(small.test_y, sample.test_y)


def test_train_stage_and_evaluate_run_on_the_stream(folder):
    ds = load(folder)
    torch.manual_seed(0)
    block, head = ConvBlock(3, 4), AuxHead(4, 4, 2, ds.num_classes)
    norm = data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)
    cfg = TrainConfig(batch_size=4, lr=0.05, schedule="linear", amp="off")
    stats = train_loop.train(train_loop.Chain([(block, head)]), ds, norm, cfg, 1 / 5, 0.05, "linear",
                             torch.device("cpu"), torch.Generator().manual_seed(0)).stats[0]
    assert stats.images == 4 and 0 < stats.train_loss < 5  # one step of 4 images
    acc, probs = train_evaluate.evaluate(nn.Sequential(), block, head, ds, norm, 4, torch.device("cpu"))
    assert probs.shape == (9, 3) and 0 <= acc <= 100


def test_layout_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match=r"the imagenet dataset needs --data-dir PATH \(expected DATA_DIR/train/"):
        data_registry.load_dataset(DataConfig(name="imagenet"))
    with pytest.raises(DataError, match="data folder .*nowhere does not exist"):
        load(tmp_path / "nowhere")
    only_val = make_folder(tmp_path / "only-val", ["val"], [1])
    with pytest.raises(DataError, match="only-val has no train/ folder"):
        load(only_val)
    with pytest.raises(DataError, match=r"no-val has no val/ folder .*test/ may stand for val/"):
        load(make_folder(tmp_path / "no-val", ["train"], [1]))
    assert load(make_folder(tmp_path / "test-split", ["train", "test"], [1, 2])).test_y.tolist() == [0, 0, 1, 1, 2, 2]
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "val").mkdir()
    with pytest.raises(DataError, match=r"flat/train holds no class folders \(expected DATA_DIR/train/<class>"):
        load(tmp_path / "flat")
    odd = make_folder(tmp_path / "odd", counts=[1, 1])
    (odd / "val" / "n04").mkdir()
    with pytest.raises(DataError, match="train/ and val/ have different class folders \\(3 vs 4, e.g. 'n04'"):
        load(odd)
    for c in CLASSES:
        for f in (tmp_path / "test-split" / "train" / c).glob("*.png"):
            f.unlink()
    with pytest.raises(DataError, match="test-split/train holds no images with extensions .bmp, .jpeg"):
        load(tmp_path / "test-split")


@pytest.mark.parametrize("classes,emptied,message", [
    (["n01"], None, "image folder {root}/train has 1 class (n01); a classifier needs at least two"),
    (CLASSES, "train/n02", "class 'n02' has no training images in {root}/train; every class needs images in "
                           "train/ and val/"),
    (CLASSES, "val/n03", "class 'n03' has no test images in {root}/val; every class needs images in train/ and val/"),
], ids=["one-class", "no-train-images", "no-val-images"])
def test_folders_that_cannot_train_are_refused_naming_the_class(tmp_path, classes, emptied, message):
    root = make_folder(tmp_path / "d", counts=[2, 1], classes=classes)
    if emptied:
        for f in (root / emptied).glob("*.png"):
            f.unlink()
    with pytest.raises(DataError) as e:
        load(root)
    assert str(e.value) == message.format(root=root)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named_in_one_line(tmp_path, workers):
    root = make_folder(tmp_path / "c", counts=[2, 1])
    (root / "train" / "n02" / "1.png").write_bytes(b"\x89PNG truncated")
    ds = load(root, workers=workers)
    with pytest.raises(DataError, match=r"^cannot decode image .*c/train/n02/1\.png: UnidentifiedImageError") as e:
        epoch(ds)
    assert "\n" not in str(e.value)
