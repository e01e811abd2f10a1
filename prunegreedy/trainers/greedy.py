"""The greedy loop. For each stage: train -> compression hook -> measure -> record -> checkpoint.

The next block's input width is read from the (possibly pruned) previous block, never from the
config, so a stage always grows on what the previous stage actually left behind.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import nn

from ..compress.context import StageContext
from ..compress.hooks import finetune, get_hook
from ..compress.prune import prune_block
from ..config import Config, from_dict
from ..data.base import Dataset, Normalize
from ..errors import PrunegreedyError
from ..fileio import read_json, read_yaml
from ..measure.size import count_macs, count_params, output_shape
from ..nn.net import GreedyNet, make_block, make_head
from ..nn.spec import StageSpec
from ..records import RunDir, load_model
from ..train.distributed import SINGLE, Dist
from ..train.evaluate import ensemble_accuracy, evaluate
from ..train.loop import NonFiniteLoss, train_stage
from ..train.modes import autocast_dtype, freeze
from .common import UI, NullUI, check, out_width, removed_count, stage_ratio, versions
from .decisions import Decisions
from .decisions import split as split_holdout


@dataclass
class _StageRecorder:
    """Measures one phase of a stage and appends its row (compress.Recorder)."""
    run: "GreedyRun"
    stage: int
    prefix_blocks: list[nn.Module]
    block_input: tuple[int, int, int]
    ratio: float

    def progress(self, desc: str):
        return self.run.ui.progress(f"stage {self.stage + 1} {desc}")

    def __call__(self, phase: str, block: nn.Module, head: nn.Module, seconds: float, stats=None,
                 epochs: float | None = None, width_before: int | None = None, removed=None) -> None:
        r = self.run
        prefix = nn.Sequential(*self.prefix_blocks)
        acc, probs = evaluate(prefix, block, head, r.ds, r.norm, r.cfg.train.eval_batch_size, r.device,
                                    r.amp)
        r.stage_probs[self.stage] = probs  # the last phase recorded is the stage's final head
        backbone = nn.Sequential(*self.prefix_blocks, block)
        row = {
            "stage": self.stage + 1, "phase": phase,
            "width_in": self.block_input[0],
            "width_before": width_before if width_before is not None else out_width(block),
            "width": out_width(block),
            "test_acc": round(acc, 4),
            "train_loss": round(stats.train_loss, 5) if stats else None,
            "train_acc": round(stats.train_acc, 4) if stats else None,
            "epochs": epochs,
            "seconds": round(seconds, 3),
            "images_per_s": round(stats.images_per_s, 1) if stats else None,
            "params_backbone": count_params(backbone),
            "macs_backbone": count_macs(backbone, r.ds.image_shape),
            "params_stage": count_params(block),
            "macs_stage": count_macs(block, self.block_input),
            "params_head": count_params(head),
            "macs_head": count_macs(head, output_shape(block, self.block_input)),
            "prune_ratio": self.ratio,
            "removed": removed_count(removed),
        }
        r.rows.append(row)
        r.run_dir.write_stages(r.rows)
        if removed:
            r.meta.setdefault("removed_filters", {})[str(self.stage + 1)] = removed
        r.ui.log(f"{r.stage_label} {row['stage']} {phase:9s} width {row['width_before']}->{row['width']}  "
                 f"test acc {acc:6.2f}%  backbone {row['params_backbone']:,} params "
                 f"{row['macs_backbone'] / 1e6:,.1f} MMACs  {seconds:7.1f}s")


class GreedyRun:
    """Greedy layerwise training: one stage per block of the plan, the compression hook after each."""
    stage_label = "stage"

    def __init__(self, cfg: Config, run_dir: RunDir, ds: Dataset, device: torch.device, ui: UI | None = None,
                 dist: Dist = SINGLE):
        ds, holdout = split_holdout(cfg, ds)  # only runs that decide from data hold images out (issue 15)
        self.cfg, self.run_dir, self.ds, self.device, self.dist = cfg, run_dir, ds.to(device), device, dist
        self.ui = ui or NullUI()
        self.norm = Normalize(ds.mean, ds.std, device, cfg.train.channels_last)
        self.amp = autocast_dtype(cfg.train.amp, device)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.rows: list[dict] = []
        self.stage_probs: dict[int, torch.Tensor] = {}  # test softmax of each stage's final head
        self.net = GreedyNet()
        self.meta: dict = {
            "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "device": str(device), "processes": dist.world, "amp": str(self.amp).replace("torch.", "") if self.amp else "off",
            "dataset": {"name": ds.name, "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                        "image_shape": list(ds.image_shape), "train_images": ds.num_train,
                        "test_images": len(ds.test_y)},
            "plan": cfg.model.plan, "stages_done": 0,
        }
        self.decisions = Decisions(cfg, holdout, self) if holdout is not None else None

    @classmethod
    def validate(cls, cfg: Config, plan: list[StageSpec]) -> None:
        """Checks of this trainer's own, before a run folder is made (check() did the common ones)."""

    def spec(self) -> dict:
        d = self.meta["dataset"]
        return self.net.spec(input_shape=d["image_shape"], mean=d["mean"], std=d["std"], classes=d["classes"],
                             plan=self.cfg.model.plan)

    @classmethod
    def resume(cls, run_dir: RunDir, ds: Dataset, device: torch.device, ui: UI | None = None,
               dist: Dist = SINGLE) -> "GreedyRun":
        """Continue a run from its last finished stage, with its saved config.

        The interrupted stage continues from its last end-of-epoch checkpoint (or its beginning).
        Every stage seeds its own random streams, and the prefix, block, head, optimizer momentum
        and batch generator are restored bit-exactly, so the result equals an uninterrupted run.
        """
        cfg = from_dict(read_yaml(run_dir.path / "config.yaml"))
        meta = read_json(run_dir.path / "run.json")
        if meta.get("status") == "finished":
            raise PrunegreedyError(f"{run_dir.path} already finished; nothing to resume")
        saved = meta.get("dataset", {})
        if saved.get("train_images", 0) + saved.get("holdout_images", 0) != ds.num_train or \
                saved.get("classes") != ds.classes:
            raise PrunegreedyError(f"the data given to resume {run_dir.path} differ from the run's "
                                   f"({saved.get('name')}, {saved.get('train_images')} training images)")
        run = cls(cfg, run_dir, ds, device, ui, dist)
        done = int(meta.get("stages_done", 0))
        run.meta.update({k: v for k, v in meta.items() if k not in ("versions", "device", "processes", "amp")})
        run.meta["removed_filters"] = {k: v for k, v in meta.get("removed_filters", {}).items() if int(k) <= done}
        run.meta["resumed"] = int(meta.get("resumed", 0)) + 1
        if run.decisions is not None:
            run.decisions.resume(done)
        if done:
            net, _ = load_model(run_dir.ckpt / f"stage-{done}")
            run.net = net.to(device, memory_format=run.memory_format)
            freeze(run.net)
            for j in range(done):
                run.stage_probs[j] = run_dir.load_probs(j + 1)
            rows = pd.read_csv(run_dir.path / "stages.csv").to_dict("records")
            run.rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                        for r in rows if r["stage"] <= done]  # rows of the interrupted stage are redone
        return run

    def run(self) -> dict:
        cfg = self.cfg
        plan = check(cfg)
        if not self.rows:
            self.run_dir.write_config(cfg.to_dict())
        self.meta["status"] = "running"
        self.run_dir.write_meta(self.meta)
        in_shape = output_shape(nn.Sequential(*self.net.blocks), self.ds.image_shape)
        start = time.perf_counter() - float(self.meta.get("seconds_done", 0.0))
        try:
            for j in range(len(self.net.blocks), len(plan)):
                in_shape = self._stage(j, plan, in_shape)
                self.run_dir.save_checkpoint(self.net, self.spec(), j + 1, self.stage_probs[j])
                self.meta.update(stages_done=j + 1, seconds_done=round(time.perf_counter() - start, 2))
                self.run_dir.write_meta(self.meta)
                self.run_dir.clear_partial(j + 1)
        except KeyboardInterrupt:
            self.meta["status"] = "interrupted"
            self.run_dir.write_meta(self.meta)
            raise
        return self._finish(plan, time.perf_counter() - start)

    def _stage(self, j: int, plan: list[StageSpec], in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Train stage j, run the compression hook, record every phase; return the next input shape."""
        cfg, stage = self.cfg, plan[j]
        torch.manual_seed(cfg.run.seed * 1000 + j)  # weight init and random importance
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + j)  # batches and augmentation
        block = make_block(in_shape[0], stage).to(self.device, memory_format=self.memory_format)
        head = make_head(stage.width, stage, self.ds.num_classes, output_shape(block, in_shape)[1:]).to(
            self.device, memory_format=self.memory_format)
        prefix_blocks = list(self.net.blocks)
        prefix = freeze(nn.Sequential(*prefix_blocks))
        ratio = stage_ratio(cfg, j, len(plan))
        rec = _StageRecorder(self, j, prefix_blocks, in_shape, ratio)
        epochs = cfg.stage_value(cfg.train.epochs, 1.0, j, len(plan))
        hook = get_hook(cfg.compress.hook)
        ctx = StageContext(j, prefix, block, head, in_shape, self.ds, self.norm, cfg.train, self.device, gen, ratio,
                           self.dist)
        inside = cfg.compress.at < 1 and ratio > 0  # cut part-way through the schedule (check: hook.cut exists)
        cut: dict = {}  # what a cut inside the schedule removed and recorded; kept in every later checkpoint

        def on_cut() -> None:
            first = len(self.rows)
            cut.update(removed=hook.cut(ctx, cfg.compress, rec), rows=self.rows[first:])

        loop_state = self._continue(j + 1, block, head, f"stage {j + 1}: ",
                                    replay=lambda c: self._replay_cut(ctx, cfg, c, cut))
        try:
            stats = train_stage(prefix, block, head, self.ds, self.norm, cfg.train, epochs, cfg.train.lr,
                                cfg.train.schedule, self.device, gen, on_step=rec.progress("train"),
                                on_epoch=lambda st: self.run_dir.save_partial(j + 1, block, head,
                                                                              {**st, "cut": cut or None}),
                                resume=loop_state, dist=self.dist, cut_at=cfg.compress.at,
                                on_cut=on_cut if inside else None)
            if self.decisions is not None:  # sensitivity.csv; under a budget, this stage's ratio (issue 15)
                ctx.ratio = rec.ratio = self.decisions.after_training(ctx, ratio)
            rec("trained", block, head, stats.seconds, stats=stats, epochs=epochs)
            if not inside:
                block, head = hook.after(ctx, cfg.compress, rec)
            elif cut.get("removed"):
                finetune(ctx, cfg.compress, rec)  # none by default: the schedule trained the pruned block
        except NonFiniteLoss as e:
            self._fail(f"stage {j + 1} stopped: {e}; stages 1..{j} are kept in {self.run_dir.path}")
        self.net.blocks.append(freeze(block))
        self.net.heads.append(freeze(head))
        return output_shape(block, in_shape)

    def _continue(self, stage: int, block: nn.Module, head: nn.Module, label: str,
                  replay: Callable[[dict], None] | None = None) -> dict | None:
        """Restore block + head from the end-of-epoch checkpoint an interrupted run left for `stage`;
        return its loop state for train_stage(resume=...), or None to start the stage afresh.
        A cut the stage had made inside its schedule is replayed first, so the weights fit."""
        partial = self.run_dir.load_partial(stage)
        if partial is None:
            return None
        if partial[2].get("cut") and replay is not None:
            replay(partial[2]["cut"])
        block.load_state_dict(partial[0])
        head.load_state_dict(partial[1])
        self.ui.log(f"{label}continuing from step {partial[2]['step']} (end-of-epoch checkpoint)")
        return partial[2]

    def _replay_cut(self, ctx: StageContext, cfg: Config, saved: dict, cut: dict) -> None:
        """Repeat a recorded cut (the same filters) and its `pruned` row on a resumed stage."""
        prune_block(ctx.block, ctx.head, ctx.input_shape, ctx.ratio, cfg.compress.importance, cfg.compress.round_to,
                    replay=saved["removed"])
        self._restore_cut_records(saved, {ctx.stage: saved["removed"]}, cut)

    def _restore_cut_records(self, saved: dict, removed: dict[int, list[int]], cut: dict) -> None:
        """Put back what a cut inside the schedule recorded: its `pruned` rows and the removed filters
        of each stage (0-based), and mark the cut as made so later checkpoints keep it."""
        self.rows.extend(saved["rows"])
        self.run_dir.write_stages(self.rows)
        for j, r in removed.items():
            self.meta.setdefault("removed_filters", {})[str(j + 1)] = r
        cut.update(saved)

    def _finish(self, plan: list[StageSpec], seconds: float) -> dict:
        per_head = [r["test_acc"] for r in self._final_rows()]
        ensemble = self._ensemble(plan)
        last = self.rows[-1]
        self.meta.update({
            "status": "finished", "seconds": round(seconds, 2),
            "final_acc": round(per_head[-1], 4),
            "ensemble_acc": round(ensemble, 4) if ensemble is not None else None,
            "head_accs": [round(a, 4) for a in per_head],
            "params": last["params_backbone"], "macs": last["macs_backbone"],
            "params_with_head": last["params_backbone"] + last["params_head"],
            "macs_with_head": last["macs_backbone"] + last["macs_head"],
            "widths": [b.conv.out_channels for b in self.net.blocks],
        })
        if self.decisions is not None:
            self.decisions.finish()
        self.run_dir.write_meta(self.meta)
        ens = f"  ensemble (2^j weights) {ensemble:.2f}%" if ensemble is not None else ""
        self.ui.log(f"final test acc {per_head[-1]:.2f}%{ens}  "
                    f"backbone {self.meta['params']:,} params {self.meta['macs'] / 1e6:,.1f} MMACs  "
                    f"{self.meta['seconds'] / 60:.1f} min")
        return self.meta

    def _ensemble(self, plan: list[StageSpec]) -> float | None:
        """The paper's 2^j-weighted ensemble of every stage's head."""
        return ensemble_accuracy([self.stage_probs[j] for j in range(len(plan))], self.ds.test_y)

    def _final_rows(self) -> list[dict]:
        """The last recorded phase of each stage: the state the next stage grew on."""
        last: dict[int, dict] = {}
        for row in self.rows:
            last[row["stage"]] = row
        return [last[s] for s in sorted(last)]

    def _fail(self, msg: str):
        self.meta.update({"status": "failed", "error": msg})
        self.run_dir.write_meta(self.meta)
        raise PrunegreedyError(msg)
