"""The optimizer of every loop: SGD over parameter groups, and the learning rate of each group at a step.

A group carries, besides PyTorch's keys, `lr_mult` (BatchNorm biases: train.bn_bias_lr_mult) and
`until` (the epochs of the schedule it trains for: a whitening stem's bias, train.whiten_bias_epochs;
afterwards its lr is 0, so neither momentum nor weight decay move it). With train.lr_unit
per1024 the lr and weight decay are airbench's: per 1024 examples, momentum's gain taken out,
weight decay decoupled from the lr's value (it follows only the schedule).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from ..nn.layers import Whiten


def lr_scale(cfg: TrainConfig) -> float:
    """Factor from train.lr's unit to PyTorch SGD's lr on a batch's mean loss (1 for lr_unit step)."""
    if cfg.lr_unit == "step":
        return 1.0
    return cfg.batch_size / (1024 * (1 + 1 / (1 - cfg.momentum)))


def _group_of(module: nn.Module, name: str, p: torch.Tensor, cfg: TrainConfig) -> tuple[bool, float, float]:
    """(decayed, lr multiplier, epochs trained) of parameter `name` of `module` (its direct parameter)."""
    decayed = cfg.wd_on_bn_bias or p.ndim > 1
    bn_bias = isinstance(module, nn.modules.batchnorm._BatchNorm) and name == "bias"
    until = cfg.whiten_bias_epochs if isinstance(module, Whiten) and name == "bias" else None
    return decayed, cfg.bn_bias_lr_mult if bn_bias else 1.0, math.inf if until is None else until


def make_optimizer(modules: list[nn.Module], lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Nesterov or plain SGD with momentum over the trainable parameters of `modules`, in their order,
    decayed ones first (the groups without the recipe's options: decayed, then not decayed)."""
    groups: dict[tuple[bool, float, float], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for m in modules:
        for sub in m.modules():
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                groups.setdefault(_group_of(sub, name, p, cfg), []).append(p)
    order = sorted(groups, key=lambda k: not k[0])  # stable: decayed groups first
    out = []
    for decayed, mult, until in order:
        wd = cfg.weight_decay if decayed else 0.0
        if decayed and cfg.lr_unit == "per1024":
            wd = cfg.weight_decay / (lr * mult)  # times the group's lr: the decoupled decay per step
        out.append({"params": groups[(decayed, mult, until)], "weight_decay": wd, "lr_mult": mult, "until": until})
    if not out:
        out = [{"params": [], "weight_decay": cfg.weight_decay, "lr_mult": 1.0, "until": math.inf}]
    params = [p for g in out for p in g["params"]]
    # On a GPU the fused kernel updates every parameter in one launch; the CPU keeps the reference loop.
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.SGD(out, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused or None)


def set_rates(opt: torch.optim.Optimizer, rate: float, epochs_done: float) -> None:
    """Every group's lr at a step whose schedule gives `rate` (in SGD's unit), `epochs_done` into it."""
    for g in opt.param_groups:
        g["lr"] = rate * g.get("lr_mult", 1.0) if epochs_done < g.get("until", math.inf) else 0.0


def freeze_bn_scales(modules: list[nn.Module]) -> None:
    """BatchNorm scales fixed at 1 and left out of training (train.freeze_bn_scale)."""
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.weight is not None:
                with torch.no_grad():
                    sub.weight.fill_(1.0)
                sub.weight.requires_grad_(False)
