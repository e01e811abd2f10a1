"""One run, whichever trainer: its start (record, held-out data, session) and its end (statuses,
final metrics), written once for every trainer."""
from __future__ import annotations

import time
from dataclasses import replace

import pandas as pd
import torch
from torch import nn

from ..compress.budget import budget_of
from ..config import Config
from ..data.base import Dataset, Normalize
from ..errors import PrunegreedyError, RunError
from ..nn.network import declares_costs, network_name
from ..records import SENSITIVITY_FILE, RunMeta, RunRecord
from ..train.distributed import SINGLE, Dist
from ..train.evaluate import ensemble_accuracy
from ..train.loop import NonFiniteLoss
from ..train.modes import autocast_dtype
from ..train.tta import evaluate_tta
from .common import UI, NullUI, Session, check, versions
from .decisions import Decisions, takes_decisions
from .decisions import split as split_holdout
from .planning import run_ratios
from .registry import get_trainer


def _amp_name(cfg: Config, device: torch.device) -> str:
    amp = autocast_dtype(cfg.train.amp, device)
    return str(amp).replace("torch.", "") if amp else "off"


def new_meta(cfg: Config, ds: Dataset, device: torch.device, dist: Dist = SINGLE) -> RunMeta:
    """run.json of a run about to start on `ds` (its training images: the held-out ones excluded)."""
    held = cfg.data.holdout if takes_decisions(cfg) else 0
    return RunMeta(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=versions(),
                   device=str(device), processes=dist.world, amp=_amp_name(cfg, device),
                   dataset={"name": ds.name, "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                            "image_shape": list(ds.image_shape), "train_images": ds.num_train - held,
                            "test_images": len(ds.test_y)},
                   plan=network_name(cfg.model), trainer=cfg.train.trainer)


def check_resumable(record: RunRecord, ds: Dataset) -> None:
    """A run continues only unfinished, and on the data it started with."""
    meta = record.meta
    if meta.status == "finished":
        raise RunError(f"{record.path} already finished; nothing to resume")
    saved = meta.dataset
    if saved.get("train_images", 0) + saved.get("holdout_images", 0) != ds.num_train or \
            saved.get("classes") != ds.classes:
        raise RunError(f"the data given to resume {record.path} differ from the run's "
                       f"({saved.get('name')}, {saved.get('train_images')} training images)")


def reopen(record: RunRecord, cfg: Config, device: torch.device, dist: Dist = SINGLE) -> None:
    """A resumed run records where it runs now and that it was resumed."""
    m = record.meta
    m.versions, m.device, m.processes, m.amp = versions(), str(device), dist.world, _amp_name(cfg, device)
    m.trainer = cfg.train.trainer
    m.resumed = int(m.resumed or 0) + 1


def open_session(cfg: Config, record: RunRecord, ds: Dataset, device: torch.device, ui: UI | None = None,
                 dist: Dist = SINGLE, network: nn.Module | None = None) -> Session:
    """What the trainer runs with: the training images on the device (the held-out ones out, for a
    run that decides from data, with its Decisions), normalisation, precision, memory format."""
    train_ds, holdout = split_holdout(cfg, ds)  # only runs that decide from data hold images out
    amp = autocast_dtype(cfg.train.amp, device)
    train_ds = train_ds.to(device)
    s = Session(record, train_ds, device, amp, Normalize(ds.mean, ds.std, device, cfg.train.channels_last),
                torch.channels_last if cfg.train.channels_last else torch.contiguous_format,
                cfg.train.eval_batch_size, ui or NullUI(), dist, network=network)
    if holdout is not None:
        s.decisions = Decisions(cfg, holdout, train_ds, device, amp, dist)
        record.meta.dataset["holdout_images"] = len(holdout)
        if record.meta.resumed:
            path = record.path / SENSITIVITY_FILE
            rows = pd.read_csv(path).to_dict("records") if path.exists() else []
            s.decisions.resume(record.meta.stages_done, rows, record.meta.sensitivity, record.meta.budget)
        record.meta.sensitivity, record.meta.budget = s.decisions.sensitivity, s.decisions.budget
    return s


def execute(cfg: Config, record: RunRecord, ds: Dataset, device: torch.device, ui: UI | None = None,
            dist: Dist = SINGLE, network: nn.Module | None = None) -> tuple[dict, tuple]:
    """Train `cfg` into `record` (fresh, or reopened to resume); return the finished run.json and
    the trained (network, heads).

    `network` is the caller's own module for a model.arch "user:..." run (trained in place).
    Ctrl-C marks the run `interrupted` and a non-finite loss `failed`; either way the finished
    stages and the last loop checkpoint stay for `--resume`."""
    trainer = get_trainer(cfg, network)
    if not record.rows:
        record.write_config(cfg.to_dict())
    cfg = _budgeted(cfg, ds, network, record)
    s = open_session(cfg, record, ds, device, ui, dist, network)
    record.set_status("running")
    try:
        heads = trainer.train(cfg, s)
    except KeyboardInterrupt:
        record.set_status("interrupted")
        raise
    except NonFiniteLoss as e:
        done = record.meta.stages_done
        msg = (f"stage {done + 1} stopped: {e}; stages 1..{done} are kept in {record.path}"
               if cfg.train.trainer == "greedy" else f"{cfg.train.trainer} training stopped: {e}")
        record.set_status("failed", msg)
        raise PrunegreedyError(msg) from None
    return _finish(record, s, heads, trainer.ensemble, cfg.train.tta), (s.net, heads)


def _budgeted(cfg: Config, ds: Dataset, network: nn.Module | None, record: RunRecord) -> Config:
    """The budget of a network whose stages declare no costs, as what the trainers take: the one
    ratio of every stage (run.json's `budget` says how it was found). The run's plan found it
    already (run.json's `planned`); a run without one finds it again. A network whose stages
    declare their costs has its budget decided stage by stage instead (trainers.decisions)."""
    if declares_costs(cfg.model) or budget_of(cfg.compress) is None:
        return cfg
    net = check(cfg, network)
    found = (record.meta.planned or {}).get("budget")
    if found is None:
        found = run_ratios(cfg, net, ds.image_shape, ds.num_classes, network)[1]
    record.meta.budget = dict(found)
    ratios = [found["uniform_ratio"]] * len(net.stages)
    return replace(cfg, compress=replace(cfg.compress, ratios=ratios, target_macs=None, target_params=None))


def _finish(record: RunRecord, s: Session, heads: list[nn.Module], ensemble: bool, tta: str = "off") -> dict:
    last: dict[int, dict] = {}  # the last phase of each stage: the state the next stage grew on
    for row in record.rows:
        last[row["stage"]] = row
    per_head = [last[k]["test_acc"] for k in sorted(last) if k > 0]  # stage 0: a reference, no stage
    n = len(s.net.stages)
    ens = ensemble_accuracy([s.stage_probs[j] for j in range(n)], s.ds.test_y) if ensemble else None
    row = record.rows[-1]
    metrics = dict(final_acc=round(per_head[-1], 4), ensemble_acc=round(ens, 4) if ens is not None else None,
                   head_accs=[round(a, 4) for a in per_head], params=row["params_backbone"],
                   macs=row["macs_backbone"], params_with_head=row["params_backbone"] + row["params_head"],
                   macs_with_head=row["macs_backbone"] + row["macs_head"],
                   widths=[shape[0] for shape in s.net.shapes(s.ds.image_shape)[1:]])
    if tta != "off":  # beside final_acc, never instead of it
        stages = s.net.modules_of()
        metrics["final_acc_tta"] = round(evaluate_tta(nn.Sequential(*stages[:-1]), stages[-1], heads[-1], s.ds, s.norm,
                                                      s.eval_batch_size, s.device, s.amp, tta), 4)
    line = None
    if s.decisions is not None:
        line = s.decisions.finish(metrics[s.decisions.budget_rule.kind] if s.decisions.budget_rule else 0)
        record.meta.budget = s.decisions.budget
    b = record.meta.budget
    if s.decisions is None and b is not None:  # a whole network's budget (_budgeted)
        b.update(final=metrics[b["kind"]], met=metrics[b["kind"]] <= b["target"])
        line = (f"budget {b['kind']} <= {b['target']:,} ({b['text']}): {b['final']:,} "
                f"({100 * b['final'] / b['target']:.1f} % of the target), {'met' if b['met'] else 'NOT met'}; "
                f"every stage at ratio {b['uniform_ratio']:g}")
    record.finish(**metrics)
    if line:
        s.ui.log(line)
    meta = record.meta
    e = f"  ensemble (2^j weights) {ens:.2f}%" if ens is not None else ""
    e += f"  with TTA ({tta}) {meta.final_acc_tta:.2f}%" if meta.final_acc_tta is not None else ""
    s.ui.log(f"final test acc {per_head[-1]:.2f}%{e}  backbone {meta.params:,} params {meta.macs / 1e6:,.1f} MMACs  "
           f"{meta.seconds / 60:.1f} min")
    return meta.to_json()
