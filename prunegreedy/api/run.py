"""fit, plan and resume: a run from the options to its finished folder, and the Run that reads it."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import config as config_mod
from ..errors import ConfigError, RunError
from .options import choose_recipe, overrides, run_path

class PrintUI:
    """Log lines on stdout, no progress bars: the default UI from Python."""

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def progress(self, desc: str):
        return None


def default_ui(quiet: bool | None):
    from ..trainers.common import NullUI

    return NullUI() if quiet else PrintUI()


class _Logged:
    """The caller's UI, with every line also kept in the run's log.txt (through its record); with a
    `pace` (trainers.expected.Pace), the first phase's steps time this machine and a line says the
    run's minutes at its speed."""

    def __init__(self, ui, record=None, pace=None):
        self.ui, self.record, self.pace = ui, record, pace

    def log(self, msg: str) -> None:
        self.ui.log(msg)
        if self.record is not None:
            self.record.log(f"{time.strftime('%H:%M:%S')} {msg}")

    def progress(self, desc: str):
        on_step, pace, self.pace = self.ui.progress(desc), self.pace, None  # the first phase only
        if pace is None:
            return on_step

        def timed(step: int, total: int, loss: float, acc: float) -> None:
            line = pace.on_step(step, total)
            if line is not None:
                self.log(line)
            if on_step is not None:
                on_step(step, total, loss, acc)
        return timed


@dataclass
class Run:
    """A run folder and what it recorded (and, right after training, the trained network itself)."""
    path: Path
    trained: tuple | None = field(default=None, repr=False, compare=False)  # (Network, heads)

    @property
    def meta(self) -> dict:
        from ..fileio import read_json

        return read_json(self.path / "run.json")

    @property
    def status(self) -> str:
        """running, finished, interrupted, failed, or stopped: running by run.json, but its process is gone."""
        from ..records import live_status

        return live_status(self.path, self.meta["status"])

    @property
    def final_acc(self) -> float:
        return self.meta["final_acc"]

    @property
    def params(self) -> int:
        return self.meta["params"]

    @property
    def macs(self) -> int:
        return self.meta["macs"]

    @property
    def stages(self):
        """stages.csv: one row per (stage, phase), as a pandas DataFrame."""
        import pandas as pd

        return pd.read_csv(self.path / "stages.csv")

    def backbone(self, with_head: bool = True):
        """The trained (and pruned) network in eval mode, with its classifier (the model's own, or
        its stages then the last head), or without it (`with_head` False: the stages' features).
        A run of your own module gives back the very object `fit(model=...)` trained."""
        from ..deploy.network import deployable, load_trained

        net, heads = self.trained if self.trained is not None else load_trained(self.path)[:2]
        return deployable(net, heads, with_head).eval().requires_grad_(False)


def fit(config: str | None = None, out: str | Path | None = None, *, dataset: Any = None, ui=None,
        **options) -> Run:
    """Train a recipe (a name from configs/ or a YAML file; default: quick, or for cifar10 the one
    that suits the device) into `out` (default runs/<name>), write its report, return the Run.
    Log lines go to stdout (none with quiet=True; log.txt has them either way), or to `ui`.

    `dataset` is a registered name, or a prunegreedy Dataset already loaded (its name is used for
    the config; the images are not read again). `model` is a registered model name
    (prunegreedy.register_model, torchvision:NAME), or your own nn.Module (trained and pruned in
    place; load it back with load_network(path, model=a_fresh_instance)) or a list of stage
    modules, cut into stages at the module names of `split`. Every other option is the CLI's."""
    ui = ui or default_ui(options.get("quiet"))
    cfg, recipe, data, network = _resolve(config, out, dataset, ui, options)
    return train_config(cfg, recipe, ui, data, network)


def plan(config: str | None = None, out: str | Path | None = None, *, dataset: Any = None, ui=None,
         **options):
    """What `fit` with the same arguments would build and cut, before any training: a DataFrame,
    one row per stage (modules, shapes, head, params and MACs before and after the cut, the
    pruning groups), the totals and any budget in its `.attrs`. The stages are built from the
    run's seed and cut in memory on untrained weights, so the counts are the ones the run will
    record. Nothing is written unless `out` is given: then plan.csv there (a new or empty folder).
    Bad input is refused as `fit` refuses it. The lines the CLI prints go to `ui`, if given."""
    from ..data.registry import data_shape
    from ..fileio import atomic_write
    from ..trainers.common import NullUI
    from ..trainers.plan_table import make_run_plan
    from ..trainers.registry import get_trainer
    from ..train.runtime import resolve_device

    ui = ui or NullUI()
    cfg, _, data, network = _resolve(config, None, dataset, ui, options)
    chosen = choose_split(cfg, data, network)
    if chosen:
        ui.log(chosen)
    get_trainer(cfg, network)  # the checks a run makes before its folder, in the same order
    resolve_device(cfg.run.device)
    classes, shape = (data.num_classes, data.image_shape) if data is not None else data_shape(cfg.data)
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another --out for plan.csv")
    planned = make_run_plan(cfg, classes, shape, network)
    for line in planned.lines():
        ui.log(line)
    if out is not None:
        path = Path(out) / "plan.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = planned.csv()
        atomic_write(path, lambda f: f.write(text.encode()))
        ui.log(f"plan: {path}")
    return planned.table()


# What a recipe sets for its own network and a network named in its place does not inherit; the
# options a network takes (heads, k) carry over, and any given here are checked by the network.
RECIPE_NETWORK_OPTIONS = {"width_mult": 1.0, "widths": None, "split": None}
# What a recipe's cuts inside its schedule become for --trainer compress, which cuts a trained
# network once per stage and repairs it against the original's features (scope internal: they
# keep their width).
COMPRESS_TRAINER_CUTS = {"at": 1.0, "cuts": 1, "rewind": False, "scope": "internal"}


def _resolve(config, out, dataset, ui, options: dict):
    """(config, recipe, a Dataset object given, the caller's module): what fit and plan run."""
    data, network = None, None
    if dataset is not None and not isinstance(dataset, str):
        data, dataset = dataset, dataset.name
    model, split = options.pop("model", None), options.pop("split", None)
    if model is not None and not isinstance(model, str):
        network, model, listed = _user_network(model, split)
        split = split if listed is None else listed
    over = overrides(dataset=dataset, out=out, model=model, split=split, **options)
    recipe = choose_recipe(config, dataset, options.get("device") or "auto", ui)
    if model is not None:  # another network than the recipe's: its widths were the recipe's network's
        over["model"] = {**RECIPE_NETWORK_OPTIONS, **over["model"]}
    if over.get("train", {}).get("trainer") == "compress":
        over["compress"] = {**COMPRESS_TRAINER_CUTS, **over.get("compress", {})}
    cfg = config_mod.load(recipe, over)
    epochs = cfg.train.epochs
    if model is not None and isinstance(epochs, list) and "epochs" not in over.get("train", {}):
        cfg.train.epochs = round(sum(epochs) / len(epochs), 4)  # the recipe's list was one per stage of its network
    return cfg, recipe, data, network


def _user_network(model, split):
    """(module, its model.arch, the split of a list of stages): its split is checked before any folder."""
    from ..nn.split import split_stages
    from ..nn.network import user_network

    network, arch, listed = user_network(model)
    if listed is not None and split is not None:
        raise ConfigError("a list of modules is already split into stages; give no split")
    if split is not None or listed is not None:  # without one, the default split is chosen (choose_split)
        split_stages(network, list(listed if listed is not None else split))
    return network, arch, listed


def choose_split(cfg, data=None, network=None) -> str | None:
    """Where no split is registered with the model or given, choose one now, from the network
    traced on an input of the data's shape (nn.autosplit), and with model.balance cut it again
    into stages of about equal training memory (measure.balance), into cfg.model.split: the run, its
    config.yaml, its resumption and its loaders all read it from there. Returns a line saying so."""
    from ..nn.models import build_model, default_split, registered_split
    from ..nn.network import ends_its_stages
    from ..nn.plans import PLANS

    m = cfg.model
    if m.balance and (m.arch is None or m.arch in PLANS):
        raise ConfigError(f"model.balance cuts a whole network's split again; the paper's network "
                          f"'{m.arch or m.plan}' is made block by block (--model NAME, or 0)")
    if m.arch is None or (not m.balance and (m.split is not None or (network is None and ends_its_stages(m.arch)))):
        return None
    if data is not None:
        shape = tuple(data.image_shape)
    else:
        from ..data.registry import data_shape

        shape = tuple(data_shape(cfg.data)[1])
    line = None
    if m.split is None and (network is not None or registered_split(m.arch) is None):
        m.split = default_split(network if network is not None else m.arch, shape, m.stages)
        line = (f"split of {m.arch}: {','.join(m.split)} (none registered or given: its stages end where the map "
                f"shrinks, at most model.stages {m.stages}; --split to choose others)")
    if not m.balance:
        return line
    import torch

    from ..measure.balance import balanced_split

    given = m.split if m.split is not None else registered_split(m.arch)
    if network is None:
        with torch.random.fork_rng(devices=[]):  # building it draws weights the run must not see drawn
            network = build_model(m.arch, 10, shape[1])
    m.split, stages, m.balance = balanced_split(network, given, m.balance, shape), m.balance, 0
    chosen = " where the map shrinks, none registered or given," if line else ""
    return (f"split of {m.arch}: {','.join(m.split)} ({','.join(given)}{chosen} cut again into {stages} stages "
            f"whose largest keeps the fewest activations for training: model.balance)")


def train_config(cfg, recipe: str, ui, data=None, network=None) -> Run:
    """Train a resolved config into a new run folder (fit and sweep call this); `network`: the
    caller's module of a model.arch "user:..." run."""
    from ..nn.network import network_name
    from ..data.registry import load_dataset
    from ..records import RunRecord
    from ..trainers.decisions import check_data as check_holdout
    from ..trainers.plan_table import make_run_plan
    from ..trainers.registry import get_trainer
    from ..trainers.expected import Pace, start_line
    from ..trainers.run import new_meta

    chosen = choose_split(cfg, data, network)
    get_trainer(cfg, network)  # every name in the config, before a folder is made or data is read
    dist, dev, ui = _start(cfg, ui)
    if chosen:
        ui.log(chosen)
    ui.log(start_line(cfg, recipe, dev))
    path = run_path(cfg, recipe)
    dist.on_main(lambda: RunRecord.ensure_free(path))  # before minutes go into reading data
    t0 = time.perf_counter()
    ds = data if data is not None else load_dataset(cfg.data)
    ui.log(f"data: {ds.name}, {ds.num_train:,} train / {len(ds.test_y):,} test images "
           f"{'x'.join(map(str, ds.image_shape))}, loaded in {time.perf_counter() - t0:.1f}s")
    check_holdout(cfg, ds)  # a budget's held-out slice must leave training images (before the folder)
    planned = make_run_plan(cfg, ds.num_classes, ds.image_shape, network)  # torch's random state is kept
    dist.on_main(lambda: RunRecord.make_folder(path))
    record = RunRecord(path, new_meta(cfg, ds, dev, dist), writes=dist.is_main)
    record.meta.planned = planned.as_dict()
    procs = f" x {dist.world} processes" if dist.enabled else ""
    what = f"network: {network_name(cfg.model)}"
    pace = Pace(cfg, planned, record.meta.dataset["train_images"]) if cfg.train.trainer == "greedy" else None
    return _execute(cfg, record, ds, dev, ui, dist,
                    f"run folder: {path}  device: {dev}{procs}  {what}  trainer: "
                    f"{cfg.train.trainer}  hook: {cfg.compress.hook}", network, planned.lines(), pace)


def resume(path: str | Path, data_dir: str | Path | None = None, *, ui=None, quiet: bool = False,
           model=None) -> Run:
    """Continue an interrupted run with its saved config (its data may have moved: `data_dir`).
    A run of your own module needs `model`: a fresh, unpruned instance (or the list of stages)."""
    from ..data.registry import load_dataset
    from ..fileio import read_yaml
    from ..records import RunRecord
    from ..trainers.run import check_resumable, reopen

    path = Path(path)
    if not RunRecord.is_run(path):
        raise ConfigError(f"{path} is not a run folder (no run.json)")
    cfg = config_mod.from_dict(read_yaml(path / "config.yaml"))
    network = None
    if model is not None:
        from ..nn.network import user_network

        network = user_network(model)[0]
    elif (cfg.model.arch or "").startswith("user:"):
        raise ConfigError(f"{path} trains your own {cfg.model.arch[5:]}; resume it from Python with "
                          f"prunegreedy.resume(path, model=a_fresh_{cfg.model.arch[5:]}_instance)")
    if data_dir is not None:  # the data may have moved since; check_resumable compares them
        cfg.data.data_dir = str(data_dir)
    dist, dev, ui = _start(cfg, ui or default_ui(quiet))
    record = RunRecord.open(path, writes=dist.is_main)
    record.hold()  # before minutes go into reading data
    try:
        ds = load_dataset(cfg.data)
        check_resumable(record, ds)
        reopen(record, cfg, dev, dist)
    except BaseException:
        record.release()
        raise
    gone = " (run.json said running, but its process was gone: stopped)" if record.meta.status == "running" else ""
    return _execute(cfg, record, ds, dev, ui, dist, f"resuming {path} after stage {record.meta.stages_done}{gone}",
                    network)


def _start(cfg, ui):
    """Device, process group (under torchrun) and CPU threads; ranks other than 0 stay silent."""
    from ..train import distributed, runtime
    from ..trainers.common import NullUI

    dist, dev = distributed.from_env(runtime.resolve_device(cfg.run.device), timeout=cfg.dist.timeout)
    runtime.setup(dev, cfg.run.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    return dist, dev, (ui if dist.is_main else NullUI())


def _execute(cfg, record, ds, dev, ui, dist, first_line: str, network=None, plan_lines: Iterable[str] = (),
             pace=None) -> Run:
    """Train into the record; Ctrl-C keeps the finished stages and says how to go on; then the report."""
    from ..train import stop
    from ..trainers.run import execute

    hint = f"{dist.launcher()} run --resume {record.path}"
    ui = _Logged(ui, record, pace)
    try:
        record.hold()
        for line in (first_line, *plan_lines):
            ui.log(line)
        # A process of the run that is gone ends every other one in one line, the run marked failed;
        # SIGTERM and Ctrl-C finish the step, checkpoint and stop.
        with dist.guard(on_lost=lambda reason: record.set_status("failed", reason)), stop.graceful():
            _, trained = execute(cfg, record, ds, dev, ui, dist, network)
    except stop.Stopped as e:
        saved = f"a checkpoint at {e.where}" if e.where else "the last checkpoint"
        ui.log(f"stopped by {e.name}; {record.meta.stages_done} finished stage(s) and {saved} are saved. "
               f"Resume with: {hint}")
        raise
    except KeyboardInterrupt:
        ui.log(f"interrupted; {record.meta.stages_done} finished stage(s) and the last checkpoint are saved. "
               f"Resume with: {hint}")
        raise
    except RunError as e:  # e.g. the disk filled up: finished stages stay loadable
        raise RunError(f"{e}; {record.meta.stages_done} finished stage(s) kept, resume with: {hint}") from None
    finally:
        record.release()
        dist.close()
    ui.log(f"records: {record.path / 'stages.csv'}")
    if dist.is_main:
        from ..report.tables import load_runs, write_report

        write_report(load_runs([record.path]), record.path)
        ui.log(f"report: {record.path / 'report.html'}")
    return Run(record.path, trained)
