"""What the named options of fit, plan and sweep (the CLI's options) mean as config overrides,
and which recipe runs when none is named."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from .. import config as config_mod
from ..errors import ConfigError

# Shown when `dataset="cifar10"` picks a recipe by itself.
RECIPE_NOTES = {
    "cifar10-k2": "the paper's k=2 recipe (50 epochs per stage); a GPU is present; several hours on one GPU",
    "cifar10-fast": "the CPU recipe (airbench's net and training parts at 64/256/256, two stages, 8 epochs in all); "
                    "no GPU found",
}


def overrides(*, dataset=None, data_dir=None, k=None, epochs=None, prune_ratio=None, prune_ratios=None,
              target_macs=None, target_params=None, importance=None, trainer=None, device=None, seed=None,
              out=None, name=None, quiet=None, model=None, split=None, weights=None, set=None) -> dict:
    """The config overrides the named options stand for (the CLI's options, by name)."""
    over = _sets(set)
    _budget_overrides(over, prune_ratio, prune_ratios, target_macs, target_params)
    put = lambda sec, key, v: over.setdefault(sec, {}).__setitem__(key, v)  # noqa: E731
    if dataset is not None:
        put("data", "name", dataset)
    if data_dir is not None:
        put("data", "data_dir", str(data_dir))
    if k is not None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"--k must be a positive integer (hidden layers of each aux head), got {k}")
        put("model", "k", k)
    if epochs is not None:
        put("train", "epochs", ",".join(map(str, epochs)) if isinstance(epochs, (list, tuple)) else epochs)
    if trainer is not None:
        put("train", "trainer", trainer)
    if model is not None:
        put("model", "arch", model)
    if weights is not None:
        put("model", "weights", str(weights))
    if split is not None:
        put("model", "split", ",".join(split) if isinstance(split, (list, tuple)) else split)
    if prune_ratio is not None or prune_ratios is not None:
        over.setdefault("compress", {}).setdefault("hook", "prune")
    if prune_ratio is not None:
        put("compress", "ratio", prune_ratio)
    if prune_ratios is not None:
        put("compress", "ratios", ",".join(map(str, prune_ratios)) if isinstance(prune_ratios, (list, tuple))
            else prune_ratios)
    if importance is not None:
        put("compress", "importance", importance)
    if device is not None:
        put("run", "device", device)
    if seed is not None:
        put("run", "seed", seed)
    if out is not None:
        put("run", "out", str(out))
    if name is not None:
        put("run", "name", name)
    if quiet:
        put("run", "quiet", True)
    return over


def _sets(sets: dict | Iterable[str] | None) -> dict:
    """`set=`: {"train.lr": 0.05} or {"train": {"lr": 0.05}} from Python, ["train.lr=0.05"] from the CLI."""
    if not sets:
        return {}
    if isinstance(sets, dict):
        out: dict = {}
        for key, value in sets.items():
            parts = str(key).split(".")
            node = out
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = config_mod.merge(node.get(parts[-1], {}), value) if isinstance(value, dict) else value
        return out
    return config_mod.parse_set(list(sets))


def _budget_overrides(over: dict, prune_ratio, prune_ratios, target_macs, target_params) -> None:
    """--target-macs / --target-params: the budget replaces the recipe's ratios, never a ratio given here."""
    targets = [(n, v) for n, v in (("--target-macs", target_macs), ("--target-params", target_params)) if v is not None]
    if not targets:
        return
    if len(targets) == 2:
        raise ConfigError("give one budget: --target-macs or --target-params, not both")
    option, value = targets[0]
    given = [o for o, v in (("--prune-ratio", prune_ratio), ("--prune-ratios", prune_ratios)) if v is not None]
    given += [f"--set compress.{k}" for k in ("ratio", "ratios") if k in over.get("compress", {})]
    if given:
        raise ConfigError(f"{option} chooses every stage's prune ratio itself; drop {given[0]}")
    compress = over.setdefault("compress", {})
    compress.setdefault("hook", "prune")
    compress.setdefault("at", 1.0)  # the budget measures each trained block's sensitivity, so it cuts after training
    compress.update({"ratio": 0.0, "ratios": None, option[2:].replace("-", "_"): str(value)})


def choose_recipe(config: str | None, dataset: str | None, device: str, ui) -> str:
    """The recipe to run: the one named, or for cifar10 the one that suits the device (said in a line)."""
    if config is not None:
        return config
    if dataset == "cifar10":
        from ..train.runtime import resolve_device

        recipe = "cifar10-k2" if resolve_device(device).type == "cuda" else "cifar10-fast"
        ui.log(f"recipe: {recipe} - {RECIPE_NOTES[recipe]} (choose another with --config)")
        return recipe
    return "quick"


def run_path(cfg, recipe: str) -> Path:
    if cfg.run.out:
        return Path(cfg.run.out)
    ratio = ",".join(f"{r:g}" for r in cfg.compress.ratios) if cfg.compress.ratios else f"{cfg.compress.ratio:g}"
    budget = cfg.compress.target_macs or cfg.compress.target_params
    if budget is not None:
        ratio = f"{'macs' if cfg.compress.target_macs else 'params'}{budget}"
    name = cfg.run.name or f"{Path(recipe).stem}-r{ratio}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path("runs") / name
