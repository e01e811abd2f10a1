"""Test accuracy of a stage's head, and the paper's ensemble of every stage's head."""
from __future__ import annotations

import torch
from torch import nn

from ..data.base import Dataset, Normalize
from .modes import autocast, eval_mode


@torch.no_grad()
def evaluate(prefix: nn.Module, block: nn.Module, head: nn.Module, ds: Dataset, norm: Normalize,
             batch_size: int, device: torch.device, amp: torch.dtype | None = None) -> tuple[float, torch.Tensor]:
    """Test accuracy (%) of head(block(prefix(x))) on the whole test split, and its softmax (on CPU)."""
    logits = []
    with eval_mode(prefix, block, head):
        for xb, _ in ds.eval_batches(batch_size, norm):
            with autocast(device, amp):
                logits.append(head(block(prefix(xb))).float().cpu())
    out = torch.cat(logits)
    return accuracy(out, ds.test_y), out.softmax(1)  # accuracy from logits: softmax can tie in float32


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of logits or probabilities."""
    return 100.0 * (scores.argmax(1) == labels.cpu()).sum().item() / len(labels)


def ensemble_accuracy(stage_probs: list[torch.Tensor], labels: torch.Tensor) -> float:
    """The paper's ensemble of all stage heads: softmaxes weighted by 2^j (j = 1..J)."""
    weights = torch.tensor([2.0 ** j for j in range(1, len(stage_probs) + 1)])
    mix = sum(w * p for w, p in zip(weights / weights.sum(), stage_probs))
    return accuracy(mix, labels)
