"""The recipe's batched augmentation: alternating flip and translation with reflect padding.

Both act on a whole batch (uint8 or float) by indexing: each output pixel reads a source pixel,
so translation and flip are one gather and no padded copy is made. Without the recipe's options
the loop keeps base.random_crop_flip (a coin per image, zero padding 4), draw for draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """What train_batches does to a training batch (train.flip, train.translate, train.translate_pad)."""
    flip: str = "random"  # random | alternate | off
    translate: int = 4  # pixels
    pad: str = "zeros"  # zeros | reflect

    @classmethod
    def of(cls, cfg) -> "Augment | None":
        """The augmentation a TrainConfig asks for; None for the default (random crop 4 + coin flip)."""
        aug = cls(cfg.flip, cfg.translate, cfg.translate_pad)
        return None if aug == cls() else aug

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(dy, dx, coin flips or None): the random numbers of one batch of n images."""
        t = self.translate
        dy = torch.randint(0, 2 * t + 1, (n,), generator=generator) if t else torch.full((n,), 0)
        dx = torch.randint(0, 2 * t + 1, (n,), generator=generator) if t else torch.full((n,), 0)
        coin = torch.rand(n, generator=generator) < 0.5 if self.flip == "random" else None
        return dy, dx, coin

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, epoch: int, half: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """The batch x of training images idx (indices into the split) in epoch `epoch`; `half` is
        alternate_half of the split (alternate flip only)."""
        dy, dx, coin = self.draw(len(x), generator)
        if self.flip == "alternate":
            flip = half[idx.cpu()] ^ bool(epoch % 2)
        elif self.flip == "random":
            flip = coin
        else:
            flip = torch.zeros(len(x), dtype=torch.bool)
        return translate_flip(x, dy - self.translate, dx - self.translate, flip, self.pad)


def alternate_half(n: int, seed: int) -> torch.Tensor:
    """(n,) bool: a fixed random half of the images (exactly n // 2), flipped on even epochs; the rest on odd."""
    half = torch.zeros(n, dtype=torch.bool)
    half[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n // 2]] = True
    return half


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices past an edge mirrored back inside, without repeating the edge (F.pad's 'reflect')."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def translate_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                   pad: str = "reflect") -> torch.Tensor:
    """Each image i moved by (dy[i], dx[i]) pixels (its content at row r goes to r - dy[i]), the
    uncovered border filled by `pad` (zeros | reflect), then mirrored left-right where flip[i]."""
    n, _, h, w = x.shape
    reach = int(max(dy.abs().max(), dx.abs().max())) if n else 0
    if pad == "reflect" and reach >= min(h, w):
        raise ConfigError(f"train.translate with reflect padding must be below the image side ({min(h, w)}), "
                          f"got {reach}")
    dev = x.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)  # (n, h): the source row of each output row
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=dev)[:, None, None]
    if pad == "reflect":
        src = x.permute(0, 2, 3, 1)
        return src[idx_n, _reflect(rows, h)[:, :, None], _reflect(cols, w)[:, None, :]].permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(x, (reach, reach, reach, reach)).permute(0, 2, 3, 1)
    return padded[idx_n, (rows + reach)[:, :, None], (cols + reach)[:, None, :]].permute(0, 3, 1, 2)
