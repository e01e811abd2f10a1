"""Does the streamed image-folder loader keep up with training a stage at 224x224?

    python benchmarks/stream.py --source ~/data/cifar10-jpeg [--images 2000] [--workers 2]
    python benchmarks/stream.py --data-dir ~/data/imagenet
Without --data-dir, writes a small ImageNet-layout folder into a temp dir: images from --source
(any <split>/<class>/*.jpg folder) upscaled to --size square and re-encoded as JPEG quality 90.
Then, one after the other (loader and training share the CPU's cores, so measuring them together
would measure neither):
  loader    images/s delivered by StreamDataset.train_batches (decode, RandomResizedCrop 224, flip,
            collate, normalise), after warm-up, with --workers worker processes and with none;
  training  images/s of stage 1 of the vgg11 plan (block + k=3 aux head, 1000 classes): forward,
            backward and SGD step on random 224x224 tensors, all cores.
Prints a CSV, then a summary line.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from common import stage_modules, time_it
from prunegreedy.data import base as data_base
from prunegreedy.data import registry as data_registry
from prunegreedy.nn import plans as models_plans
from prunegreedy.train import runtime
from prunegreedy.train import loop as train_loop
from prunegreedy.config import DataConfig
from prunegreedy.config import TrainConfig

CROP = 224


def make_folder(source: Path, out: Path, images: int, size: int) -> None:
    """`images` training images and a tenth as many validation images, spread over the classes."""
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    for split, n in (("train", images), ("val", max(1, images // 10))):
        src = source / split if (source / split).is_dir() else source / "train"
        for c in classes:
            (out / split / c).mkdir(parents=True)
            for f in sorted((src / c).iterdir())[: n // len(classes)]:
                with Image.open(f) as im:
                    im.convert("RGB").resize((size, size), Image.BICUBIC).save(out / split / c / f"{f.stem}.JPEG",
                                                                                 quality=90)


def loader_rate(root: Path, workers: int, batch: int, steps: int, warmup: int = 3) -> float:
    ds = data_registry.load_dataset(DataConfig(name="imagenet", data_dir=str(root), image_size=CROP, workers=workers))
    norm = data_base.Normalize(ds.mean, ds.std, torch.device("cpu"), channels_last=True)
    batches = ds.train_batches(batch, norm, torch.Generator().manual_seed(0))
    for _ in range(warmup):  # worker start-up and the first prefetch
        next(batches)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        n += len(next(batches)[1])
    return n / (time.perf_counter() - start)


def training_rate(batch: int, steps: int) -> float:
    plan = models_plans.make_plan("vgg11")
    prefix, block, head = stage_modules(plan, [s.width for s in plan], 0, classes=1000)
    x = torch.randn(batch, 3, CROP, CROP).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    opt = train_loop.make_optimizer([block, head], 0.01, TrainConfig())

    def step():
        loss = F.cross_entropy(head(block(prefix(x))), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch / time_it(step, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="image folder to build the test folder from, e.g. a CIFAR-10 JPEG copy")
    ap.add_argument("--data-dir", help="an existing ImageNet-layout folder (train/<class>/, val/<class>/)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256, help="side of the written JPEGs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12, help="timed batches (after warm-up)")
    args = ap.parse_args()
    if not (args.source or args.data_dir):
        ap.error("give --source (to build a folder) or --data-dir")

    runtime.setup(torch.device("cpu"), None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir or tmp)
        if not args.data_dir:
            start = time.perf_counter()
            make_folder(Path(args.source), root, args.images, args.size)
            print(f"# wrote {args.images} training JPEGs of {args.size}x{args.size} in {time.perf_counter() - start:.0f}s")
        loader = {w: loader_rate(root, w, args.batch, args.steps) for w in sorted({args.workers, 0})}
    trained = training_rate(args.batch, max(2, args.steps // 4))

    s, cores = models_plans.make_plan("vgg11")[0], os.cpu_count()
    print(f"# {cores} cores, {torch.get_num_threads()} torch threads; loader and training measured one after the "
          f"other: in a real run they share the cores")
    print("what,workers,batch,images_per_s")
    for w, rate in loader.items():
        print(f"loader ({CROP} crops),{w},{args.batch},{rate:.1f}")
    print(f"training vgg11 stage 1 ({s.block} block 3->{s.width} pool {s.pool}; {s.head} head k={s.k} width "
          f"{s.head_width}; fp32),0,{args.batch},{trained:.1f}")
    rate = loader[args.workers]
    print(f"summary: loader {rate:.0f} img/s vs training {trained:.0f} img/s: ratio {rate / trained:.2f} "
          f"({args.workers} workers; the {cores} cores are shared)")

if __name__ == "__main__":
    main()
