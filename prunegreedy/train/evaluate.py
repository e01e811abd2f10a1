"""Test accuracy of a stage's head, and the paper's ensemble of every stage's head."""
from __future__ import annotations

import torch
from torch import nn

from ..data.base import Dataset, Normalize
from .loop import NonFiniteLoss
from .modes import autocast, eval_mode


class NonFiniteOutputs(NonFiniteLoss):
    """Test logits that are NaN or infinite: a run stops on them as on a non-finite loss."""


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
    if not torch.isfinite(out).all():  # argmax of NaN logits still gives an "accuracy"
        where = first_nonfinite(prefix, block, head, ds, norm, batch_size, device, amp)
        raise NonFiniteOutputs(f"eval-mode outputs became NaN or infinite, first at {where}; the training loss was "
                               f"finite, so the BatchNorm running statistics that eval mode uses do not fit the "
                               f"weights (too large a learning rate for the steps taken?)")
    return accuracy(out, ds.test_y), out.softmax(1)  # accuracy from logits: softmax can tie in float32


@torch.no_grad()
def first_nonfinite(prefix: nn.Module, block: nn.Module, head: nn.Module, ds: Dataset, norm: Normalize,
                    batch_size: int, device: torch.device, amp: torch.dtype | None = None) -> str:
    """'name (type)' of the first module of head(block(prefix(x))), in forward order over the test
    batches, whose output holds a NaN or infinity: leaf modules only, named as in their stage (a
    whole network's stages keep the model's qualified names; a Sequential prefix is its stages)."""
    found: list[str] = []

    def watch(label: str):
        def check(module: nn.Module, inputs, output) -> None:
            outs = output if isinstance(output, (tuple, list)) else (output,)
            if not found and any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
                                 for t in outs):
                found.append(f"{label} ({type(module).__name__})")
        return check

    stages = list(prefix.children()) if isinstance(prefix, nn.Sequential) else [prefix]
    parts = [(stage, "") for stage in [*stages, block]] + [(head, "the head's ")]
    handles = [m.register_forward_hook(watch(f"{owner}{name or type(m).__name__}"))
               for part, owner in parts for name, m in part.named_modules() if next(m.children(), None) is None]
    try:
        with eval_mode(prefix, block, head):
            for xb, _ in ds.eval_batches(batch_size, norm):
                with autocast(device, amp):
                    head(block(prefix(xb)))
                if found:
                    break
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else "an operation between modules"


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of logits or probabilities."""
    return 100.0 * (scores.argmax(1) == labels.cpu()).sum().item() / len(labels)


def ensemble_accuracy(stage_probs: list[torch.Tensor], labels: torch.Tensor) -> float:
    """The paper's ensemble of all stage heads: softmaxes weighted by 2^j (j = 1..J)."""
    weights = torch.tensor([2.0 ** j for j in range(1, len(stage_probs) + 1)])
    mix = sum(w * p for w, p in zip(weights / weights.sum(), stage_probs))
    return accuracy(mix, labels)
