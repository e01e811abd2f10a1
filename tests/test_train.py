import pytest
import torch
from torch import nn

from prunegreedy.train import evaluate as train_evaluate
from prunegreedy.train import loop as train_loop
from prunegreedy.train import modes as train_modes
from prunegreedy.train import schedules as train_schedules
from prunegreedy.config import TrainConfig
from prunegreedy.errors import ConfigError

from helpers import cpu_norm, quick_train_cfg, same, snapshot, tiny_net


def test_step_schedule_is_the_papers_at_any_length():
    cfg = TrainConfig()  # milestones 0.3, 0.6, 0.9 of a stage, gamma 0.2
    lrs = [train_schedules.lr_at(e * 100, 5000, 0.1, "step", cfg) for e in (0, 14, 15, 29, 30, 45, 49)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.0008, 0.0008])
    # 5 epochs instead of 50: the same shape, scaled
    assert train_schedules.lr_at(150, 500, 0.1, "step", cfg) == pytest.approx(0.02)
    assert train_schedules.lr_at(149, 500, 0.1, "step", cfg) == pytest.approx(0.1)


def test_linear_schedule_with_warmup():
    cfg = TrainConfig(warmup=0.1)
    assert train_schedules.lr_at(0, 100, 0.1, "linear", cfg) == pytest.approx(0.1 * 1.0 * 1 / 10)
    assert train_schedules.lr_at(9, 100, 0.1, "linear", cfg) == pytest.approx(0.1 * 0.91)
    assert train_schedules.lr_at(50, 100, 0.1, "linear", cfg) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="unknown schedule 'exp'; valid: step, linear, cosine, constant, triangle"):
        train_schedules.lr_at(0, 10, 0.1, "exp", cfg)


def test_warm_up_never_raises_the_lr_above_the_schedules():
    """A warm-up of under a step once took that step at up to 1 / (warmup * steps) times the lr: 10x
    for a one-step stage, which left efficientnet_b3's eval-mode outputs NaN after a short fit."""
    cfg = TrainConfig(warmup=0.1)
    assert train_schedules.lr_at(0, 1, 0.05, "linear", cfg) == 0.05  # was 0.5
    assert train_schedules.lr_at(1, 15, 0.1, "constant", cfg) == 0.1  # was 0.1 * 2 / 1.5
    assert train_schedules.lr_at(0, 15, 0.1, "constant", cfg) == pytest.approx(0.1 / 1.5)  # still a ramp
    assert all(train_schedules.lr_at(s, total, 0.1, "constant", cfg) <= 0.1
               for total in range(1, 40) for s in range(total))


def test_a_restart_runs_the_schedule_again_over_the_steps_left():
    cfg = TrainConfig(warmup=0.1)
    assert train_schedules.lr_at(49, 100, 0.1, "linear", cfg, restart=50) == pytest.approx(0.1 * 0.51)
    assert train_schedules.lr_at(50, 100, 0.1, "linear", cfg, restart=50) == pytest.approx(0.1 * 1 / 5)  # warm-up again
    assert train_schedules.lr_at(55, 100, 0.1, "linear", cfg, restart=50) == pytest.approx(0.1 * 0.9)
    assert train_schedules.lr_at(75, 100, 0.1, "linear", cfg, restart=50) == pytest.approx(0.05)


def test_stage_freezes_prefix_bit_identically_and_trains_the_block(sample):
    net = tiny_net()
    prefix = nn.Sequential(*net.blocks[:2])
    prefix.train()  # the trainer must put it in eval mode itself
    block, head = net.blocks[2], net.heads[2]
    before_prefix, before_block = snapshot(prefix), snapshot(block)
    stats = train_loop.train(train_loop.Chain([(block, head)], prefix), sample, cpu_norm(sample), quick_train_cfg(),
                             0.5, 0.05, "linear", torch.device("cpu"), torch.Generator().manual_seed(0)).stats[0]
    assert same(before_prefix, snapshot(prefix))  # weights and BN running statistics untouched
    assert not prefix.training and all(not p.requires_grad for p in prefix.parameters())
    after = snapshot(block)
    assert not torch.equal(before_block["conv.weight"], after["conv.weight"])
    assert not torch.equal(before_block["bn.running_mean"], after["bn.running_mean"])
    assert stats.images == 768  # round(0.5 * ceil(1500 / 64)) = 12 steps of 64 images
    assert 0 < stats.train_loss < 5


def test_evaluate_and_ensemble(sample):
    net = tiny_net().eval()
    acc, probs = train_evaluate.evaluate(nn.Sequential(*net.blocks[:3]), net.blocks[3], net.heads[3], sample,
                                cpu_norm(sample), 128, torch.device("cpu"))
    assert probs.shape == (500, 10) and torch.allclose(probs.sum(1), torch.ones(500))
    with torch.no_grad():
        x = cpu_norm(sample)(sample.test_x)
        logits = torch.cat([net(x[i:i + 128]) for i in range(0, 500, 128)])  # same batches: same rounding
        expected = (logits.argmax(1) == sample.test_y).float().mean().item() * 100
    assert acc == pytest.approx(expected)
    one_hot = torch.nn.functional.one_hot(sample.test_y, 10).float()
    wrong = torch.roll(one_hot, 1, dims=1)
    # weights 2/6 and 4/6: the later head wins
    assert train_evaluate.ensemble_accuracy([wrong, one_hot], sample.test_y) == 100.0
    assert train_evaluate.ensemble_accuracy([one_hot, wrong], sample.test_y) == 0.0


def test_non_finite_eval_outputs_stop_with_the_first_module_that_made_them(sample):
    """NaN logits once gave an accuracy (argmax picks class 0) and surfaced only at export."""
    net = tiny_net().eval()
    prefix, block, head = nn.Sequential(*net.blocks[:3]), net.blocks[3], net.heads[3]
    with torch.no_grad():
        head.bn.running_var[0] = -1.0  # a negative variance: NaN from the head's BN on
    with pytest.raises(train_evaluate.NonFiniteOutputs,
                       match=r"^eval-mode outputs became NaN or infinite, first at the head's bn \(BatchNorm2d\);"):
        train_evaluate.evaluate(prefix, block, head, sample, cpu_norm(sample), 128, torch.device("cpu"))
    with torch.no_grad():
        net.blocks[1].bn.running_var[0] = -1.0  # earlier in the forward pass: the first one is named
    with pytest.raises(train_evaluate.NonFiniteOutputs, match=r"first at bn \(BatchNorm2d\);"):
        train_evaluate.evaluate(prefix, block, head, sample, cpu_norm(sample), 128, torch.device("cpu"))
    assert not any(m.training for m in net.modules())  # modes as they were


def test_evaluate_restores_each_modules_own_mode(sample):
    net = tiny_net()
    frozen = [train_modes.freeze(b) for b in net.blocks[:3]]
    block, head = net.blocks[3].train(), net.heads[3].train()
    train_evaluate.evaluate(nn.Sequential(*frozen), block, head, sample, cpu_norm(sample), 250, torch.device("cpu"))
    assert not any(m.training for b in frozen for m in b.modules())  # the fresh wrapper did not unfreeze them
    assert block.training and head.training
