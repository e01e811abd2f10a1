"""The fast recipe's parts (airbench): each one exactly, bad input, and a short greedy run of the fast net."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.config import ModelConfig, TrainConfig
from prunegreedy.data import base as data_base
from prunegreedy.data.augment import Augment, alternate_half, translate_flip
from prunegreedy.errors import ConfigError
from prunegreedy.compress.network import cut_stage
from prunegreedy.nn.fastcifar import FastCifar
from prunegreedy.nn.network import build_network, options_of
from prunegreedy.nn.layers import Whiten, dirac_
from prunegreedy.nn.models import build_model, default_split
from prunegreedy.nn.plans import PLANS
from prunegreedy.train import loop as train_loop
from prunegreedy.train import optim
from prunegreedy.train.datainit import init_stage
from prunegreedy.train.lookahead import Lookahead, decay_at
from prunegreedy.train.schedules import lr_at
from prunegreedy.train.tta import check_tta, evaluate_tta, tta_logits

from helpers import cpu_norm, quick_train_cfg, same, snapshot, tiny_net

runner = CliRunner()
TINY = ["--epochs", "0.2", "--set", "data.train_limit=200", "--set", "data.test_limit=100", "--set", "run.threads=1"]


def test_triangle_schedule_rises_to_one_at_its_peak_then_falls_to_its_end():
    cfg = TrainConfig(schedule="triangle", triangle_start=0.2, triangle_peak=0.25, triangle_end=0.0)
    lrs = [lr_at(s, 100, 2.0, "triangle", cfg) for s in (0, 10, 25, 50, 99)]
    assert lrs == pytest.approx([0.4, 2.0 * 0.52, 2.0, 2.0 * (1 - 25 / 75), 2.0 * (1 - 74 / 75)])


def test_lr_and_weight_decay_per_1024_examples_are_airbenchs():
    cfg = TrainConfig(lr_unit="per1024", batch_size=512, momentum=0.5, lr=3.0, weight_decay=0.03,
                      wd_on_bn_bias=True, bn_bias_lr_mult=64)
    assert optim.lr_scale(cfg) == pytest.approx(512 / (1024 * 3))  # momentum's gain 1 + 1 / (1 - 0.5) = 3
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = optim.make_optimizer([net], cfg.lr, cfg)
    optim.set_rates(opt, cfg.lr * optim.lr_scale(cfg), 0.0)
    main, bias = opt.param_groups
    assert [len(main["params"]), len(bias["params"])] == [3, 1]  # conv weight and bias, BN weight | BN bias
    assert [main["lr"], bias["lr"]] == pytest.approx([0.5, 32.0])
    # decoupled: each step decays by weight_decay * batch / (1024 * 3) = 0.005, whatever the group's lr
    assert main["lr"] * main["weight_decay"] == pytest.approx(0.005)
    assert bias["lr"] * bias["weight_decay"] == pytest.approx(0.005)


def test_default_optimizer_groups_are_todays():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = optim.make_optimizer([net], 0.1, TrainConfig(wd_on_bn_bias=False))
    assert [[p.shape for p in g["params"]] for g in opt.param_groups] == [[(4, 3, 3, 3)], [(4,), (4,), (4,)]]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert optim.lr_scale(TrainConfig()) == 1.0 and Augment.of(TrainConfig()) is None


def test_a_whitening_stems_bias_trains_only_for_its_epochs():
    cfg = TrainConfig(whiten_bias_epochs=2)
    net = FastCifar(10, (8, 8))
    opt = optim.make_optimizer([net], 0.1, cfg)
    stem = [g for g in opt.param_groups if g["until"] == 2]
    assert len(stem) == 1 and stem[0]["params"] == [net.whiten.bias]
    optim.set_rates(opt, 0.1, 1.99)
    assert stem[0]["lr"] == 0.1
    optim.set_rates(opt, 0.1, 2.0)
    assert stem[0]["lr"] == 0.0 and all(g["lr"] == 0.1 for g in opt.param_groups if g is not stem[0])
    assert "weight" not in dict(net.whiten.named_parameters())  # a buffer: never trained


def test_frozen_bn_scales_stay_one_and_biases_train(sample):
    net = tiny_net()
    block, head = net.blocks[0], net.heads[0]
    with torch.no_grad():
        block.bn.weight.fill_(0.5)
    bias = block.bn.bias.detach().clone()
    train_loop.train(train_loop.Chain([(block, head)]), sample.limit(128, 10), cpu_norm(sample),
                     quick_train_cfg(freeze_bn_scale=True, bn_bias_lr_mult=64), 1.0, 0.05, "linear",
                     torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(block.bn.weight, torch.ones(8)) and not block.bn.weight.requires_grad
    assert not torch.equal(block.bn.bias, bias)


def test_lookahead_pulls_to_the_average_and_copies_it_back():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    look = Lookahead([lin])
    with torch.no_grad():
        lin.weight.fill_(1.0)
    look.update(0.75)
    assert lin.weight.item() == 0.25
    with torch.no_grad():
        lin.weight.fill_(2.0)
    look.finish()  # the end of the schedule: the average, not the last weights
    assert lin.weight.item() == 0.25
    assert decay_at(50, 100, 0.8) == pytest.approx(0.1)


def test_a_loop_with_lookahead_ends_on_the_average(sample):
    net = tiny_net()
    block, head = net.blocks[0], net.heads[0]
    before = snapshot(nn.Sequential(block, head))
    # no pull within the 2 steps: the average is the start, which the end copies back (BN statistics too)
    train_loop.train(train_loop.Chain([(block, head)]), sample.limit(128, 10), cpu_norm(sample),
                     quick_train_cfg(lookahead_every=1000), 1.0, 0.05, "linear", torch.device("cpu"),
                     torch.Generator().manual_seed(0))
    after = snapshot(nn.Sequential(block, head))
    floats = lambda d: {k: v for k, v in d.items() if v.is_floating_point()}  # noqa: E731
    assert same(floats(before), floats(after))
    assert after["0.bn.num_batches_tracked"] == 2  # integer counters are the live ones


def _identity_norm():
    return data_base.Normalize((0.0, 0.0, 0.0), (1 / 255,) * 3, torch.device("cpu"), channels_last=False)


def test_alternating_flip_flips_a_fixed_half_on_even_epochs_and_the_other_half_on_odd():
    n = 10
    x = torch.randint(0, 255, (n, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(n)
    aug = Augment("alternate", 0, "zeros")
    gen = torch.Generator().manual_seed(7)
    half = alternate_half(n, 7)
    assert int(half.sum()) == n // 2
    for epoch in (0, 1, 2):
        (xb, yb), = data_base.train_batches(x, y, n, _identity_norm(), gen, aug=aug, epoch=epoch)
        flipped = torch.tensor([torch.equal(xb[i], x[yb[i]].flip(-1).float()) for i in range(n)])
        assert all(torch.equal(xb[i], x[yb[i]].float()) for i in range(n) if not flipped[i])
        assert torch.equal(flipped, half[yb] ^ bool(epoch % 2))


def test_translate_keeps_the_shape_and_reflects_at_the_border():
    x = torch.randint(0, 255, (2, 3, 6, 6), dtype=torch.uint8)
    out = translate_flip(x, torch.tensor([1, -2]), torch.tensor([-2, 0]), torch.tensor([False, True]), "reflect")
    assert out.shape == x.shape and out.dtype == torch.uint8
    ref = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    assert torch.equal(out[0].float(), ref[0, :, 3:9, 0:6])  # content moved up 1 and right 2
    assert torch.equal(out[1].float(), ref[1, :, 0:6, 2:8].flip(-1))
    with pytest.raises(ConfigError, match="must be below the image side"):
        translate_flip(x, torch.tensor([6, 0]), torch.tensor([0, 0]), torch.tensor([False, False]), "reflect")


def test_random_flip_with_zero_padding_is_random_crop_flip_draw_for_draw():
    x = torch.randint(0, 255, (5, 3, 8, 8), dtype=torch.uint8)
    aug = Augment("random", 4, "zeros")
    got = aug(x, torch.arange(5), 0, None, torch.Generator().manual_seed(3))
    assert torch.equal(got, data_base.random_crop_flip(x, 4, torch.Generator().manual_seed(3)))


def test_tta_averages_mirror_and_one_pixel_translations():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.randn(2, 3, 4, 4)
    flip = tta_logits(lin, x, "flip")
    assert torch.allclose(flip, tta_logits(lin, x.flip(-1), "flip"))  # mirror-invariant
    assert torch.allclose(flip, 0.5 * lin(x) + 0.5 * lin(x.flip(-1)))
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    moved = 0.5 * (tta_logits(lin, p[:, :, :4, :4], "flip") + tta_logits(lin, p[:, :, 2:, 2:], "flip"))
    assert torch.allclose(tta_logits(lin, x, "flip-translate"), 0.5 * flip + 0.5 * moved)


def test_tta_accuracy_of_a_toy_model(sample):
    ds = sample.limit(10, 40)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    norm = cpu_norm(sample)
    acc = evaluate_tta(nn.Sequential(), net, nn.Identity(), ds, norm, 16, torch.device("cpu"), None, "flip")
    with torch.no_grad():
        x = norm(ds.test_x)
        expected = 100.0 * ((net(x) + net(x.flip(-1))).argmax(1) == ds.test_y).float().mean().item()
    assert acc == pytest.approx(expected)


def test_whitening_weights_whiten_the_patches():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.5, 0.5, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(200, 3, 8, 8)).cumsum(-1)  # correlated in space too
    stem = Whiten(3, 2, eps=0.0)
    stem.init_from_data(images)
    assert stem.weight.shape == (24, 3, 2, 2)
    assert torch.equal(stem.weight[12:], -stem.weight[:12])
    y = F.conv2d(images, stem.weight[:12]).permute(1, 0, 2, 3).reshape(12, -1).double()
    assert torch.allclose(y @ y.T / y.shape[1], torch.eye(12, dtype=torch.float64), atol=1e-3)
    with pytest.raises(ConfigError, match="a whitening stem takes 3-channel images"):
        stem.init_from_data(torch.zeros(4, 1, 8, 8))


def test_dirac_init_passes_the_first_channels_through():
    conv = dirac_(nn.Conv2d(4, 6, 3, padding=1, bias=False))
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(conv(x)[:, :4], x)


def test_the_fast_network_is_airbench94_split_at_its_groups():
    net = build_model("fastcifar-24-56-64", 10, 32)
    # airbench counts the frozen whitening weight (288) as parameters: 121,336
    assert sum(p.numel() for p in net.parameters()) + net.whiten.weight.numel() == 121_336
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert default_split("fastcifar-64-256-256") == ["group1", "group2", "group3"]
    with pytest.raises(ConfigError, match=r"named fastcifar-W1-W2-\.\.\., one positive width per group"):
        build_model("fastcifar-64-x", 10, 32)


@pytest.mark.parametrize("args, message", [
    (["--set", "train.tta=maybe"], "unknown train.tta 'maybe'; valid: off, flip, flip-translate"),
    (["--set", "train.lookahead_decay=-0.5"], "train.lookahead_decay must be in [0, 1], got -0.5"),
    (["--set", "train.lookahead_every=-1"], "train.lookahead_every must be >= 0 steps"),
    (["--set", "train.flip=sometimes"], "unknown train.flip 'sometimes'; valid: random, alternate, off"),
    (["--set", "train.translate=-2"], "train.translate must be >= 0 pixels, got -2"),
    (["--set", "train.translate_pad=wrap"], "unknown train.translate_pad 'wrap'; valid: zeros, reflect"),
    (["--set", "train.lr_unit=per512"], "unknown train.lr_unit 'per512'; valid: step, per1024"),
    (["--set", "train.bn_bias_lr_mult=0"], "train.bn_bias_lr_mult must be a positive number, got 0.0"),
    (["--set", "train.triangle_peak=1"], "train.triangle_peak must be a fraction of the steps in [0, 1)"),
    (["--set", "train.triangle_end=-0.1"], "train.triangle_end must be a factor >= 0"),
    (["--set", "train.whiten_bias_epochs=-1"], "train.whiten_bias_epochs must be >= 0 epochs"),
    (["--model", "fastcifar-64-0"], "one positive width per group"),
])
def test_bad_recipe_options_exit_2_without_a_folder(tmp_path, cache_dir, args, message):
    out = tmp_path / "bad"
    res = runner.invoke(app, ["run", "--out", str(out), *args, *TINY])
    assert res.exit_code == 2 and message in res.output and not out.exists(), res.output


def test_tta_needs_square_images():
    check_tta("flip", (3, 32, 32))
    with pytest.raises(ConfigError, match="train.tta flip needs square images, got 32x48"):
        check_tta("flip", (3, 32, 48))


def test_a_short_greedy_run_of_the_fast_net_pruned_records_plain_and_tta_accuracy(tmp_path, cache_dir):
    out = tmp_path / "fast"
    run = prunegreedy.fit("cifar10-fast-compress", out=out, set={
        "data": {"name": "cifar10-sample", "train_limit": 200, "test_limit": 100},
        "train": {"epochs": 1, "batch_size": 50, "lookahead_every": 0}, "run": {"threads": 1, "quiet": True}})
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "finished" and meta["widths"] == [128, 128]  # two stages: groups 1-2, group 3
    assert 0 <= meta["final_acc"] <= 100 and 0 <= meta["final_acc_tta"] <= 100
    assert math.isclose(meta["final_acc"], run.meta["final_acc"])
    net = prunegreedy.load_network(out)
    assert net.whiten.weight.abs().sum() > 0  # the whitening filters set from data, saved and reloaded
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [net.group1.conv2.out_channels, net.group2.conv2.out_channels, net.group3.conv2.out_channels] == \
        [32, 128, 128]
    saved = load_file(out / "model.safetensors")
    scales = [k for k in saved if k.endswith(("norm1.weight", "norm2.weight"))]
    assert len(scales) == 6 and all(torch.equal(saved[k], torch.ones_like(saved[k])) for k in scales), \
        "a cut inside the schedule must leave the BN scales frozen at 1"


def test_a_group_whose_input_was_cut_starts_from_a_fresh_dirac_init():
    torch.manual_seed(0)
    net = build_network("fastcifar-8-16-16", 10, 32)
    block, head = net.stages[0].module, net.head(0, (8, 15, 15))
    nxt = net.stages[1].module
    cut_stage(net, 0, head, (3, 32, 32), 0.5, "l1", scope="all")
    conv = next(m for m in nxt.modules() if isinstance(m, nn.Conv2d))  # the next group's first conv
    zero = [i for i in range(16) if conv.weight[i].abs().sum() == 0]
    assert len(zero) == 4  # dirac filters of the 4 removed input channels of the first 8
    assert init_stage(nxt) == 1 and init_stage(block) == 1
    w = conv.weight
    assert w.shape == (16, 4, 3, 3) and all(w[i].abs().sum() > 0 for i in range(16))
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(F.conv2d(x, w[:4], padding=1), x)  # the identity on the 4 inputs it now has


ALL_PARTS = {"lr_unit": "per1024", "lr": 11.5, "momentum": 0.85, "nesterov": True, "weight_decay": 0.0153,
             "bn_bias_lr_mult": 64, "freeze_bn_scale": True, "schedule": "triangle", "lookahead_every": 2,
             "flip": "alternate", "translate": 2, "translate_pad": "reflect", "tta": "flip"}


@pytest.mark.parametrize("trainer", ["greedy", "decoupled", "end-to-end"])
def test_the_papers_plans_take_every_part_in_every_trainer(tmp_path, cache_dir, trainer):
    out = tmp_path / trainer
    prunegreedy.fit("quick", out=out, set={
        "data": {"train_limit": 200, "test_limit": 100}, "train": {**ALL_PARTS, "trainer": trainer, "epochs": 0.7},
        "run": {"threads": 1, "quiet": True}})
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "finished" and "final_acc_tta" in meta


def test_a_loop_resumed_with_lookahead_ends_where_the_uninterrupted_one_does(sample):
    ds, norm = sample.limit(192, 10), cpu_norm(sample)  # 3 steps an epoch
    cfg = quick_train_cfg(lookahead_every=2, flip="alternate", translate=2, translate_pad="reflect")

    def run(resume=None, weights=None):
        net = tiny_net()
        block, head = net.blocks[0], net.heads[0]
        if weights is not None:
            nn.Sequential(block, head).load_state_dict(weights)
        saved = []

        def keep(st):  # as a record saves it: copied at once (the momentum buffers train on)
            tensors, scalars = st.to_saved()
            saved.append(({k: v.clone() for k, v in tensors.items()}, scalars, snapshot(nn.Sequential(block, head))))
        train_loop.train(train_loop.Chain([(block, head)]), ds, norm, cfg, 2.0, 0.05, "linear",
                         torch.device("cpu"), torch.Generator().manual_seed(0), resume=resume, on_epoch=keep)
        return snapshot(nn.Sequential(block, head)), saved

    whole, saved = run()
    tensors, scalars, weights = saved[0]  # after epoch 1 (step 3): one pull done, the average is not the weights
    assert scalars["lookahead_count"] == 16 and not torch.equal(tensors["lookahead.0"], weights["0.conv.weight"])
    resumed, _ = run(train_loop.LoopState.from_saved(tensors, scalars), weights)
    assert same(whole, resumed)


# model.act and model.dirac: airbench's activation and init for the paper's blocks.
PAPER_TINY = {"data": {"train_limit": 200, "test_limit": 100}, "run": {"threads": 1, "quiet": True}}


def _made_blocks(name: str, options: dict, seed: int = 0) -> list[nn.Module]:
    """Every block of plan `name` made in order, each on the previous one's width, under `seed`."""
    net = build_network(name, 10, 32, {"width_mult": 1 / 16, **options})
    torch.manual_seed(seed)
    c = 3
    for j in range(len(net.stages)):
        c = net.module(j, c).out_channels
    return net.modules_of()


@pytest.mark.parametrize("name", sorted(PLANS))
def test_a_gelu_plan_has_gelu_in_every_block_and_a_relu_plan_keeps_todays_spec(name):
    gelu, relu = _made_blocks(name, {"act": "gelu"}), _made_blocks(name, {})
    assert [type(b.act) for b in gelu] == [nn.GELU] * len(gelu)
    assert [type(b.act) for b in relu] == [nn.ReLU] * len(relu)
    assert [b.spec() for b in gelu] == [{**b.spec(), "act": "gelu"} for b in relu]
    assert all("act" not in b.spec() for b in relu)  # the spec every block wrote before blocks took an act
    assert options_of(ModelConfig()) == {}  # today's options: nothing new in model.json's args


@pytest.mark.parametrize("name, j", [("cifar10-k2", 0), ("cifar10-k2", 1), ("cifar10-k1", 1), ("vgg11", 1)])
def test_dirac_makes_a_blocks_first_filters_the_identity_and_draws_nothing(name, j):
    plain, dirac = _made_blocks(name, {})[j].conv, _made_blocks(name, {"dirac": True})[j].conv
    n = min(dirac.in_channels, dirac.out_channels)
    x = torch.randn(2, dirac.in_channels, 6, 6)
    assert torch.equal(F.conv2d(x, dirac.weight[:n], padding=1), x[:, :n])
    # the other filters (and every later draw) are the ones a plain block gets from the same seed
    assert torch.equal(dirac.weight[n:], plain.weight[n:]) and not torch.equal(dirac.weight, plain.weight)


def test_a_gelu_run_with_dirac_and_a_cut_reloads_and_exports_as_gelu(tmp_path, cache_dir):
    run = prunegreedy.fit("quick", out=tmp_path / "run", prune_ratio=0.5, epochs=0.2, set={
        **PAPER_TINY, "model": {"widths": [8, 8, 16, 16], "act": "gelu", "dirac": True}})
    spec = json.loads((run.path / "model.json").read_text())
    assert spec["args"]["act"] == "gelu" and spec["args"]["dirac"] is True
    x = torch.randn(4, 3, 32, 32)
    trained = run.backbone().to(memory_format=torch.contiguous_format)
    reloaded = prunegreedy.load_network(run.path)
    assert [type(b.act) for b in reloaded[:4]] == [nn.GELU] * 4
    assert [b.conv.out_channels for b in reloaded[:4]] == [4, 4, 8, 8]
    with torch.no_grad():
        assert torch.equal(trained(x), reloaded(x))
    summary = prunegreedy.export_run(run.path, tmp_path / "export", "native", with_head=True)
    exported = prunegreedy.load_network(tmp_path / "export")
    acts = [type(m) for m in exported[:4].modules() if isinstance(m, (nn.GELU, nn.ReLU))]  # stages: fx modules
    assert summary["export_max_diff"] == 0.0 and acts == [nn.GELU] * 4
    with torch.no_grad():  # BatchNorm folded into the convs: equal up to float rounding (export.TOLERANCE)
        assert (exported(x) - reloaded(x)).abs().max().item() <= 1e-4 * max(1.0, reloaded(x).abs().max().item())


NOT_DECLARED = "error: model.{opt} applies to the networks that declare it (the paper's nets: " + ", ".join(PLANS) + \
    "); {net} takes model.k, model.head, model.head_pool"


@pytest.mark.parametrize("args, message", [
    (["--set", "model.act=tanh"], "error: unknown model.act 'tanh'; valid: relu, gelu"),
    (["--set", "model.dirac=maybe"], "error: model.dirac: expected true or false, got 'maybe'"),
    (["--model", "resnet20", "--set", "model.act=gelu"], NOT_DECLARED.format(opt="act", net="resnet20")),
    (["--model", "resnet20", "--set", "model.dirac=true"], NOT_DECLARED.format(opt="dirac", net="resnet20")),
    (["--model", "fastcifar-8-16", "--set", "model.act=gelu"], NOT_DECLARED.format(opt="act", net="fastcifar-8-16")),
])
def test_bad_or_undeclared_act_and_dirac_are_one_line_exit_2_and_no_folder(tmp_path, cache_dir, args, message):
    out = tmp_path / "bad"
    res = runner.invoke(app, ["run", "--out", str(out), *args, *TINY])
    assert res.exit_code == 2 and res.stderr.strip() == message and not out.exists(), res.output
