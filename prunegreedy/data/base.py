"""The dataset interface and what every dataset shares: batches, batched augmentation, normalisation.

Training batches are slices of a permutation; crop and flip are done on the whole batch with
tensor indexing, so there are no per-sample transforms and no worker processes. Both kinds of
dataset (cached uint8 tensors here, streamed folders in data.stream) hand out uint8 batches that
`Normalize` turns into float on the training device.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from .augment import Augment, alternate_half


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

    def split_holdout(self, n: int, seed: int) -> tuple["Dataset", "Holdout"]:
        """(training part, held-out part): n training images, stratified by class, drawn with `seed`.

        Each class gives its share of n (largest remainders, ties to the lower class index); which of
        its images go is a seeded permutation. Both parts keep the original order; test is untouched.
        """
        total = self.num_train
        if not 0 < n < total:
            raise ValueError(f"holdout must be in [1, {total - 1}], got {n}")
        y = self.train_y.cpu()
        counts = torch.bincount(y, minlength=self.num_classes).tolist()
        exact = [n * c / total for c in counts]
        share = [int(e) for e in exact]
        by_remainder = sorted(range(len(counts)), key=lambda c: (-(exact[c] - share[c]), c))
        for c in by_remainder[:n - sum(share)]:
            share[c] += 1
        gen = torch.Generator().manual_seed(seed)
        held = torch.zeros(total, dtype=torch.bool)
        for c, k in enumerate(share):
            idx = torch.nonzero(y == c).flatten()
            held[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
        keep = torch.nonzero(~held).flatten().to(self.train_y.device)
        out = torch.nonzero(held).flatten()
        dev = out.to(self.train_y.device)
        train = replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep])
        return train, Holdout(self.train_x[dev], self.train_y[dev], out)

    def train_batches(self, batch_size: int, norm: "Normalize", generator: torch.Generator,
                      shard: tuple[int, int] = (0, 1), skip: int = 0, aug: Augment | None = None,
                      epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return train_batches(self.train_x, self.train_y, batch_size, norm, generator, shard=shard, skip=skip,
                             aug=aug, epoch=epoch)

    def eval_batches(self, batch_size: int, norm: "Normalize") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.test_x, self.test_y, batch_size, norm)


@dataclass
class Holdout:
    """Training images held out of every gradient step, for the decisions a run takes from data
    (sensitivity, budgeted ratios). uint8 like the dataset; evaluated without augmentation."""
    x: torch.Tensor  # (n, 3, H, W) uint8
    y: torch.Tensor  # (n,) int64
    indices: torch.Tensor  # their indices in the (limited) training split, sorted, on the CPU

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Holdout":
        return Holdout(self.x.to(device), self.y.to(device), self.indices)

    def eval_batches(self, batch_size: int, norm: "Normalize") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.x, self.y, batch_size, norm)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`. The random draws stay on the host generator (the same numbers on
    every device); to a GPU they go through pinned memory without blocking, since a plain copy from
    pageable memory makes the host wait for every kernel queued before it, once per batch."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding `pad` and horizontal flip, for a whole uint8 batch at once."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), x.device)
    dx = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), x.device)
    flip = to_device(torch.rand(n, generator=generator) < 0.5, x.device)
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


def skip_crop_flip(n: int, pad: int, generator: torch.Generator) -> None:
    """The random draws of random_crop_flip for n images, without the images."""
    torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    torch.rand(n, generator=generator)


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, norm: Normalize, generator: torch.Generator,
                  augment: bool = True, shard: tuple[int, int] = (0, 1), skip: int = 0,
                  aug: Augment | None = None, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented, normalised batches (the last partial batch included).

    `shard = (rank, world)`: every rank draws the same global batch and augmentation (same
    generator state), then keeps images rank, rank + world, ...; so N processes see exactly the
    batches one process would. A last batch smaller than `world` is dropped on every rank alike.
    `skip`: leave out the first batches (a loop resumed part-way through the epoch), drawing their
    random numbers all the same, so the rest are exactly the batches the whole epoch would give.
    `aug`: the recipe's augmentation instead of random_crop_flip (None: the default), in epoch
    `epoch` (alternate flip: which half is mirrored; its half is fixed by the generator's seed).
    """
    rank, world = shard
    half = alternate_half(len(x), generator.initial_seed()) if aug is not None and aug.flip == "alternate" else None
    perm = to_device(torch.randperm(len(x), generator=generator), x.device)
    for i, start in enumerate(range(0, len(x), batch_size)):
        idx = perm[start:start + batch_size]
        if len(idx) < world:
            return
        if i < skip:
            if augment and aug is not None:
                aug.draw(len(idx), generator)
            elif augment:
                skip_crop_flip(len(idx), 4, generator)
            continue
        xb = x[idx]
        if augment and aug is not None:
            xb = aug(xb, idx, epoch, half, generator)
        elif augment:
            xb = random_crop_flip(xb, 4, generator)
        yield norm(xb[rank::world]), y[idx][rank::world]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, norm: Normalize):
    for start in range(0, len(x), batch_size):
        yield norm(x[start:start + batch_size]), y[start:start + batch_size]
