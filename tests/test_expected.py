"""The headline command prunes the best measured way, and a run starts by saying what it will do
and what that measured before on this kind of machine."""
import torch

from prunegreedy import config
from prunegreedy.api import overrides
from prunegreedy.trainers.expected import method, start_line

CPU = torch.device("cpu")
FP32 = "on a 2-core AVX2 CPU (fp32)"


def _cfg(recipe="cifar10-cpu", **options):
    return config.load(recipe, config.merge(overrides(**options), {"train": {"amp": "off"}}))


def test_prune_ratio_on_the_cpu_recipe_cuts_inside_the_schedule_unless_told_otherwise():
    c = _cfg(prune_ratio=0.5).compress
    assert (c.hook, c.ratio, c.at, c.finetune()) == ("prune", 0.5, 0.5, 0.0)
    c = _cfg(prune_ratio=0.5, set={"compress.at": 1}).compress
    assert (c.at, c.finetune()) == (1.0, 1.0)
    c = _cfg(prune_ratio=0.5, set={"compress.finetune_epochs": 0.5}).compress
    assert (c.at, c.finetune()) == (0.5, 0.5)
    c = _cfg(target_macs="0.25x").compress  # a budget measures the trained block: it cuts after training
    assert (c.at, c.ratio, c.target_macs, c.finetune()) == (1.0, 0.0, "0.25x", 1.0)


def test_the_start_line_quotes_what_the_recipe_recorded_and_on_which_machine():
    assert start_line(_cfg(prune_ratio=0.5), "cifar10-cpu", CPU) == (
        "recipe cifar10-cpu: pruned by 0.5 (l1) inside each stage's schedule (a cut at 0.5 of it, no fine-tuning); "
        f"recorded: 79.9 % test accuracy, in 16.5 min {FP32} (accuracy measured in fp32 on AVX-512 (5.4 min "
        "there); minutes estimated for AVX2 from the 3.07x step ratio); the time on this machine follows from its "
        "first steps")
    assert start_line(_cfg(), "cifar10-cpu", CPU).startswith(
        f"recipe cifar10-cpu: unpruned; recorded: 81.1 % test accuracy, in 40 min {FP32}")
    # The recipe that is cifar10-cpu pruned by half has the same figures.
    assert start_line(_cfg("cifar10-cpu-compress"), "cifar10-cpu-compress", CPU).startswith(
        "recipe cifar10-cpu-compress: pruned by 0.5 (l1) inside each stage's schedule (a cut at 0.5 of it, no "
        "fine-tuning); recorded: 79.9 %")


def test_settings_that_were_not_measured_get_no_figure():
    for cfg in (_cfg(prune_ratio=0.5, importance="bn"), _cfg(prune_ratio=0.25), _cfg(epochs=3)):
        assert start_line(cfg, "cifar10-cpu", CPU).endswith("; no measured figure for these settings")
    assert start_line(_cfg("quick"), "quick", CPU) == "recipe quick: unpruned; no measured figure for these settings"
    budget = _cfg(target_macs="0.25x")
    assert start_line(budget, "cifar10-cpu", CPU) == ("recipe cifar10-cpu: pruned to a budget (MACs 0.25x) after "
                                                      "each stage, the layers after each cut refit on 2,048 "
                                                      "images, then 1 epoch(s) of fine-tuning; no measured "
                                                      "figure for these settings")


def test_the_method_names_the_refit_where_the_trainer_refits():
    at = lambda a, **sets: _cfg(prune_ratio=0.5, set={"compress.at": a, **sets})  # noqa: E731
    assert method(at(1)) == ("pruned by 0.5 (l1) after each stage, the layers after each cut refit on 2,048 images, "
                             "then 1 epoch(s) of fine-tuning")
    assert method(at(1, **{"compress.reconstruct": 0})) == (
        "pruned by 0.5 (l1) after each stage, then 1 epoch(s) of fine-tuning")
    assert method(at(0.5, **{"compress.reconstruct": 512})) == (
        "pruned by 0.5 (l1) inside each stage's schedule (a cut at 0.5 of it, the layers after each cut refit on "
        "512 images, no fine-tuning)")
    assert method(at(1, **{"train.trainer": "end-to-end"})) == (
        "pruned by 0.5 (l1) after each stage, then 1 epoch(s) of fine-tuning")


class _Stage:
    def __init__(self, macs, head_macs, backbone, after, head_after, ratio):
        self.macs, self.head_macs, self.macs_backbone = macs, head_macs, backbone
        self.macs_after, self.head_macs_after, self.ratio = after, head_after, ratio


def test_the_time_at_this_machines_speed_scales_the_first_steps_by_the_plans_macs(monkeypatch):
    from types import SimpleNamespace

    from prunegreedy.trainers import expected

    # Stage 2 costs 2x stage 1 per step (its prefix forward + 3x its own); both cut, one epoch of fine-tuning.
    plan = SimpleNamespace(stages=[_Stage(100, 0, 100, 50, 0, 0.5), _Stage(50, 0, 100, 25, 0, 0.5)])
    cfg = _cfg(prune_ratio=0.5, epochs=1, set={"compress.at": 1, "train.batch_size": 100})
    pace = expected.Pace(cfg, plan, 1000)  # 10 steps an epoch
    assert pace.work == [(10, 30000), (10, 15000), (10, 20000), (10, 12500)]
    clock = iter([0.0, 180.0])  # 180 s for the 9 steps after the first (270,000 MACs): 775,000 MACs in 516.7 s
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))
    assert pace.on_step(1, 10) is None and pace.on_step(5, 10) is None
    assert pace.on_step(10, 10) == ("about 8.6 min at this machine's speed (9 steps timed; the other stages scaled "
                                    "by the plan's MACs)")
    assert pace.on_step(10, 10) is None  # once


def test_the_default_cpu_recipe_quotes_its_figures_only_for_the_machine_it_was_measured_on(monkeypatch):
    line = start_line(_cfg("cifar10-fast", prune_ratio=0.5), "cifar10-fast", CPU)
    assert line == ("recipe cifar10-fast: pruned by 0.5 (l1) inside each stage's schedule (a cut at 0.5 of it, no "
                    "fine-tuning); measured only on a 2-core AVX-512 CPU with bf16")
    assert start_line(_cfg("cifar10-fast-compress"), "cifar10-fast-compress", CPU) == line.replace(
        "cifar10-fast:", "cifar10-fast-compress:")
    monkeypatch.setattr("prunegreedy.trainers.expected.has_fast_cpu_bf16", lambda: True)
    monkeypatch.setattr("prunegreedy.train.modes.has_fast_cpu_bf16", lambda: True)
    cfg = config.load("cifar10-fast", overrides(prune_ratio=0.5))
    assert "recorded: 82.3 % test accuracy, in 2.8 min on a 2-core AVX-512 CPU with bf16" in start_line(
        cfg, "cifar10-fast", CPU)
