"""Command line: `prunegreedy run | ...`. The only module that talks to the terminal.

User mistakes (PrunegreedyError) end as one line on stderr and exit code 2; `--debug` shows
the traceback instead.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

from .errors import ConfigError, PrunegreedyError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Greedy layerwise CNN training with compression after every stage.")



@app.callback()
def _root() -> None:
    """Greedy layerwise CNN training with compression after every stage."""


class ConsoleUI:
    """Log lines to the terminal; rich progress bars unless quiet (the library keeps log.txt)."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(highlight=False)
        self.quiet = quiet

    def log(self, msg: str) -> None:
        self.console.print(msg, markup=False, soft_wrap=True)

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


# Options that `run` and `sweep` share, declared once.
Config_ = Annotated[Optional[str], typer.Option("--config", "-c", help="Recipe name (see configs/) or YAML file.")]
Dataset_ = Annotated[Optional[str], typer.Option(help="cifar10, cifar10-sample, imagefolder or imagenet.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Local dataset folder (never downloaded if given).")]
K = Annotated[Optional[int], typer.Option(help="Hidden layers of every aux head's problem (heads that take k).")]
Epochs = Annotated[Optional[str], typer.Option(help="Epochs per stage: one number or a comma list.")]
Importance = Annotated[Optional[str], typer.Option(help="Pruning criterion: l1, l2, bn, taylor, random.")]
Trainer = Annotated[Optional[str], typer.Option(help="greedy (default), decoupled (every block at once), end-to-end "
                                                     "(the baseline; with pruning: prune-after-training) or compress "
                                                     "(a trained network, --weights, stage by stage).")]
Model = Annotated[Optional[str], typer.Option("--model", help="The network instead of the recipe's: cifar10-k2, "
                                                              "vgg11, resnet20, torchvision:NAME, a registered name, "
                                                              "or your own module as MODULE:FACTORY (mynets:MyNet).")]
Split = Annotated[Optional[str], typer.Option(help="Module names ending the model's stages, comma separated "
                                                   "(default: the model's own, else where its map shrinks).")]
Weights = Annotated[Optional[Path], typer.Option(help="Trained weights of --model for --trainer compress: safetensors "
                                                     "or a state dict (read with weights_only=True).")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps.")]
Seed = Annotated[Optional[int], typer.Option()]
Sets = Annotated[Optional[List[str]], typer.Option("--set", help="Override any config field: key.sub=value.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Log lines only, no progress bars.")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks.")]
TargetMacs = Annotated[Optional[str], typer.Option(help="Budget: final backbone MACs, a count (40M) or a fraction of "
                                                        "the unpruned plan (0.25x); the ratios are chosen.")]
TargetParams = Annotated[Optional[str], typer.Option(help="Budget: final backbone parameters (100K, 0.25x).")]
PruneRatio = Annotated[Optional[float], typer.Option(help="Fraction of each block's filters to prune, [0, 1).")]
PruneRatios = Annotated[Optional[str], typer.Option(help="One ratio per stage, comma separated.")]
Name = Annotated[Optional[str], typer.Option(help="Run name under runs/.")]


def _interruptible(fn, *args, **kwargs):
    """Stopped by SIGTERM (exit 143) or Ctrl-C (130): the library has said how to resume."""
    from .train.stop import EXIT_CODES, Stopped

    try:
        return fn(*args, **kwargs)
    except Stopped as e:
        raise typer.Exit(EXIT_CODES.get(e.signum, 130))
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command()
@user_errors
def run(
    config: Config_ = None, dataset: Dataset_ = None, data_dir: DataDir = None, k: K = None, epochs: Epochs = None,
    prune_ratio: PruneRatio = None, prune_ratios: PruneRatios = None,
    target_macs: TargetMacs = None, target_params: TargetParams = None, importance: Importance = None,
    trainer: Trainer = None, model: Model = None, split: Split = None, weights: Weights = None, device: Device = None,
    seed: Seed = None,
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<name>)."),
    name: Name = None, set_: Sets = None, quiet: Quiet = False,
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run from its last finished stage."),
    debug: Debug = False,
) -> None:
    """Train a network greedily, one stage at a time, compressing each new block."""
    from . import api

    ui = ConsoleUI(quiet)
    options = dict(config=config, dataset=dataset, k=k, epochs=epochs, prune_ratio=prune_ratio,
                   prune_ratios=prune_ratios, importance=importance, device=device, seed=seed, out=out, name=name,
                   set=set_, trainer=trainer, target_macs=target_macs, target_params=target_params, model=model,
                   split=split, weights=weights)
    if resume is not None:
        given = [n for n, v in options.items() if v not in (None, [])]
        if given:
            raise ConfigError(f"--resume continues with the run's saved config; drop --{given[0]}")
        _interruptible(api.resume, resume, data_dir, ui=ui)
        return
    _interruptible(api.fit, data_dir=data_dir, quiet=quiet, ui=ui, **options)


@app.command("plan")
@user_errors
def plan_cmd(
    config: Config_ = None, dataset: Dataset_ = None, data_dir: DataDir = None, k: K = None, epochs: Epochs = None,
    prune_ratio: PruneRatio = None, prune_ratios: PruneRatios = None,
    target_macs: TargetMacs = None, target_params: TargetParams = None, importance: Importance = None,
    trainer: Trainer = None, model: Model = None, split: Split = None, weights: Weights = None, device: Device = None,
    seed: Seed = None,
    out: Optional[Path] = typer.Option(None, help="New or empty folder for plan.csv (default: nothing written)."),
    name: Name = None, set_: Sets = None, quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Show how `run` with the same options splits the network, what each cut touches and what it
    costs (params, MACs), before any training: the stages are built and cut on untrained weights."""
    from . import api

    api.plan(config, out, dataset=dataset, data_dir=data_dir, k=k, epochs=epochs, prune_ratio=prune_ratio,
             prune_ratios=prune_ratios, importance=importance, device=device, seed=seed, name=name, set=set_,
             trainer=trainer, target_macs=target_macs, target_params=target_params, model=model, split=split,
             weights=weights, ui=ConsoleUI(quiet))


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
    config: Config_ = None, dataset: Dataset_ = None, data_dir: DataDir = None, k: K = None, epochs: Epochs = None,
    importance: Importance = None, trainer: Trainer = None, model: Model = None, split: Split = None,
    device: Device = None, seed: Seed = None, set_: Sets = None, quiet: Quiet = False, debug: Debug = False,
) -> None:
    """Run the recipe once per prune ratio (or budget) into OUT, then compare them in OUT/report.html.

    Ratios whose run already finished are skipped, so rerunning the same command resumes a sweep.
    """
    from . import api

    _interruptible(api.sweep, out, config, prune_ratios=prune_ratios, target_macs=target_macs,
                   target_params=target_params, dataset=dataset, data_dir=data_dir, k=k, epochs=epochs,
                   importance=importance, trainer=trainer, model=model, split=split, device=device, seed=seed,
                   set=set_, quiet=quiet, ui=ConsoleUI(quiet))


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
    model: Optional[str] = typer.Option(None, "--model", help="A run of your own module: MODULE:FACTORY (e.g. "
                                        "mynets:MyNet), imported and called for a fresh, unpruned instance."),
    debug: bool = typer.Option(False, help="Show tracebacks."),
) -> None:
    """Export a run's network for inference: BatchNorm folded, outputs checked on real images."""
    from .deploy.export import export_run
    from .deploy.quantize import DEFAULT_CALIBRATION
    from .errors import ExportError
    from .nn.models import import_module_factory

    if not int8 and (calibration is not None or data_dir is not None):
        raise ExportError(f"--{'calibration' if calibration is not None else 'data-dir'} applies to --int8 exports")
    n = (DEFAULT_CALIBRATION if calibration is None else calibration) if int8 else None
    fresh = import_module_factory(model) if model is not None else None
    r = export_run(run_dir, out, format_, with_head, calibration=n, data_dir=data_dir, model=fresh)
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
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
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
