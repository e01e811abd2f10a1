"""`--trainer compress`: a network already trained, compressed stage by stage, each stage repaired
against the original network's own features (ThiNet, He et al. 2017, DCP: layer-wise repair).

The network comes trained: model.weights loaded into a registered network, or your module as it
is. stages.csv's first row is its test accuracy before any cut (stage 0, phase `reference`),
through its own classifier. Then for each stage j in forward order, the stages before it already
compressed and frozen:
  - cut it (compress.network.cut_stage: traced into the next stage, every importance criterion,
    per-stage ratios, round_to, compress.scope; Taylor scores on the whole network's loss);
  - refit the layers that lost inputs by least squares to the original network's outputs at
    them (compress.reconstruct images; inputs from the compressed prefix, targets from the
    original network, so the stage also absorbs the error of the stages before it);
  - fine-tune the stage alone for compress.finetune_epochs (one value, or one per stage) so that
    its output on the compressed prefix matches the original stage's output on the original prefix
    (mean squared error); with compress.distill a > 0, (1 - a) x that + a x T^2 KL(the whole
    network's logits, through the frozen rest, || the original network's); with compress.labels
    w > 0, + w x the labels' cross-entropy of those logits; then estimate its BatchNorm statistics
    again on training images (a short repair moves the weights faster than the running averages follow);
  - record the whole network (compressed prefix + original rest + classifier) after it.
Only the stage trains; the rest, the prefix and the frozen copy of the original stay in eval mode.
The repair runs at compress.repair_lr, not finetune_lr: the features' squared error gives far smaller
gradients than cross-entropy. compress.finetune_all_epochs then fine-tunes the whole network on the
labels (none by default). The feature loss alone is the default, so that one stage is in training
memory at a time: the logits' loss puts the rest of the network back into each step's graph, and on
resnet20 (on every stage but the first) it changed the result by +0.17 and -0.52 points. The labels'
loss costs no memory on the last stage, whose rest is only the classifier; there, with
model.balance 4 and the repair's epochs moved to the later stages, it helps an original trained
briefly and costs one trained longer (+1.07 and -0.44 points against the default on resnet20
trained 8 and 20 epochs): benchmarks/compress_trained.py.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..compress.context import StageContext
from ..compress.gradients import accumulate_gradients
from ..compress.network import cut_stage, fresh
from ..compress.reconstruct import refit
from ..compress.sensitivity import BATCH_NORMS, recalibrate
from ..config import Config, as_list, per_stage
from ..errors import ConfigError
from ..measure.size import output_shape
from ..nn.network import USER, Network
from ..records import load_weights
from ..train.loop import Chain, train
from ..train.modes import autocast, eval_mode, freeze
from .common import PhaseRecorder, Session, stage_distill, stage_ratio

ORIGINAL = "original"  # checkpoints/original.safetensors: the network before any cut, for a resumed run
RECALIBRATE_IMAGES = 2048  # training images on which a repaired stage's BatchNorm statistics are estimated again


def validate(cfg: Config, net: Network) -> None:
    c = cfg.compress
    if net.tail is None:
        raise ConfigError(f"--trainer compress takes a whole trained network (a registered model, torchvision:NAME "
                          f"or your module), not the paper's {net.name}, whose blocks are made as it trains")
    if not net.own_tail:
        raise ConfigError("--trainer compress measures the network through its own classifier; model.last_head aux "
                          "would train a new one: use model.last_head own")
    if cfg.model.weights is None and not net.name.startswith(USER):
        raise ConfigError(f"--trainer compress compresses a trained network: give {net.name}'s weights with "
                          f"--weights PATH (or pass your trained module as model=)")
    if c.hook not in ("none", "prune"):
        raise ConfigError(f"--trainer compress cuts every stage itself; compress.hook must be none or prune, "
                          f"not '{c.hook}'")
    if c.at < 1 or c.cuts > 1 or c.rewind:
        raise ConfigError("--trainer compress cuts each stage once, then repairs it: compress.at 1, compress.cuts 1, "
                          "compress.rewind false")
    if c.scope == "all" and set(as_list(c.distill)) != {1}:
        raise ConfigError(f"compress.scope all narrows each stage's output, which the original's features no longer "
                          f"match; with --trainer compress use compress.distill 1 (the whole network's logits), "
                          f"got {per_stage(c.distill)}")
    if cfg.model.weights is not None:
        _check_file(cfg, net)


def _check_file(cfg: Config, net: Network) -> None:
    """The weights file against the network built for the data's classes, before any folder."""
    from ..data.registry import data_shape
    from ..errors import DataError
    from ..nn.network import from_config
    from ..nn.weights import check_weights, read_weights

    model = net.model
    if not net.name.startswith(USER):
        try:
            classes = data_shape(cfg.data)[0]
        except DataError:
            classes = net.args["num_classes"]  # a dataset passed as an object: checked again once it is loaded
        if classes != net.args["num_classes"]:
            with torch.random.fork_rng(devices=[]):
                model = from_config(cfg.model, classes, net.args["image_size"]).model
    check_weights(model, read_weights(cfg.model.weights), cfg.model.weights, net.name)


class _Rest(nn.Module):
    """The frozen rest of the network after a stage (later stages, then the classifier): always in
    eval mode, so no BatchNorm statistic moves; remembers its input (the stage's output). Without
    `grad` it runs without a graph: its logits are only counted then."""

    def __init__(self, rest: nn.Module, grad: bool):
        super().__init__()
        self.rest, self.grad, self.seen = rest, grad, None

    def train(self, mode: bool = True) -> "_Rest":
        super().train(mode)
        self.rest.eval()
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.seen = h
        if self.grad:
            return self.rest(h)
        with torch.no_grad():
            return self.rest(h)


class _Tap(nn.Module):
    """A frozen prefix that remembers its input (the batch's images): the original network's targets."""

    def __init__(self, prefix: nn.Module):
        super().__init__()
        self.prefix, self.seen = prefix, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.prefix(x)


def compress(cfg: Config, s: Session) -> list[nn.Module]:
    """Compress the session's trained network stage by stage; return every stage's cut head
    (nn.Identity, the last stage's own classifier). Finished stages of a resumed run are kept."""
    blank = copy.deepcopy(s.network) if s.network is not None else None  # the caller's module before any cut
    heads = s.start(cfg, trained=True)
    net, n, c = s.net, len(s.net.stages), cfg.compress
    freeze(net.model)
    freeze(net.tail)
    original = _original(s, blank)
    if not s.record.meta.stages_done:
        rec = PhaseRecorder(s, -1, [], s.ds.image_shape, 0.0, "network")
        rec("reference", nn.Sequential(*net.modules_of()), net.tail, 0.0)
        s.stage_probs.pop(-1)
    pruning = list(s.spec["pruning"])
    for j in range(len(heads), n):
        torch.manual_seed(cfg.run.seed * 1000 + j)  # random importance
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + j)  # batches and augmentation
        head, removed = compress_stage(cfg, s, original, j, gen)
        heads.append(head)
        pruning.append(removed)
        s.save_stage(j + 1, heads, pruning)
    if c.finetune_all_epochs > 0 and not any(r["phase"] == "finetuned-all" for r in s.record.rows):
        body = nn.Sequential(*net.modules_of())
        for m in (body, net.tail):
            m.requires_grad_(True)
        gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + n)
        rec = PhaseRecorder(s, n - 1, [], s.ds.image_shape, max(stage_ratio(cfg, j, n) for j in range(n)), "network")
        stats = train(Chain([(body, net.tail)]), s.ds, s.norm, cfg.train, c.finetune_all_epochs, c.finetune_lr,
                      c.finetune_schedule, s.device, gen, on_step=rec.progress("fine-tune all"), dist=s.dist).stats[0]
        freeze(body)
        freeze(net.tail)
        rec("finetuned-all", body, net.tail, stats.seconds, stats=stats, epochs=c.finetune_all_epochs)
        s.save_stage(n, heads, pruning)
    return heads


def _original(s: Session, blank: nn.Module | None) -> Network:
    """A frozen copy of the network before any cut: made now and kept in the run folder, or, on a
    resumed run, rebuilt from the spec and the weights kept."""
    if not s.record.meta.stages_done:
        s.record.save_weights(ORIGINAL, s.net.model)
        original = copy.deepcopy(s.net)
    else:
        original = fresh(s.spec, blank)
        load_weights(original.model, s.record.read_weights(ORIGINAL), s.record.ckpt / f"{ORIGINAL}.safetensors")
        original.model.to(s.device, memory_format=s.memory_format)
    freeze(original.model)
    freeze(original.tail)
    return original


def compress_stage(cfg: Config, s: Session, original: Network, j: int,
                   gen: torch.Generator) -> tuple[nn.Module, dict | None]:
    """Cut stage j, refit it, fine-tune it alone against the original, record each phase; return
    the head it was cut with and its pruning record (None: nothing cut)."""
    net, c, n = s.net, cfg.compress, len(s.net.stages)
    block = net.stages[j].module.requires_grad_(True)
    in_shape = net.shapes(s.ds.image_shape)[j]
    prefix = freeze(nn.Sequential(*net.modules_of(j)))
    head = net.tail if j == n - 1 else nn.Identity()  # the next stage is traced with the cut where it exists
    rest = nn.Sequential(*[st.module for st in net.stages[j + 1:]], net.tail)
    ratio = stage_ratio(cfg, j, n)
    rec = PhaseRecorder(s, j, net.modules_of(j), in_shape, ratio)
    ctx = StageContext(j, prefix, block, rest, in_shape, s.ds, s.norm, cfg.train, s.device, gen, ratio, s.dist, net)
    before, t0 = output_shape(block, in_shape)[0], time.perf_counter()
    after = _after(net, j).requires_grad_(True)  # Taylor scores what reads the stage too (compress.scope all)
    cut = cut_stage(net, j, head, in_shape, ratio, c.importance, c.round_to, c.scope,
                    gradients=lambda: accumulate_gradients(ctx, block, rest, c.taylor_batches), agree=s.dist.broadcast)
    freeze(after)
    for p in [*block.parameters(), *rest.parameters()]:
        p.grad = None
    removed = cut.as_dict() if cut.cuts else None
    if removed and c.refit_images():
        refit_to_original(s, original, j, c.refit_images(), cfg.train.batch_size)
    rec("pruned", block, rest, time.perf_counter() - t0, width_before=before, removed=removed)
    if removed and c.finetune(j) > 0:
        weights = Weights(stage_distill(cfg, j, n), cfg.stage_value(c.labels, 0.0, j, n), c.distill_temperature,
                          cfg.train.label_smoothing)
        tap, tail = _Tap(prefix), _Rest(rest, grad=weights.through_rest)
        chain = Chain([(block, tail)], tap, loss=repair_loss(original, j, tap, tail, weights))
        stats = train(chain, s.ds, s.norm, cfg.train, c.finetune(j), c.repair_lr, c.finetune_schedule, s.device, gen,
                      on_step=rec.progress("fine-tune"), dist=s.dist)
        tap.seen = tail.seen = None
        recalibrate_stage(s, prefix, block, j, cfg.train.batch_size)
        rec("finetuned", block, rest, stats.stats[0].seconds, stats=stats.stats[0], epochs=c.finetune(j))
    freeze(block)
    return head, removed


@dataclass(frozen=True)
class Weights:
    """The terms of a stage's repair loss beside the features' squared error."""
    distill: float  # of the original's soft logits (the features' error then weighs 1 - distill)
    labels: float  # of the labels' cross-entropy
    temperature: float
    smoothing: float  # train.label_smoothing of the labels' term

    @property
    def through_rest(self) -> bool:
        """Whether the loss reads the whole network's logits, so the rest must be in the graph."""
        return self.distill > 0 or self.labels > 0


def repair_loss(original: Network, j: int, tap: _Tap, rest: _Rest, w: Weights):
    """The loss of the stage's fine-tuning (loop.Chain.loss): (1 - distill) x the mean squared error
    between the stage's output and the original stage's on the original prefix (the same images),
    + distill x T^2 KL(the whole network's softened logits || the original network's)
    + labels x the cross-entropy of the whole network's logits."""
    stages = original.modules_of()

    def loss(_: int, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the original network, as far as it is needed
            h = tap.seen
            for k, stage in enumerate(stages[: None if w.distill > 0 else j + 1]):
                h = stage(h)
                if k == j:
                    target = h
            teacher = original.tail(h) if w.distill > 0 else None
        out = (1 - w.distill) * F.mse_loss(rest.seen.float(), target.float()) if w.distill < 1 else 0.0
        if w.distill > 0:
            soft = F.softmax(teacher.float() / w.temperature, dim=1)
            kd = F.kl_div(F.log_softmax(logits.float() / w.temperature, dim=1), soft, reduction="batchmean")
            out = out + w.distill * w.temperature ** 2 * kd
        if w.labels > 0:
            out = out + w.labels * F.cross_entropy(logits.float(), y, label_smoothing=w.smoothing)
        return out
    return loss


def train_images(s: Session, j: int, images: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The first `images` training images (normalised, augmented) of a stream of their own, seeded by the stage."""
    gen, seen = torch.Generator().manual_seed(j), 0
    for xb, _ in s.ds.train_batches(batch_size, s.norm, gen):
        xb = xb[: images - seen]
        yield xb
        seen += len(xb)
        if seen >= images:
            return


def recalibrate_stage(s: Session, prefix: nn.Module, block: nn.Module, j: int, batch_size: int) -> None:
    """Estimate the repaired stage's BatchNorm statistics again on training images through the
    compressed prefix: the repair's steps can move the weights faster than the running averages
    follow (a short repair at compress.repair_lr left them far behind)."""
    def outputs():
        with torch.no_grad(), eval_mode(prefix):
            for k, xb in enumerate(train_images(s, j, RECALIBRATE_IMAGES, batch_size)):
                with autocast(s.device, s.amp):
                    yield k, prefix(xb)
    recalibrate([(block, None)], outputs(), s.device, s.amp)
    for m in block.modules():  # rank 0's statistics on every rank
        if isinstance(m, BATCH_NORMS) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                buf.copy_(s.dist.broadcast(buf.detach().cpu()))


def _after(net: Network, j: int) -> nn.Module:
    """What reads stage j's output: the next stage, or the classifier."""
    return net.stages[j + 1].module if j + 1 < len(net.stages) else net.tail


def refit_to_original(s: Session, original: Network, j: int, images: int, batch_size: int) -> list[str]:
    """Refit the layers of stage j (and of what reads it) that lost inputs, to the original
    network's outputs at them, on `images` training images: the live network runs on its
    compressed prefix, the original on its own."""
    net = s.net
    uncut = nn.Sequential(OrderedDict(original=nn.Sequential(*original.modules_of(j)),
                                      stage=original.stages[j].module, after=_after(original, j)))
    pruned = nn.Sequential(OrderedDict(compressed=nn.Sequential(*net.modules_of(j)),
                                       stage=net.stages[j].module, after=_after(net, j)))

    with torch.no_grad(), eval_mode(uncut, pruned):  # the images drawn again for every layer refit
        names = refit(uncut, pruned, lambda: train_images(s, j, images, batch_size), torch.Generator().manual_seed(j))
    for name in names:  # rank 0's solution on every rank
        weight = pruned.get_submodule(name).weight
        weight.data.copy_(s.dist.broadcast(weight.detach().cpu()))
    return names
