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

from ..config import RECIPE_DIR, Config, as_list, load, per_stage
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
                f"after each stage{refit}, then {_finetune(c)} epoch(s) of fine-tuning")
    if c.hook == "none" or (c.ratio == 0 and not c.ratios):
        return "unpruned"
    ratio = ",".join(f"{r:g}" for r in c.ratios) if c.ratios else f"{c.ratio:g}"
    if cfg.train.trainer == "compress":
        kd = (f", distilled from the original's logits (weight {per_stage(c.distill)})"
              if max(as_list(c.distill)) > 0 else "")
        kd += f", with the labels (weight {per_stage(c.labels)})" if max(as_list(c.labels)) > 0 else ""
        tail = f", then {c.finetune_all_epochs:g} epoch(s) of the whole network" if c.finetune_all_epochs else ""
        return (f"a trained network pruned by {ratio} ({c.importance}) stage by stage{refit}, each stage fine-tuned "
                f"{_finetune(c)} epoch(s) to the original's features{kd}{tail}")
    if c.at < 1:
        how = f"{c.cuts} cuts up to" if c.cuts > 1 else "a cut at"
        kd = f", distilled from the uncut block (weight {per_stage(c.distill)})" if max(as_list(c.distill)) > 0 else ""
        ft = f", then {_finetune(c)} epoch(s) of fine-tuning" if _tunes(c) else ", no fine-tuning"
        return f"pruned by {ratio} ({c.importance}) inside each stage's schedule ({how} {c.at:g} of it{refit}{kd}{ft})"
    return (f"pruned by {ratio} ({c.importance}) after each stage{refit}, then {_finetune(c)} epoch(s) of "
            f"fine-tuning")


def _epochs(c) -> float | list[float]:
    """compress.finetune_epochs as given (one value, or one per stage), or its default where unset."""
    return c.finetune_epochs if c.finetune_epochs is not None else c.finetune()


def _finetune(c) -> str:
    return per_stage(_epochs(c))


def _tunes(c) -> bool:
    """Whether any stage is fine-tuned after its cut."""
    return max(as_list(_epochs(c))) > 0


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
    """`recipe NAME: METHOD; recorded ...`: the accuracy and minutes one run measured on a machine
    of this kind, named as that machine (the time on this one follows from its first steps, Pace)."""
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
    return (f"{line}; recorded: {figure['acc']:.1f} % test accuracy, in {figure['minutes']:g} min on "
            f"{MACHINES[kind]} ({figure['how']}); the time on this machine follows from its first steps")


class Pace:
    """The run's minutes at this machine's speed, from its first `STEPS` training steps.

    Each stage's cost per image comes from the plan's MACs (trainers.plan_table): the frozen stages
    before it run forward, the stage and its head forward and backward (3x); the fine-tuning after a
    cut on the cut widths. The first steps of stage 1 give the MACs per second of this machine,
    whatever it is, so the figure needs no table of machines."""

    STEPS = 20

    def __init__(self, cfg: Config, planned, num_train: int):
        """For the greedy trainer (one stage at a time) on `planned`, the run's RunPlan."""
        from ..train.loop import steps_of

        c, n = cfg.compress, len(planned.stages)
        batch = cfg.train.batch_size
        self.work = []  # (steps, MACs per step) of every phase, in order
        for j, s in enumerate(planned.stages):
            prefix = s.macs_backbone - s.macs
            epochs = cfg.stage_value(cfg.train.epochs, 1.0, j, n)
            self.work.append((steps_of(epochs, num_train, batch), batch * (prefix + 3 * (s.macs + s.head_macs))))
            if s.ratio > 0 and c.hook != "none" and c.finetune(j) > 0:
                tuned = prefix + 3 * (s.macs_after + s.head_macs_after)
                self.work.append((steps_of(c.finetune(j), num_train, batch), batch * tuned))
        self._t0: float | None = None
        self._done = False

    def on_step(self, step: int, total: int) -> str | None:
        """Called at every step of the first phase: the line, once, after STEPS steps timed."""
        import time

        if self._done:
            return None
        if step == 1:  # the clock starts after the first step (it warms caches and allocators)
            self._t0 = time.perf_counter()
            return None
        if self._t0 is None or (step < self.STEPS + 1 and step < total):
            return None
        self._done = True
        per_mac = (time.perf_counter() - self._t0) / ((step - 1) * self.work[0][1])
        minutes = sum(steps * macs for steps, macs in self.work) * per_mac / 60
        shown = f"{minutes:.0f}" if minutes >= 10 else f"{minutes:.1f}"
        return (f"about {shown} min at this machine's speed ({step - 1} steps timed; the other stages scaled "
                f"by the plan's MACs)")
