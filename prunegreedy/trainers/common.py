"""What every trainer shares: the config check before any folder or data, the UI protocol, the
session a trainer runs in, and the recorder that measures a phase and hands its row to the record."""
from __future__ import annotations

import copy
import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..compress.hooks import HOOKS, get_hook
from ..compress.importance import IMPORTANCES
from ..config import Config
from ..data.base import Dataset, Normalize
from ..data.registry import DATASETS, data_shape
from ..errors import ConfigError
from ..measure.size import count_macs, count_params, output_shape
from ..compress.network import checkpoint_module, head_settings, network_spec, rebuild
from ..nn.network import OWN, Network, from_config
from ..nn.weights import load_trained
from ..records import RunRecord, load_weights
from ..train.distributed import SINGLE, Dist
from ..train.evaluate import evaluate
from ..train.loop import LoopState, StepCallback
from ..train.datainit import init_from_data
from ..train.modes import freeze
from ..train.schedules import SCHEDULES
from ..train.tta import check_tta
from .decisions import Decisions
from .decisions import check_config as check_decisions


class UI(Protocol):
    def log(self, msg: str) -> None: ...

    def progress(self, desc: str) -> StepCallback | None: ...


class NullUI:
    def log(self, msg: str) -> None:
        pass

    def progress(self, desc: str) -> None:
        return None


def check(cfg: Config, module: nn.Module | None = None) -> Network:
    """Every registry name and per-stage list, checked before a folder is made or data is read;
    the run's network, built untrained (torch's random state is kept) to count and check its stages."""
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"unknown dataset '{cfg.data.name}'; valid: {', '.join(DATASETS)}")
    side = 32 if cfg.data.name.startswith("cifar10") else cfg.data.image_size  # CIFAR ignores image_size
    with torch.random.fork_rng(devices=[]):
        net = from_config(cfg.model, 10, side, copy.deepcopy(module) if module is not None else None)
    hook = get_hook(cfg.compress.hook)
    if cfg.compress.at < 1 and cfg.compress.hook != "none" and hook.cut is None:
        raise ConfigError(f"compress.at {cfg.compress.at:g} cuts inside the schedule, which hook "
                          f"'{cfg.compress.hook}' cannot do; use compress.at 1 or a hook that can: "
                          f"{', '.join(n for n, h in HOOKS.items() if h.cut is not None)}")
    if cfg.compress.importance not in IMPORTANCES:
        raise ConfigError(f"unknown importance '{cfg.compress.importance}'; valid: {', '.join(IMPORTANCES)}")
    for name in (cfg.train.schedule, cfg.compress.finetune_schedule):
        if name not in SCHEDULES:
            raise ConfigError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULES)}")
    if cfg.train.tta != "off":  # from the folders' names: nothing decoded
        check_tta(cfg.train.tta, data_shape(cfg.data)[1])
    n = len(net.stages)
    if isinstance(cfg.train.epochs, list) and len(cfg.train.epochs) != n:
        raise ConfigError(f"train.epochs lists {len(cfg.train.epochs)} values but {net.name} has {n} stages; give "
                          f"--epochs E (every stage) or {n} values, e.g. --epochs {','.join(['2'] * n)}")
    if cfg.compress.ratios is not None and len(cfg.compress.ratios) != n:
        raise ConfigError(f"prune ratios list {len(cfg.compress.ratios)} values but {net.name} has {n} stages")
    for key in ("distill", "labels", "finetune_epochs"):
        values = getattr(cfg.compress, key)
        if isinstance(values, list) and len(values) != n:
            raise ConfigError(f"compress.{key} lists {len(values)} values but {net.name} has {n} stages; give one "
                              f"value (every stage) or {n}")
    check_decisions(cfg, net, (3, side, side))  # budgets and sensitivity
    return net


def stage_distill(cfg: Config, stage: int, n: int) -> float:
    """compress.distill's weight for this stage."""
    return cfg.stage_value(cfg.compress.distill, 0.0, stage, n)


def stage_ratio(cfg: Config, stage: int, n: int) -> float:
    if cfg.compress.hook == "none":
        return 0.0
    return cfg.stage_value(cfg.compress.ratios, cfg.compress.ratio, stage, n)


def removed_count(removed: dict | None) -> int:
    """Filters cut: a pruning record's ({"cuts": [...]}), or every stage's ({stage: pruning record})."""
    if removed is None:
        return 0
    if isinstance(removed, dict) and "cuts" in removed:
        return sum(len(c["removed"]) for c in removed["cuts"])
    return sum(map(removed_count, removed.values()))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("prunegreedy", "torch", "torchvision", "torch-pruning", "fvcore"):
        try:
            out[pkg] = importlib.metadata.version(pkg)  # torch-pruning's __version__ is wrong
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


@dataclass
class Session:
    """What a trainer runs with besides its config: the record it reports to, the data on the
    training device, the device and process group, the UI, and the held-out decisions (if any)."""
    record: RunRecord
    ds: Dataset
    device: torch.device
    amp: torch.dtype | None
    norm: Normalize
    memory_format: torch.memory_format
    eval_batch_size: int
    ui: UI = field(default_factory=NullUI)
    dist: Dist = SINGLE
    decisions: Decisions | None = None
    stage_probs: dict[int, torch.Tensor] = field(default_factory=dict)  # test softmax of each stage's last phase
    network: nn.Module | None = None  # the caller's own module (model.arch "user:..."), trained in place
    net: Network | None = None  # the run's network: set by start()
    spec: dict = field(default_factory=dict)  # how to build it again, and every stage's cut so far

    def start(self, cfg: Config, trained: bool = False) -> list[nn.Module]:
        """Decide once what the network is: built afresh (seeded by run.seed), or given `trained`
        (the caller's module as it is, or model.weights loaded into it: no initialisation from
        data), or rebuilt from the last finished stage of a resumed run. Returns the heads of the
        stages already trained."""
        done = self.record.meta.stages_done
        if done:
            spec, state, probs = self.record.read_stage(done)
            self.net, heads = rebuild(spec, self.network)
            load_weights(checkpoint_module(self.net, heads), state, self.record.ckpt / f"stage-{done}.safetensors")
            self.spec = spec
            self.stage_probs.update(enumerate(probs))
        else:
            torch.manual_seed(cfg.run.seed)  # a prebuilt model's initial weights, before any stage's own seed
            self.net = from_config(cfg.model, self.ds.num_classes, self.ds.image_shape[1], self.network)
            if cfg.model.weights is not None:
                load_trained(self.net.model, cfg.model.weights, self.net.name)
            if not trained:
                init_from_data(self.net.model, self.ds, self.norm, cfg.run.seed)  # a whitening stem, once
            self.spec, heads = network_spec(self.net, self.record.meta.dataset), []
        self.net.model.to(self.device, memory_format=self.memory_format)
        for m in [*self.net.modules_of(done), *heads]:
            freeze(m.to(self.device, memory_format=self.memory_format))
        return heads

    def new_head(self, j: int, out_shape: tuple[int, ...]) -> nn.Module:
        """Stage j's head on its output (the model's own tail, or a new head whose settings the spec keeps)."""
        stage = self.net.stages[j]
        if stage.spec.head != OWN:
            self.spec["heads"][str(j)] = head_settings(stage.spec)
        head, = self.to_device(self.net.head(j, out_shape))
        return head

    def save_stage(self, stage: int, heads: list[nn.Module], pruning: list) -> None:
        """The network after `stage` (every stage's cut in `pruning`), with its heads and spec."""
        self.spec["pruning"] = list(pruning)
        self.record.save_stage(stage, checkpoint_module(self.net, heads), self.spec, self.stage_probs[stage - 1])

    def to_device(self, *modules: nn.Module) -> list[nn.Module]:
        return [m.to(self.device, memory_format=self.memory_format) for m in modules]

    def restore(self, stage: int, modules: dict[str, nn.Module], label: str,
                replay=None) -> LoopState | None:
        """Put back the modules of `stage` from the checkpoint an interrupted run left in its loop;
        return the loop state to resume from, or None to start the stage afresh. What the stage's
        events had done (a cut) is replayed first by `replay(outcome)`, so the weights fit."""
        partial = self.record.load_partial(stage)
        if partial is None:
            return None
        weights, state = partial
        for outcome in state.events.values():
            if replay is not None:
                replay(outcome)
        for name, m in modules.items():
            m.load_state_dict(weights[name])
        where = "checkpoint inside an epoch" if state.epoch_step else "end-of-epoch checkpoint"
        self.ui.log(f"{label}continuing from step {state.step} ({where})")
        return state


@dataclass
class PhaseRecorder:
    """Measures one phase of a stage (test accuracy, params, MACs) and hands its row to the record
    (compress.Recorder)."""
    session: Session
    stage: int
    prefix_blocks: list[nn.Module]
    block_input: tuple[int, int, int]
    ratio: float
    label: str = "stage"

    def progress(self, desc: str):
        return self.session.ui.progress(f"stage {self.stage + 1} {desc}")

    def __call__(self, phase: str, block: nn.Module, head: nn.Module, seconds: float, stats=None,
                 epochs: float | None = None, width_before: int | None = None, removed=None) -> None:
        s = self.session
        prefix = nn.Sequential(*self.prefix_blocks)
        acc, probs = evaluate(prefix, block, head, s.ds, s.norm, s.eval_batch_size, s.device, s.amp)
        s.stage_probs[self.stage] = probs  # the last phase recorded is the stage's final head
        backbone = nn.Sequential(*self.prefix_blocks, block)
        width = output_shape(block, self.block_input)[0]  # any module: from a forward pass
        row = {
            "stage": self.stage + 1, "phase": phase,
            "width_in": self.block_input[0],
            "width_before": width_before if width_before is not None else width,
            "width": width,
            "test_acc": round(acc, 4),
            "train_loss": round(stats.train_loss, 5) if stats else None,
            "train_acc": round(stats.train_acc, 4) if stats else None,
            "epochs": epochs,
            "seconds": round(seconds, 3),
            "images_per_s": round(stats.images_per_s, 1) if stats else None,
            "params_backbone": count_params(backbone),
            "macs_backbone": count_macs(backbone, s.ds.image_shape),
            "params_stage": count_params(block),
            "macs_stage": count_macs(block, self.block_input),
            "params_head": count_params(head),
            "macs_head": count_macs(head, output_shape(block, self.block_input)),
            "prune_ratio": self.ratio,
            "removed": removed_count(removed),
        }
        s.record.add_rows([row])
        if removed:
            s.record.removed(self.stage + 1, removed)
            s.record.write_meta()
        s.ui.log(f"{self.label} {row['stage']} {phase:9s} width {row['width_before']}->{row['width']}  "
                 f"test acc {acc:6.2f}%  backbone {row['params_backbone']:,} params "
                 f"{row['macs_backbone'] / 1e6:,.1f} MMACs  {seconds:7.1f}s")
