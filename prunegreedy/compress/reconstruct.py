"""Refit after a cut: every layer that lost input channels is solved again by least squares, so that
on a few training images its outputs match what they were before the cut (He et al., 2017, "Channel
pruning for accelerating very deep neural networks"; Luo et al., 2017, ThiNet). The rest of the
schedule then starts from a smaller loss of accuracy instead of repairing all of it by gradient.

Which layers: every ungrouped Conv2d and every Linear whose weight has fewer input channels after
the cut than before, found by comparing the model with a copy taken before the cut, so it does not
matter what the dependency graph coupled to what. They are refit one after another in module
order, each on the inputs the already refit pruned model gives it.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

ROWS_PER_BATCH = 8192  # conv input patches kept per batch (sampled): bounds the memory of a large map
RIDGE = 1e-3  # of the mean diagonal of the normal equations: keeps the solve stable when inputs are collinear


def shrunk_layers(before: nn.Module, after: nn.Module) -> list[str]:
    """Names of the ungrouped Conv2d and the Linear layers of `after` that read fewer inputs than in `before`."""
    old = dict(before.named_modules())
    return [name for name, m in after.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "groups", 1) == 1 and name in old
            and m.weight.shape[1] < old[name].weight.shape[1]]


def _input_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `layer` receives when `model` runs on x (the model runs only as far as the layer)."""
    seen: list[torch.Tensor] = []

    def grab(module, args):
        seen.append(args[0].float())
        raise _Reached
    handle = layer.register_forward_pre_hook(grab)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the layer to refit is not reached by the model's forward")
    return seen[0]


class _Reached(Exception):
    """Stops a forward pass once the layer's input is seen."""


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows whose product with its flattened weight gives its outputs (no bias)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (N, C*k*k, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@torch.no_grad()
def refit(before: nn.Module, after: nn.Module, batches: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]],
          generator: torch.Generator | None = None) -> list[str]:
    """Refit the weights of every layer of `after` that lost inputs, to the outputs the same layer of
    `before` (the model as it was before the cut) gives on `batches` (model inputs); both run in
    their current mode, in float32. `batches` may be a function that returns a fresh iterable, as
    each layer needs its own pass. Returns the refit layers' names."""
    names = shrunk_layers(before, after)
    draw = batches if callable(batches) else (lambda b=list(batches): b)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    for name in names:
        old, new = before.get_submodule(name), after.get_submodule(name)
        w_old = old.weight.detach().float().flatten(1)
        gram = cross = None
        for x in draw():
            a, b = _rows(new, _input_of(after, new, x)), _rows(old, _input_of(before, old, x))
            if len(a) > ROWS_PER_BATCH:  # the same sampled positions in both
                pick = torch.randperm(len(a), generator=gen)[:ROWS_PER_BATCH].to(a.device)
                a, b = a[pick], b[pick]
            target = b @ w_old.T
            gram = a.T @ a if gram is None else gram + a.T @ a
            cross = a.T @ target if cross is None else cross + a.T @ target
        if gram is None:
            raise ValueError("refit needs at least one batch")
        ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
        solved = torch.linalg.solve(gram + ridge * torch.eye(len(gram), device=gram.device), cross)
        new.weight.copy_(solved.T.reshape(new.weight.shape).to(new.weight.dtype))
    return names
