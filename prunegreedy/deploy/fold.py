"""BatchNorm folding: every conv + BN pair of a network in place, and its last head into a BN-free copy.

In eval mode BN is a per-channel affine map y = s * x + t (s = gamma / sqrt(var + eps),
t = beta - mean * s). After a conv it folds into the conv's weight and bias. The head's BN sits
after the average pool and before flatten + linear, so it folds into the linear layer: each
pooled cell of channel c is scaled by s_c and shifted by t_c. Folding is computed in float64
and stored as float32, so the only change is one rounding per weight. The VGG classifier head
has no BN and is copied as it is.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ExportError
from ..nn.heads import AuxHead, MaxHead, MLPSRHead, PooledHead, VGGHead


def bn_affine(bn: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float64 of an eval-mode BatchNorm; identity for nn.Identity."""
    if isinstance(bn, nn.Identity):
        return torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module, into: nn.Conv2d) -> None:
    """Write conv followed by bn into `into` (a conv of the same shape with a bias)."""
    scale, shift = bn_affine(bn, conv.out_channels)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    into.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    into.bias.copy_(bias * scale + shift)


@torch.no_grad()
def fold_bn_linear(bn: nn.Module, fc: nn.Linear, cells: int, into: nn.Linear) -> None:
    """Write bn (on C channels of `cells` pooled values each, flattened channel-major) then fc into `into`."""
    scale, shift = bn_affine(bn, fc.in_features // cells)
    scale, shift = scale.repeat_interleave(cells), shift.repeat_interleave(cells)
    w = fc.weight.double()
    into.weight.copy_(w * scale)
    into.bias.copy_(fc.bias.double() + w @ shift)


@torch.no_grad()
def fold_linear_bn(fc: nn.Linear, bn: nn.Module, into: nn.Linear) -> None:
    """Write fc followed by a BatchNorm1d into `into` (a linear of the same shape with a bias)."""
    scale, shift = bn_affine(bn, fc.out_features)
    bias = fc.bias.double() if fc.bias is not None else torch.zeros_like(scale)
    into.weight.copy_(fc.weight.double() * scale.view(-1, 1))
    into.bias.copy_(bias * scale + shift)


def _fold_body(body: nn.Sequential, into: nn.Sequential) -> None:
    """Each conv + BN pair of a head's hidden layers into the matching conv of the BN-free copy."""
    convs = [m for m in body if isinstance(m, nn.Conv2d)]
    bns = [m for m in body if isinstance(m, nn.BatchNorm2d)]
    targets = [m for m in into if isinstance(m, nn.Conv2d)]
    for conv, bn, target in zip(convs, bns, targets, strict=True):
        fold_conv_bn(conv, bn, target)


class FoldedAuxHead(nn.Module):
    """An AuxHead with its BatchNorms folded away: k-1 conv3x3(+bias)+ReLU, average pool, linear."""

    def __init__(self, in_channels: int, hidden: int, k: int, num_classes: int, pool: int,
                 in_size: tuple[int, int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(k - 1):
            layers += [nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(inplace=True)]
            c = hidden
        self.body = nn.Sequential(*layers)
        h, w = in_size
        # A fixed window equals the adaptive pool when the map divides evenly, and unlike it
        # exports to ONNX with a dynamic batch size.
        even = h % pool == 0 and w % pool == 0
        self.pool = nn.AvgPool2d((h // pool, w // pool)) if even else nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(c * pool * pool, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def fold_head(head: AuxHead, in_size: tuple[int, int]) -> FoldedAuxHead:
    spec = head.spec()
    out = FoldedAuxHead(spec["in_channels"], spec["hidden"], spec["k"], spec["num_classes"], spec["pool"], in_size)
    _fold_body(head.body, out.body)
    fold_bn_linear(head.bn, head.fc, head.pool_size ** 2, out.fc)
    return out


def fold_pooled_head(head: PooledHead, in_size: tuple[int, int]) -> PooledHead:
    """The same head type with bn False: the pools stay, every BN goes into the layer next to it."""
    out = PooledHead.from_spec({**head.spec(), "bn": False})
    _fold_body(head.body, out.body)
    fold_bn_linear(head.bn, head.fc, 4, out.fc)
    return out


def fold_mlp_sr_head(head: MLPSRHead, in_size: tuple[int, int]) -> MLPSRHead:
    out = MLPSRHead.from_spec({**head.spec(), "bn": False})
    _fold_body(head.body, out.body)
    fold_linear_bn(head.fc1, head.bn1, out.fc1)
    out.fc.load_state_dict(head.fc.state_dict())
    return out


def fold_max_head(head: MaxHead, in_size: tuple[int, int]) -> MaxHead:
    out = MaxHead.from_spec({**head.spec(), "bn": False})
    _fold_body(head.body, out.body)
    out.fc.load_state_dict(head.fc.state_dict())
    return out


# Folding by head type; a head type without an entry cannot be exported with the network.
HEAD_FOLDERS: dict[type, Callable[[nn.Module, tuple[int, int]], nn.Module]] = {
    AuxHead: fold_head, PooledHead: fold_pooled_head, MLPSRHead: fold_mlp_sr_head, MaxHead: fold_max_head,
    VGGHead: lambda head, in_size: copy.deepcopy(head)}


def _folder(table: dict, module: nn.Module) -> Callable:
    if type(module) not in table:
        raise ExportError(f"cannot fold a {type(module).__name__}; foldable: "
                          f"{', '.join(t.__name__ for t in table)}")
    return table[type(module)]


def fold_any_head(head: nn.Module, in_size: tuple[int, int]) -> nn.Module:
    """The BN-free copy of any registered head type (HEAD_FOLDERS), for the output size in_size."""
    return _folder(HEAD_FOLDERS, head)(head, in_size)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv, BatchNorm2d) module names where the BN reads the conv's output alone, from a torch.fx
    trace of the whole model; None when fx cannot trace it (its BatchNorms then stay)."""
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # fx raises TraceError, TypeError, NotImplementedError, ... by construct
        return None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    pairs = []
    for n in graph.nodes:
        src = n.args[0] if n.op == "call_module" and n.args else None
        if isinstance(modules.get(n.target), nn.BatchNorm2d) and getattr(src, "op", None) == "call_module" \
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1 \
                and calls[n.target] == calls[src.target] == 1:
            pairs.append((src.target, n.target))
    return pairs


@torch.no_grad()
def fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each BN into its conv in place (the conv gains a bias, the BN becomes nn.Identity), so
    the model keeps its own class and forward; eval-mode BN statistics are what is folded."""
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                           device=conv.weight.device, dtype=conv.weight.dtype)
        fold_conv_bn(conv, bn, folded)
        conv.weight.copy_(folded.weight)
        conv.bias = folded.bias
        parent, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
