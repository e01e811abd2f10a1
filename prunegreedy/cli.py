"""Command line: `prunegreedy run | ...`. The only module that talks to the terminal.

User mistakes (PrunegreedyError) end as one line on stderr and exit code 2; `--debug` shows
the traceback instead.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import config as config_mod
from .errors import PrunegreedyError, RunError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Greedy layerwise CNN training with compression after every stage.")



@app.callback()
def _root() -> None:
    """Greedy layerwise CNN training with compression after every stage."""


# Shown when `--dataset cifar10` picks a recipe by itself.
RECIPE_NOTES = {
    "cifar10-k2": "the paper's k=2 recipe (50 epochs per stage); a GPU is present; several hours on one GPU",
    "cifar10-cpu": "the CPU recipe (k=2 net at half width, pooled heads, 20 epochs in all); no GPU found; "
                   "about 15 minutes on a 2-core AVX-512 CPU (40 on an AVX2 one), ~81% test accuracy",
}


class ConsoleUI:
    """Log lines to the terminal and the run's log.txt; rich progress bars unless quiet."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(highlight=False)
        self.quiet = quiet
        self.run_dir = None

    def log(self, msg: str) -> None:
        self.console.print(msg, markup=False, soft_wrap=True)
        if self.run_dir is not None:
            self.run_dir.log(f"{time.strftime('%H:%M:%S')} {msg}")

    def progress(self, desc: str):
        if self.quiet or not self.console.is_terminal:  # a log file or CI gets the phase rows alone
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:5.1f}%"),
                       TimeRemainingColumn(), console=self.console, transient=True)
        state = {"task": None}

        def on_step(step: int, total: int, loss: float, acc: float) -> None:
            if state["task"] is None:
                bar.start()
                state["task"] = bar.add_task(desc, total=total, loss=loss, acc=acc)
            if step % 5 == 0 or step == total:
                bar.update(state["task"], completed=step, loss=loss, acc=acc)
            if step == total:
                bar.stop()

        return on_step


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def user_errors(command: Callable) -> Callable:
    """A user's mistake ends as one `error:` line and exit code 2; `--debug` shows the traceback."""
    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PrunegreedyError as e:
            if kwargs.get("debug"):
                raise
            _fail(str(e))
    return wrapper


def _choose_recipe(config: Optional[str], dataset: Optional[str], device: str, ui: ConsoleUI) -> str:
    if config is not None:
        return config
    if dataset == "cifar10":
        from .train.runtime import resolve_device

        recipe = "cifar10-k2" if resolve_device(device).type == "cuda" else "cifar10-cpu"
        ui.log(f"recipe: {recipe} - {RECIPE_NOTES[recipe]} (choose another with --config)")
        return recipe
    return "quick"


def _overrides(dataset, data_dir, k, epochs, prune_ratio, prune_ratios, importance, device, seed, out, name,
               quiet, sets, trainer=None, target_macs=None, target_params=None) -> dict:
    over = config_mod.parse_set(sets or [])
    _budget_overrides(over, prune_ratio, prune_ratios, target_macs, target_params)
    put = lambda sec, key, v: over.setdefault(sec, {}).__setitem__(key, v)  # noqa: E731
    if dataset is not None:
        put("data", "name", dataset)
    if data_dir is not None:
        put("data", "data_dir", str(data_dir))
    if k is not None:
        if k not in (1, 2, 3):
            raise config_mod.ConfigError(f"--k must be 1, 2 or 3, got {k}")
        put("model", "plan", f"cifar10-k{k}")
    if epochs is not None:
        put("train", "epochs", epochs)
    if trainer is not None:
        put("train", "trainer", trainer)
    if prune_ratio is not None or prune_ratios is not None:
        over.setdefault("compress", {}).setdefault("hook", "prune")
    if prune_ratio is not None:
        put("compress", "ratio", prune_ratio)
    if prune_ratios is not None:
        put("compress", "ratios", prune_ratios)
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


def _budget_overrides(over: dict, prune_ratio, prune_ratios, target_macs, target_params) -> None:
    """--target-macs / --target-params: the budget replaces the recipe's ratios, never a ratio given here."""
    targets = [(n, v) for n, v in (("--target-macs", target_macs), ("--target-params", target_params)) if v is not None]
    if not targets:
        return
    if len(targets) == 2:
        raise config_mod.ConfigError("give one budget: --target-macs or --target-params, not both")
    option, value = targets[0]
    given = [o for o, v in (("--prune-ratio", prune_ratio), ("--prune-ratios", prune_ratios)) if v is not None]
    given += [f"--set compress.{k}" for k in ("ratio", "ratios") if k in over.get("compress", {})]
    if given:
        raise config_mod.ConfigError(f"{option} chooses every stage's prune ratio itself; drop {given[0]}")
    compress = over.setdefault("compress", {})
    compress.setdefault("hook", "prune")
    compress.update({"ratio": 0.0, "ratios": None, option[2:].replace("-", "_"): value})


def _run_dir_path(cfg, recipe: str) -> Path:
    if cfg.run.out:
        return Path(cfg.run.out)
    ratio = ",".join(f"{r:g}" for r in cfg.compress.ratios) if cfg.compress.ratios else f"{cfg.compress.ratio:g}"
    budget = cfg.compress.target_macs or cfg.compress.target_params
    if budget is not None:
        ratio = f"{'macs' if cfg.compress.target_macs else 'params'}{budget}"
    name = cfg.run.name or f"{Path(recipe).stem}-r{ratio}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path("runs") / name


@app.command()
@user_errors
def run(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Recipe name (see configs/) or YAML file."),
    dataset: Optional[str] = typer.Option(None, help="cifar10, cifar10-sample, imagefolder or imagenet."),
    data_dir: Optional[Path] = typer.Option(None, help="Local dataset folder (never downloaded if given)."),
    k: Optional[int] = typer.Option(None, help="Hidden layers of the auxiliary problem: 1, 2 or 3."),
    epochs: Optional[str] = typer.Option(None, help="Epochs per stage: one number or a comma list."),
    prune_ratio: Optional[float] = typer.Option(None, help="Fraction of each block's filters to prune, [0, 1)."),
    prune_ratios: Optional[str] = typer.Option(None, help="One ratio per stage, comma separated."),
    target_macs: Optional[str] = typer.Option(None, help="Budget: final backbone MACs, a count (40M) or a fraction "
                                                         "of the unpruned plan (0.25x); the ratios are chosen."),
    target_params: Optional[str] = typer.Option(None, help="Budget: final backbone parameters (100K, 0.25x)."),
    importance: Optional[str] = typer.Option(None, help="Pruning criterion: l1, l2, bn, taylor, random."),
    trainer: Optional[str] = typer.Option(None, help="greedy (default), decoupled (every block at once) or end-to-end (the baseline; with "
                                                    "pruning: prune-after-training)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    seed: Optional[int] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<name>)."),
    name: Optional[str] = typer.Option(None, help="Run name under runs/."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any config field: key.sub=value."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log lines only, no progress bars."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run from its last finished stage."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Train a network greedily, one stage at a time, compressing each new block."""
    ui = ConsoleUI(quiet)
    if resume is not None:
        given = [n for n, v in dict(config=config, dataset=dataset, k=k, epochs=epochs, prune_ratio=prune_ratio,
                                    prune_ratios=prune_ratios, importance=importance, device=device, seed=seed,
                                    out=out, name=name, set=set_, trainer=trainer, target_macs=target_macs,
                                    target_params=target_params).items() if v not in (None, [])]
        if given:
            raise config_mod.ConfigError(f"--resume continues with the run's saved config; drop --{given[0]}")
        return _resume(resume, data_dir, ui)
    over = _overrides(dataset, data_dir, k, epochs, prune_ratio, prune_ratios, importance, device, seed, out,
                      name, quiet, set_, trainer, target_macs, target_params)
    recipe = _choose_recipe(config, dataset, device or "auto", ui)
    cfg = config_mod.load(recipe, over)
    _run(cfg, recipe, ui)


def _start(cfg, ui: ConsoleUI):
    """Device, process group (under torchrun) and CPU threads; ranks other than 0 stay silent."""
    from .train import distributed, runtime
    from .trainers.common import NullUI

    dist, dev = distributed.from_env(runtime.resolve_device(cfg.run.device), timeout=cfg.dist.timeout)
    runtime.setup(dev, cfg.run.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    return dist, dev, (ui if dist.is_main else NullUI())


def _run(cfg, recipe: str, ui: ConsoleUI) -> None:
    from .data.registry import load_dataset
    from .records import ReadOnlyRunDir, RunDir
    from .trainers.decisions import check_data as check_holdout
    from .trainers.registry import get_trainer

    trainer = get_trainer(cfg)
    dist, dev, ui = _start(cfg, ui)
    path = _run_dir_path(cfg, recipe)
    dist.on_main(lambda: RunDir.ensure_free(path))  # before minutes go into reading data
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data)
    ui.log(f"data: {ds.name}, {ds.num_train:,} train / {len(ds.test_y):,} test images "
           f"{'x'.join(map(str, ds.image_shape))}, loaded in {time.perf_counter() - t0:.1f}s")
    check_holdout(cfg, ds)  # a budget's held-out slice must leave training images (before the folder)
    dist.on_main(lambda: RunDir.create(path))
    run_dir = RunDir(path) if dist.is_main else ReadOnlyRunDir(path)
    dist.on_main(run_dir.hold)
    try:
        ui.run_dir = run_dir
        procs = f" x {dist.world} processes" if dist.enabled else ""
        ui.log(f"run folder: {run_dir.path}  device: {dev}{procs}  plan: {cfg.model.plan}  trainer: "
               f"{cfg.train.trainer}  hook: {cfg.compress.hook}")
        _train(trainer(cfg, run_dir, ds, dev, ui, dist), ui, dist)
    finally:
        run_dir.release()


def _resume(path: Path, data_dir: Optional[Path], ui: ConsoleUI) -> None:
    from .data.registry import load_dataset
    from .fileio import read_yaml
    from .records import ReadOnlyRunDir, RunDir
    from .trainers.registry import get_trainer

    if not RunDir.is_run(path):
        raise config_mod.ConfigError(f"{path} is not a run folder (no run.json)")
    cfg = config_mod.from_dict(read_yaml(path / "config.yaml"))
    if data_dir is not None:  # the data may have moved since; the check below compares them
        cfg.data.data_dir = str(data_dir)
    dist, dev, ui = _start(cfg, ui)
    run_dir = RunDir(path) if dist.is_main else ReadOnlyRunDir(path)
    dist.on_main(run_dir.hold)  # before minutes go into reading data
    try:
        ds = load_dataset(cfg.data)
        ui.run_dir = run_dir
        run = get_trainer(cfg).resume(run_dir, ds, dev, ui, dist)
        ui.log(f"resuming {path} after stage {len(run.net.blocks)}")
        _train(run, ui, dist)
    finally:
        run_dir.release()


def _mark_failed(run, reason: str) -> None:
    """run.json says `failed` with the reason (rank 0; other ranks write nothing)."""
    run.meta.update(status="failed", error=reason)
    run.run_dir.write_meta(run.meta)


def _train(run, ui: ConsoleUI, dist) -> None:
    """Run the training loop; Ctrl-C keeps the finished stages and says how to go on."""
    run_dir = run.run_dir
    resume_hint = f"{dist.launcher()} run --resume {run_dir.path}"
    run.meta.pop("error", None)  # a resumed run no longer carries the failure that stopped it
    try:
        with dist.guard(on_lost=lambda reason: _mark_failed(run, reason)):  # a lost process (train.distributed)
            run.run()
    except KeyboardInterrupt:
        ui.log(f"interrupted; {run.meta['stages_done']} finished stage(s) and the last end-of-epoch checkpoint "
               f"are saved. Resume with: {resume_hint}")
        raise typer.Exit(130)
    except RunError as e:  # e.g. the disk filled up: finished stages stay loadable
        raise RunError(f"{e}; {run.meta['stages_done']} finished stage(s) kept, resume with: {resume_hint}") from None
    finally:
        dist.close()
    ui.log(f"records: {run_dir.path / 'stages.csv'}")
    if not dist.is_main:
        return
    from .report.tables import load_runs, write_report

    write_report(load_runs([run_dir.path]), run_dir.path)
    ui.log(f"report: {run_dir.path / 'report.html'}")


@app.command()
@user_errors
def report(
    runs: List[Path] = typer.Argument(..., help="Run folders to compare (names are their folder names)."),
    out: Path = typer.Option(..., help="Folder for summary.csv, stages.csv and report.html."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Compare runs: summary.csv, stages.csv and one self-contained report.html."""
    from .report.tables import load_runs, write_report

    written = write_report(load_runs(runs), out)
    for path in written:
        typer.echo(str(path))


def _sweep_ratios(text: str) -> list[float]:
    try:
        ratios = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise config_mod.ConfigError(f"--prune-ratios expects numbers separated by commas, got '{text}'") from None
    names = [f"{r:g}" for r in ratios]
    if not ratios or len(set(names)) != len(names):
        raise config_mod.ConfigError(f"--prune-ratios needs distinct ratios, got '{text}'")
    return ratios


def _sweep_slot_done(path: Path, ui: ConsoleUI) -> bool:
    """True if `path` holds a finished run; an unfinished leftover is moved aside, never deleted.

    A slot that another process is writing (locked) stops the sweep: moving it would break that run."""
    from .fileio import read_json
    from .records import RUN_FILE, RunDir, RunLock

    RunLock.check_free(path)

    if RunDir.is_run(path):
        try:
            if read_json(path / RUN_FILE).get("status") == "finished":
                return True
        except (PrunegreedyError, AttributeError):  # damaged run.json: an unfinished leftover
            pass
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = path.with_name(f"{path.name}.partial-{stamp}"), 1
        while aside.exists():
            aside, n = path.with_name(f"{path.name}.partial-{stamp}-{n}"), n + 1
        path.rename(aside)
        ui.log(f"moved the unfinished leftover {path} aside to {aside}")
    return False


def _sweep_budgets(text: str, kind: str) -> list[str]:
    from .compress.budget import parse_budget

    budgets = [t.strip() for t in text.split(",") if t.strip()]
    for b in budgets:
        parse_budget(b, kind)
    if not budgets or len(set(budgets)) != len(budgets):
        raise config_mod.ConfigError(f"--target-{kind} needs distinct budgets separated by commas, got '{text}'")
    return budgets


@app.command()
@user_errors
def sweep(
    out: Path = typer.Option(..., help="Sweep folder: one run per ratio in ratio-<r>/ (per budget in macs-<b>/ or "
                                       "params-<b>/), the report beside them."),
    prune_ratios: Optional[str] = typer.Option(None, help="Ratios to compare, comma separated; 0 is the unpruned "
                                                          "reference (hook none)."),
    target_macs: Optional[str] = typer.Option(None, help="MACs budgets to compare instead, comma separated "
                                                         "(0.5x,0.25x,0.1x or 40M,20M)."),
    target_params: Optional[str] = typer.Option(None, help="Parameter budgets to compare instead (0.5x,100K)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Recipe name (see configs/) or YAML file."),
    dataset: Optional[str] = typer.Option(None, help="cifar10, cifar10-sample, imagefolder or imagenet."),
    data_dir: Optional[Path] = typer.Option(None, help="Local dataset folder (never downloaded if given)."),
    k: Optional[int] = typer.Option(None, help="Hidden layers of the auxiliary problem: 1, 2 or 3."),
    epochs: Optional[str] = typer.Option(None, help="Epochs per stage: one number or a comma list."),
    importance: Optional[str] = typer.Option(None, help="Pruning criterion: l1, l2, bn, taylor, random."),
    trainer: Optional[str] = typer.Option(None, help="greedy (default) or end-to-end (the baseline; with "
                                                    "pruning: prune-after-training)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    seed: Optional[int] = typer.Option(None),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any config field: key.sub=value."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log lines only, no progress bars."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Run the recipe once per prune ratio (or budget) into OUT, then compare them in OUT/report.html.

    Ratios whose run already finished are skipped, so rerunning the same command resumes a sweep.
    """
    from .report.tables import load_runs, write_report
    from .trainers.registry import get_trainer

    given = [(o, v) for o, v in (("prune_ratios", prune_ratios), ("target_macs", target_macs),
                                 ("target_params", target_params)) if v is not None]
    if len(given) != 1:
        raise config_mod.ConfigError("sweep needs exactly one of --prune-ratios, --target-macs, --target-params")
    ui = ConsoleUI(quiet)
    recipe = _choose_recipe(config, dataset, device or "auto", ui)
    jobs = []
    if prune_ratios is not None:
        for r in _sweep_ratios(prune_ratios):
            path = out / f"ratio-{r:g}"
            over = _overrides(dataset, data_dir, k, epochs, r, None, importance, device, seed, path, None, quiet,
                              set_, trainer)
            over["compress"]["ratios"] = None  # the sweep's ratio replaces a per-stage list from the recipe
            if r == 0:
                over["compress"]["hook"] = "none"
            jobs.append((f"ratio {r:g}", path, over))
    else:
        kind = "macs" if target_macs is not None else "params"
        for b in _sweep_budgets(given[0][1], kind):
            path = out / f"{kind}-{b}"
            targets = {"target_macs": b} if kind == "macs" else {"target_params": b}
            over = _overrides(dataset, data_dir, k, epochs, None, None, importance, device, seed, path, None, quiet,
                              set_, trainer, **targets)
            jobs.append((f"{kind} {b}", path, over))
    jobs = [(label, path, config_mod.load(recipe, over)) for label, path, over in jobs]
    for _, _, cfg in jobs:
        get_trainer(cfg)  # every run's config is checked before hours go into the first one
    for label, path, cfg in jobs:
        ui.run_dir = None  # sweep lines belong to no run's log.txt
        if _sweep_slot_done(path, ui):
            ui.log(f"{label}: {path} already finished, skipped")
            continue
        ui.log(f"{label}: training into {path}")
        try:
            _run(cfg, recipe, ui)
        except PrunegreedyError as e:
            raise PrunegreedyError(f"{label}: {e}; run the same sweep again to resume "
                                   "(finished runs are skipped)") from None
    ui.run_dir = None
    runs = load_runs([path for _, path, _ in jobs])
    write_report(runs, out)
    if prune_ratios is None:
        for (label, _, _), r in zip(jobs, runs):  # the accuracy-versus-budget table, also in summary.csv
            b = r.meta.get("budget") or {}
            ui.log(f"{label}: final test acc {r.meta.get('final_acc', float('nan')):.2f}%  {b.get('kind')} "
                   f"{b.get('final', 0):,} of the target {b.get('target', 0):,} "
                   f"({'met' if b.get('met') else 'NOT met'})  ratios {b.get('ratios')}")
    ui.log(f"report: {out / 'report.html'}")


@app.command("export")
@user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Run folder; its latest finished network is exported."),
    out: Path = typer.Option(..., "--out", help="New or empty folder for the export."),
    format_: str = typer.Option("native", "--format", help="native (safetensors + JSON spec), torchscript or onnx."),
    with_head: bool = typer.Option(False, "--with-head", help="Keep the final classifier head (default: features)."),
    int8: bool = typer.Option(False, "--int8", help="ONNX only: int8 static quantization (ONNX Runtime, QDQ, "
                                                   "per-channel weights), checked against fp32."),
    calibration: Optional[int] = typer.Option(None, help="--int8: training images to calibrate on (default 1,000)."),
    data_dir: Optional[Path] = typer.Option(None, help="--int8: the run's dataset folder, if it moved since training."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Export a run's network for inference: BatchNorm folded, outputs checked on real images."""
    from .deploy.export import export_run
    from .deploy.quantize import DEFAULT_CALIBRATION
    from .errors import ExportError

    if not int8 and (calibration is not None or data_dir is not None):
        raise ExportError(f"--{'calibration' if calibration is not None else 'data-dir'} applies to --int8 exports")
    n = (DEFAULT_CALIBRATION if calibration is None else calibration) if int8 else None
    r = export_run(run_dir, out, format_, with_head, calibration=n, data_dir=data_dir)
    what = "network with head" if r["with_head"] else "backbone (features only)"
    typer.echo(f"exported {r['format']} {what} to {r['out']}: {r['file']} {r['bytes']:,} bytes, "
               f"{r['params']:,} params; max abs diff vs trained {r['fold_max_diff']:.2g}, "
               f"{'fp32 ONNX ' if r['quantization'] else ''}vs PyTorch {r['export_max_diff']:.2g} on "
               f"{r['check_images']} images")
    q = r["quantization"]
    if q is not None:
        c, cal = q["check"], q["calibration"]
        vs = (f"top-1 agreement {100 * c['top1_agreement']:.2f} %, test acc {c['test_acc_int8']:.2f} % "
              f"(fp32 {c['test_acc_fp32']:.2f} %), " if "top1_agreement" in c
              else f"mean relative diff {c['mean_rel_diff']:.3g}, ")
        typer.echo(f"int8: calibrated on {cal['images']:,} {cal['dataset']} training images; "
                   f"{q['bytes'] / q['fp32_bytes']:.2f}x the fp32 file; vs fp32 on {c['images']:,} test images: "
                   f"{vs}max abs diff {c['max_abs_diff']:.3g}")


@app.command("eval")
@user_errors
def eval_cmd(
    exported: Path = typer.Argument(..., metavar="EXPORTED", help="Export folder (made with --with-head)."),
    dataset: str = typer.Option("cifar10-sample", help="cifar10, cifar10-sample or imagefolder."),
    data_dir: Optional[Path] = typer.Option(None, help="Local dataset folder (never downloaded if given)."),
    batch_size: int = typer.Option(500, help="Images per forward pass."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Test accuracy of an exported model, run in its own runtime."""
    from .config import DataConfig
    from .data.registry import load_dataset
    from .deploy.deployed import evaluate, open_export, require_head

    if batch_size < 1:
        raise config_mod.ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    model = require_head(open_export(exported))
    ds = load_dataset(DataConfig(name=dataset, data_dir=str(data_dir) if data_dir is not None else None))
    r = evaluate(model, ds, batch_size)
    typer.echo(f"test acc {r['acc']:.2f}% ({r['correct']:,}/{r['images']:,} images of {r['dataset']}, "
               f"{model.spec['format']} export)")
    source = model.spec["source"]
    if source.get("final_acc") is not None and source.get("dataset") == r["dataset"]:
        same = "equal" if source["final_acc"] == r["acc"] else "DIFFERENT"
        typer.echo(f"the run recorded {source['final_acc']:.2f}% on the same dataset ({same})")


@app.command("bench")
@user_errors
def bench_cmd(
    target: Path = typer.Argument(..., metavar="EXPORTED_OR_RUN", help="Export folder or run folder."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's default here)."),
    repeats: int = typer.Option(10, help="Timed repeats; the median is reported."),
    with_head: bool = typer.Option(False, "--with-head", help="Run folder: time the network with its final head."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """CPU inference latency (batch 1) and throughput (batch 64); saved as bench.json in that folder."""
    from .deploy.bench import bench_path

    r, path = bench_path(target, threads, repeats, with_head)
    head = " with head" if r["with_head"] else ""
    typer.echo(f"latency {r['latency_ms_batch1']:.3f} ms at batch 1, throughput {r['throughput_batch64']:,.0f} "
               f"images/s at batch 64 ({r['format']}{head}, threads {r['threads']}, median of {r['repeats']}); "
               f"saved {path}")


def main() -> None:
    import warnings

    # fvcore traces with TorchScript, which current torch flags as deprecated on every call.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
