"""What a run will do and what it measured before: the line a run starts with.

The figures come from `configs/measured.json` (one run of each CIFAR-10 recipe on the full data,
by the kind of machine). A run is quoted a figure only when it is the recipe as measured (the
recipe unpruned, or the recipe's own way of pruning by half) on that kind of machine; anything
else says there is no measured figure, rather than a guess.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..config import RECIPE_DIR, Config, load
from ..train.modes import autocast_dtype, has_fast_cpu_bf16

MEASURED = RECIPE_DIR / "measured.json"
MACHINES = {"gpu": "a GPU", "avx512-bf16": "a 2-core AVX-512 CPU with bf16", "cpu-fp32": "a 2-core AVX2 CPU (fp32)"}


def machine_kind(cfg: Config, device: torch.device) -> str:
    """gpu, avx512-bf16 (bf16 autocast on a CPU with native bf16) or cpu-fp32."""
    if device.type == "cuda":
        return "gpu"
    return "avx512-bf16" if autocast_dtype(cfg.train.amp, device) is not None and has_fast_cpu_bf16() else "cpu-fp32"


def method(cfg: Config) -> str:
    """How the run prunes, in words."""
    c = cfg.compress
    images = c.refit_images() if cfg.train.trainer in ("greedy", "compress") else 0  # the others never refit
    refit = f", the layers after each cut refit on {images:,} images" if images else ""
    if c.target_macs or c.target_params:
        return (f"pruned to a budget ({'MACs' if c.target_macs else 'params'} {c.target_macs or c.target_params}) "
                f"after each stage{refit}, then {c.finetune():g} epoch(s) of fine-tuning")
    if c.hook == "none" or (c.ratio == 0 and not c.ratios):
        return "unpruned"
    ratio = ",".join(f"{r:g}" for r in c.ratios) if c.ratios else f"{c.ratio:g}"
    if cfg.train.trainer == "compress":
        kd = f", distilled from the original's logits (weight {c.distill:g})" if c.distill > 0 else ""
        tail = f", then {c.finetune_all_epochs:g} epoch(s) of the whole network" if c.finetune_all_epochs else ""
        return (f"a trained network pruned by {ratio} ({c.importance}) stage by stage{refit}, each stage fine-tuned "
                f"{c.finetune():g} epoch(s) to the original's features{kd}{tail}")
    if c.at < 1:
        how = f"{c.cuts} cuts up to" if c.cuts > 1 else "a cut at"
        kd = f", distilled from the uncut block (weight {c.distill:g})" if c.distill > 0 else ""
        ft = f", then {c.finetune():g} epoch(s) of fine-tuning" if c.finetune() > 0 else ", no fine-tuning"
        return f"pruned by {ratio} ({c.importance}) inside each stage's schedule ({how} {c.at:g} of it{refit}{kd}{ft})"
    return (f"pruned by {ratio} ({c.importance}) after each stage{refit}, then {c.finetune():g} epoch(s) of "
            f"fine-tuning")


def _same(a: Config, b: Config) -> bool:
    """The same recipe as measured: model, training and compression settings (not data or run, and
    not train.amp: the precision is part of the kind of machine)."""
    return a.model == b.model and a.compress == b.compress and replace(a.train, amp="auto") == replace(b.train, amp="auto")


def measured_key(cfg: Config, recipe: str) -> str | None:
    """`unpruned` or `ratio-0.5` where cfg is the recipe as measured that way, else None."""
    name = Path(recipe).stem
    if not (RECIPE_DIR / f"{name}.yaml").exists():
        return None
    plain = load(name)
    if _same(cfg, plain) and method(plain) == method(cfg):
        return "ratio-0.5" if plain.compress.hook == "prune" and plain.compress.ratio == 0.5 else "unpruned"
    half = load(name, {"compress": {"hook": "prune", "ratio": 0.5}})
    return "ratio-0.5" if _same(cfg, half) else None


def start_line(cfg: Config, recipe: str, device: torch.device) -> str:
    """`recipe NAME: METHOD; expect ...` from the measured figures for this kind of machine."""
    kind = machine_kind(cfg, device)
    name = Path(recipe).stem
    table = json.loads(MEASURED.read_text())
    entry = table.get(name)
    if isinstance(entry, str):  # a recipe that is another one pruned: the same figures
        name, entry = entry, table.get(entry)
    key = measured_key(cfg, name) if entry else None
    figure = (entry or {}).get(key or "", {}).get(kind)
    line = f"recipe {Path(recipe).stem}: {method(cfg)}"
    if figure is None:
        known = ", ".join(MACHINES[k] for k in (entry or {}).get(key or "", {})) if key else ""
        why = f"measured only on {known}" if known else "no measured figure for these settings"
        return f"{line}; {why}"
    return (f"{line}; expect about {figure['acc']:.1f} % test accuracy in about {figure['minutes']:g} min on "
            f"{MACHINES[kind]} ({figure['how']})")
