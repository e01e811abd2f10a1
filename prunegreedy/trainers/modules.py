"""The greedy trainer on a whole network (model.arch): any nn.Module cut into stages at module names.

Stage j is (the model's modules from the end of stage j-1 to split[j], a head): an aux head built
from the stage's output shape by name (model.head, pooled by default), except that the last stage
keeps the model's own tail (pooling, classifier) with model.last_head "own". Each stage trains on
the frozen stages before it, then the compression hook cuts it through the dependency graph into
the next stage's input (not trained yet, so cutting it costs nothing) and the head's. Stages share
the model's module objects, so the user's own network is what ends up trained and pruned.

A checkpoint after every stage holds the whole model and the aux heads, and a spec that says how
to build the original (compress.network) and what each stage's cut removed; a resumed run
rebuilds from it, and prunegreedy.load_network gives back the user's class, pruned.
"""
from __future__ import annotations

import torch

from ..compress.network import KIND, Staged, head_for, head_settings, rebuild, shapes
from ..config import Config
from ..nn.models import build_model
from ..nn.net import GreedyNet
from ..nn.spec import StageSpec
from ..nn.split import split_stages, stage_shapes
from ..records import load_weights
from ..train.datainit import init_from_data
from ..train.modes import freeze
from .arch import model_split
from .common import Session
from .greedy import train_stage


def fresh_spec(cfg: Config, model: torch.nn.Module, split: list[str], s: Session) -> dict:
    d = s.record.meta.dataset
    return {"kind": KIND, "arch": cfg.model.arch, "class": type(model).__name__,
            "args": {"num_classes": s.ds.num_classes, "image_size": s.ds.image_shape[1]}, "split": split,
            "last_head": cfg.model.last_head, "input_shape": list(s.ds.image_shape), "mean": d["mean"],
            "std": d["std"], "classes": d["classes"], "shapes": shapes(model), "heads": {}, "pruning": []}


def build_fresh(cfg: Config, s: Session) -> torch.nn.Module:
    """The run's network, untrained: the caller's own module, or the named model built here; the
    modules that initialise from training images (a whitening stem) given them here, once."""
    torch.manual_seed(cfg.run.seed)  # the model's initial weights, before any stage's own seed
    model = build_model(s.network if s.network is not None else cfg.model.arch, s.ds.num_classes,
                        s.ds.image_shape[1])
    init_from_data(model, s.ds, s.norm, cfg.run.seed)
    return model


def cut_fresh(cfg: Config, model: torch.nn.Module, s: Session) -> tuple[Staged, bool, dict]:
    """(the untrained model cut into its stages, whether the last keeps the model's own tail, its spec)."""
    split = model_split(cfg)
    spec = fresh_spec(cfg, model, split, s)
    stages, tail = split_stages(model, split)
    own = cfg.model.last_head == "own" and tail is not None
    return Staged(model, stages, [], tail), own, spec


def _start(cfg: Config, s: Session) -> tuple[Staged, bool, dict]:
    """The network to train: built afresh, or rebuilt from the last finished stage of a resumed run."""
    model = build_fresh(cfg, s)
    done = s.record.meta.stages_done
    if not done:
        return cut_fresh(cfg, model, s)
    spec, state, probs = s.record.read_stage(done)
    staged, own = rebuild(spec, model)
    load_weights(staged.saved(own), state, s.record.ckpt / f"stage-{done}.safetensors")
    s.stage_probs.update(enumerate(probs))
    return staged, own, spec


def greedy_model(cfg: Config, plan: list[StageSpec], s: Session) -> GreedyNet:
    """Train the model's stages one by one; return them with their heads (the last: the classifier)."""
    staged, own, spec = _start(cfg, s)
    staged.saved(own).to(s.device, memory_format=s.memory_format)
    stages, n, done = staged.stages, len(staged.stages), len(staged.heads)
    for m in [*stages[:done], *staged.heads]:
        freeze(m)
    shape = stage_shapes(stages[:done], s.ds.image_shape)[-1] if done else tuple(s.ds.image_shape)
    for j in range(done, n):
        torch.manual_seed(cfg.run.seed * 1000 + j)  # head init and random importance
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + j)  # batches and augmentation
        if own and j == n - 1:
            head = staged.tail
        else:
            spec["heads"][str(j)] = head_settings(cfg.model.head or "pooled", cfg.model.head_pool)
            head, = s.to_device(head_for(spec["heads"][str(j)], stage_shapes([stages[j]], shape)[0],
                                         s.ds.num_classes))
        block, head = train_stage(cfg, j, n, stages[j], head, stages[:j], shape, s, gen,
                                  next_block=stages[j + 1] if j + 1 < n else None, graph=True)
        staged.heads.append(freeze(head))
        freeze(block)
        spec["pruning"].append(s.record.meta.removed_filters.get(str(j + 1)))
        s.record.save_stage(j + 1, staged.saved(own), spec, s.stage_probs[j])
        shape = stage_shapes([block], shape)[0]
    return GreedyNet(stages, staged.heads)
