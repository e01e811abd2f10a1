"""Test-time augmentation (airbench): logits averaged over the mirror image and one-pixel translations.

Reported beside the plain accuracy, never instead of it (run.json: final_acc_tta beside final_acc).
flip: the mean of the image's and its mirror's logits. flip-translate: half that, half the mean of
the same for the image moved one pixel up-left and one pixel down-right (reflect padding).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TTAS as TTA_LEVELS
from ..data.base import Dataset, Normalize
from ..errors import ConfigError
from .evaluate import accuracy
from .modes import autocast, eval_mode


def check_tta(level: str, image_shape: tuple[int, ...]) -> None:
    if level not in TTA_LEVELS:
        raise ConfigError(f"unknown train.tta '{level}'; valid: {', '.join(TTA_LEVELS)}")
    if level != "off" and image_shape[-1] != image_shape[-2]:
        raise ConfigError(f"train.tta {level} needs square images, got {image_shape[-2]}x{image_shape[-1]}; "
                          f"use train.tta off")


def _mirror(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return 0.5 * net(x).float() + 0.5 * net(x.flip(-1)).float()


def tta_logits(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, level: str) -> torch.Tensor:
    """The logits of `net` on batch x under test-time augmentation `level` (off: net(x))."""
    if level == "off":
        return net(x).float()
    logits = _mirror(net, x)
    if level == "flip":
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    moved = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
    return 0.5 * logits + 0.5 * torch.stack([_mirror(net, m) for m in moved]).mean(0)


@torch.no_grad()
def evaluate_tta(prefix: nn.Module, block: nn.Module, head: nn.Module, ds: Dataset, norm: Normalize,
                 batch_size: int, device: torch.device, amp: torch.dtype | None, level: str) -> float:
    """Test accuracy (%) of head(block(prefix(x))) under test-time augmentation `level`."""
    check_tta(level, ds.image_shape)
    net = lambda x: head(block(prefix(x)))  # noqa: E731
    logits = []
    with eval_mode(prefix, block, head):
        for xb, _ in ds.eval_batches(batch_size, norm):
            with autocast(device, amp):
                logits.append(tta_logits(net, xb, level).cpu())
    return accuracy(torch.cat(logits), ds.test_y)
