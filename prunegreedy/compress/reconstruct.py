"""Refit after a cut: every layer that lost input channels is solved again by least squares, so that
on a few training images its outputs match what they were before the cut (He et al., 2017, "Channel
pruning for accelerating very deep neural networks"; Luo et al., 2017, ThiNet). The rest of the
schedule then starts from a smaller loss of accuracy instead of repairing all of it by gradient.

Which layers: every ungrouped, zero-padded Conv2d and every Linear whose weight has fewer input channels after
the cut than before and as many outputs, found by comparing the model with a copy taken before the
cut, so it does not matter what the dependency graph coupled to what. A layer whose outputs were
cut too (a residual block's conv reading a cut stream, compress.scope all) has no full target to
match and stays as the cut left it. They are refit one after another in module order, each on the
inputs the already refit pruned model gives it.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

ROWS_PER_BATCH = 8192  # conv input patches kept per batch (positions sampled): bounds a large map's memory
RIDGE = 1e-3  # of the mean diagonal of the normal equations: keeps the solve stable when inputs are collinear


def shrunk_layers(before: nn.Module, after: nn.Module) -> list[str]:
    """Names of the Linear and the ungrouped, zero-padded Conv2d layers of `after` that read fewer
    inputs than in `before` and give as many outputs."""
    old = dict(before.named_modules())
    return [name for name, m in after.named_modules()
            if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
                                             and not isinstance(m.padding, str)))
            and name in old and m.weight.shape[1] < old[name].weight.shape[1]
            and m.weight.shape[0] == old[name].weight.shape[0]]


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


def _rows(layer: nn.Module, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as rows whose product with its flattened weight gives its outputs (no bias):
    a Linear's inputs, or a conv's input patches at `positions` (flat output positions; None: all)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if positions is None:
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (N, C*k*k, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    ow = _out_size(layer, x)[1]
    i, j = positions // ow * sh, positions % ow * sw
    xp = F.pad(x, (pw, pw, ph, ph))
    taps = [xp[:, :, i + a * dh, j + b * dw] for a in range(kh) for b in range(kw)]  # each (N, C, P)
    # (N, C, k*k, P) -> rows of C*k*k, channel-major like unfold and the flattened weight
    return torch.stack(taps, 2).permute(0, 3, 1, 2).reshape(-1, x.shape[1] * kh * kw)


def _out_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """The conv's output height and width for input x."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(x.shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation))


def _positions(layer: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
    """A sample of a conv's output positions, the same for every image, so a batch gives at most
    ROWS_PER_BATCH rows (None: all of them, or a Linear)."""
    if isinstance(layer, nn.Linear):
        return None
    oh, ow = _out_size(layer, x)
    keep = max(1, ROWS_PER_BATCH // len(x))
    if oh * ow <= keep:
        return None
    return torch.randperm(oh * ow, generator=gen)[:keep].to(x.device)


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
            a_in, b_in = _input_of(after, new, x), _input_of(before, old, x)
            at = _positions(new, a_in, gen)  # the same positions in both
            a, b = _rows(new, a_in, at), _rows(old, b_in, at)
            target = b @ w_old.T
            gram = a.T @ a if gram is None else gram + a.T @ a
            cross = a.T @ target if cross is None else cross + a.T @ target
        if gram is None:
            raise ValueError("refit needs at least one batch")
        ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
        solved = torch.linalg.solve(gram + ridge * torch.eye(len(gram), device=gram.device), cross)
        new.weight.copy_(solved.T.reshape(new.weight.shape).to(new.weight.dtype))
    return names
