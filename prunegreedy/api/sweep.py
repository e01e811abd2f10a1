"""sweep: one run per prune ratio or budget into one folder, resumable, and the report comparing them."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..errors import ConfigError, PrunegreedyError
from .options import choose_recipe, overrides
from .run import Run, default_ui, resume, train_config

def _sweep_ratios(ratios) -> list[float]:
    text = ratios if isinstance(ratios, str) else ",".join(map(str, ratios))
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--prune-ratios expects numbers separated by commas, got '{text}'") from None
    names = [f"{r:g}" for r in out]
    if not out or len(set(names)) != len(names):
        raise ConfigError(f"--prune-ratios needs distinct ratios, got '{text}'")
    return out


def _sweep_budgets(budgets, kind: str) -> list[str]:
    from ..compress.budget import parse_budget

    text = budgets if isinstance(budgets, str) else ",".join(map(str, budgets))
    out = [t.strip() for t in text.split(",") if t.strip()]
    for b in out:
        parse_budget(b, kind)
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--target-{kind} needs distinct budgets separated by commas, got '{text}'")
    return out


def _slot(path: Path, cfg, ui) -> str:
    """What a sweep slot holds: "finished", "resume" (a run of this config that was stopped or
    killed), or "empty". Anything else there is moved aside, never deleted.

    A slot that another process is writing (locked) stops the sweep: moving it would break that run."""
    from ..fileio import read_json, read_yaml
    from ..records import RUN_FILE, RunLock, RunRecord

    RunLock.check_free(path)
    if RunRecord.is_run(path):
        try:
            status = read_json(path / RUN_FILE).get("status")
            if status == "finished":
                return "finished"
            if status in ("interrupted", "running") and config_mod.from_dict(
                    read_yaml(path / "config.yaml")).to_dict() == cfg.to_dict():
                return "resume"
        except (PrunegreedyError, AttributeError):  # damaged run.json or config: an unfinished leftover
            pass
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = path.with_name(f"{path.name}.partial-{stamp}"), 1
        while aside.exists():
            aside, n = path.with_name(f"{path.name}.partial-{stamp}-{n}"), n + 1
        path.rename(aside)
        ui.log(f"moved the unfinished leftover {path} aside to {aside}")
    return "empty"


def sweep(out: str | Path, config: str | None = None, *, prune_ratios=None, target_macs=None, target_params=None,
          dataset: Any = None, ui=None, **options) -> list[Run]:
    """The recipe once per prune ratio (or budget) into out/ratio-<r> (macs-<b>, params-<b>), then
    out/report.html comparing them. Slots whose run already finished are skipped and a stopped one
    is resumed, so calling it again resumes a sweep."""
    from ..report.tables import load_runs, write_report
    from ..trainers.registry import get_trainer

    out = Path(out)
    data = None
    if dataset is not None and not isinstance(dataset, str):
        data, dataset = dataset, dataset.name
    given = [v for v in (prune_ratios, target_macs, target_params) if v is not None]
    if len(given) != 1:
        raise ConfigError("sweep needs exactly one of --prune-ratios, --target-macs, --target-params")
    ui = ui or default_ui(options.get("quiet"))
    recipe = choose_recipe(config, dataset, options.get("device") or "auto", ui)
    jobs = []
    if prune_ratios is not None:
        for r in _sweep_ratios(prune_ratios):
            path = out / f"ratio-{r:g}"
            over = overrides(dataset=dataset, prune_ratio=r, out=path, **options)
            over["compress"]["ratios"] = None  # the sweep's ratio replaces a per-stage list from the recipe
            if r == 0:
                over["compress"]["hook"] = "none"
            jobs.append((f"ratio {r:g}", path, over))
    else:
        kind = "macs" if target_macs is not None else "params"
        for b in _sweep_budgets(given[0], kind):
            path = out / f"{kind}-{b}"
            over = overrides(dataset=dataset, out=path, **{f"target_{kind}": b}, **options)
            jobs.append((f"{kind} {b}", path, over))
    jobs = [(label, path, config_mod.load(recipe, over)) for label, path, over in jobs]
    for _, _, cfg in jobs:
        get_trainer(cfg)  # every run's config is checked before hours go into the first one
    for label, path, cfg in jobs:
        slot = _slot(path, cfg, ui)
        if slot == "finished":
            ui.log(f"{label}: {path} already finished, skipped")
            continue
        ui.log(f"{label}: {'resuming' if slot == 'resume' else 'training into'} {path}")
        try:
            if slot == "resume":
                resume(path, cfg.data.data_dir, ui=ui)
            else:
                train_config(cfg, recipe, ui, data)
        except PrunegreedyError as e:
            raise type(e)(f"{label}: {e}; run the same sweep again to resume (finished runs are skipped)") from None
    runs = load_runs([path for _, path, _ in jobs])
    write_report(runs, out)
    if prune_ratios is None:
        for (label, _, _), r in zip(jobs, runs):  # the accuracy-versus-budget table, also in summary.csv
            b = r.meta.get("budget") or {}
            ui.log(f"{label}: final test acc {r.meta.get('final_acc', float('nan')):.2f}%  {b.get('kind')} "
                   f"{b.get('final', 0):,} of the target {b.get('target', 0):,} "
                   f"({'met' if b.get('met') else 'NOT met'})  ratios {b.get('ratios')}")
    ui.log(f"report: {out / 'report.html'}")
    return [Run(path) for _, path, _ in jobs]
