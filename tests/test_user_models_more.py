"""Whole networks (model.arch) exported, evaluated and benchmarked like a plan's, and trained end-to-end
with prune-after-training cut through the dependency graph."""
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.data.base import Normalize
from prunegreedy.deploy.deployed import evaluate, open_export
from prunegreedy.deploy.export import check_images
from prunegreedy.nn.models import CifarResNet
from prunegreedy.nn.split import split_stages

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

runner = CliRunner()
# All 500 test images of the sample, so that eval of an export sees what the run measured.
TINY = ["--epochs", "0.2", "--set", "data.train_limit=200", "--set", "run.threads=1", "--quiet"]
TOLERANCE = 1e-4  # as test_export.py


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _first_convs(net: CifarResNet) -> list[int]:
    return [b.conv1.out_channels for layer in (net.layer1, net.layer2, net.layer3) for b in layer]


@pytest.fixture(scope="module")
def r20(tmp_path_factory, cache_dir):
    """resnet20 in 3 stages, greedy, half of every residual block's inner channels cut."""
    out = tmp_path_factory.mktemp("r20") / "run"
    invoke("run", "--out", out, "--model", "resnet20", "--prune-ratio", "0.5", *TINY)
    return out


@pytest.fixture(scope="module")
def exports(r20, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    for fmt in ("native", "torchscript", "onnx"):
        invoke("export", r20, "--out", root / fmt, "--format", fmt, "--with-head")
    invoke("export", r20, "--out", root / "features")
    return root


@pytest.fixture(scope="module")
def images(r20):
    spec = json.loads((r20 / "model.json").read_text())
    return Normalize(spec["mean"], spec["std"], torch.device("cpu"), channels_last=False)(
        check_images(spec["input_shape"]))


@pytest.mark.parametrize("fmt", ["native", "torchscript", "onnx"])
def test_every_format_gives_the_runs_network_outputs(r20, exports, images, fmt):
    net = prunegreedy.load_network(r20)
    with torch.no_grad():
        ref = net(images)
        assert (open_export(exports / fmt)(images) - ref).abs().max().item() <= TOLERANCE
        assert (open_export(exports / fmt)(images[:1]) - ref[:1]).abs().max().item() <= TOLERANCE


def test_native_export_loads_as_the_users_class_with_batchnorm_folded(r20, exports, images):
    spec = json.loads((exports / "native" / "backbone.json").read_text())
    assert spec["bn_folded"] is True and spec["network"]["arch"] == "resnet20" and len(spec["folded"]) == 21
    loaded = prunegreedy.load_network(exports / "native")
    assert type(loaded) is CifarResNet and not loaded.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    assert _first_convs(loaded) == [8] * 3 + [16] * 3 + [32] * 3 and loaded.fc.in_features == 64
    with torch.no_grad():
        assert torch.equal(loaded(images), open_export(exports / "native")(images))
    with torch.no_grad():  # load_backbone reads every native export: its features unless asked
        features = prunegreedy.load_backbone(exports / "native")(images)
    assert features.shape[1:] == (64, 8, 8)


def test_features_export_is_the_stages_without_the_classifier(r20, exports, images):
    net = prunegreedy.load_network(r20)
    stages, _ = split_stages(net, ["layer1", "layer2", "layer3"])
    with torch.no_grad():
        ref = torch.nn.Sequential(*stages)(images)
        got = prunegreedy.load_network(exports / "features")(images)
    assert got.shape == (len(images), 64, 8, 8) and (got - ref).abs().max().item() <= TOLERANCE


def test_eval_of_every_export_gives_the_runs_test_accuracy(r20, exports, sample):
    final_acc = json.loads((r20 / "run.json").read_text())["final_acc"]
    res = invoke("eval", exports / "native")
    assert f"test acc {final_acc:.2f}%" in res.stdout and "(equal)" in res.stdout
    for fmt in ("native", "torchscript", "onnx"):
        assert evaluate(open_export(exports / fmt), sample)["acc"] == final_acc


def test_bench_of_the_run_folder_and_of_an_export(r20, exports):
    invoke("bench", r20, "--with-head", "--repeats", "2", "--threads", "1")
    bench = json.loads((r20 / "bench.json").read_text())
    assert bench["with_head"] and bench["source"] == "run" and bench["throughput_batch64"] > 0
    invoke("bench", exports / "onnx", "--repeats", "2", "--threads", "1")
    assert json.loads((exports / "onnx" / "bench.json").read_text())["format"] == "onnx"


def test_int8_export_of_a_model_run(r20, tmp_path):
    res = invoke("export", r20, "--out", tmp_path / "q", "--format", "onnx", "--int8", "--with-head",
                 "--calibration", "100")
    assert "top-1 agreement" in res.stdout
    spec = json.loads((tmp_path / "q" / "backbone.json").read_text())
    assert spec["format"] == "onnx-int8" and spec["quantization"]["calibration"]["images"] == 100


def _e2e(out, *args):
    invoke("run", "--out", out, "--model", "resnet20", "--trainer", "end-to-end", *args, *TINY)
    return pd.read_csv(out / "stages.csv")


def test_end_to_end_is_one_stage_row_set_into_the_models_own_classifier(tmp_path, cache_dir):
    rows = _e2e(tmp_path / "e2e")
    assert list(zip(rows.stage, rows.phase)) == [(3, "trained")] and rows.width.tolist() == [64]
    assert rows.epochs.tolist() == [pytest.approx(0.6)] and rows.params_head.tolist() == [650]  # the 64 -> 10 fc
    meta = json.loads((tmp_path / "e2e" / "run.json").read_text())
    assert meta["trainer"] == "end-to-end" and meta["widths"] == [16, 32, 64] and "ensemble_acc" in meta
    assert type(prunegreedy.load_network(tmp_path / "e2e")) is CifarResNet


def test_prune_after_training_halves_the_internal_convs(tmp_path, cache_dir):
    out = tmp_path / "pat"
    rows = _e2e(out, "--prune-ratio", "0.5")
    assert list(zip(rows.stage, rows.phase)) == [(3, p) for p in ("trained", "pruned", "finetuned")]
    assert rows.width.tolist() == [64] * 3 and rows[rows.phase == "pruned"].removed.tolist() == [3 * (8 + 16 + 32)]
    net = prunegreedy.load_network(out)
    assert _first_convs(net) == [8] * 3 + [16] * 3 + [32] * 3 and net.fc.in_features == 64
    assert json.loads((out / "run.json").read_text())["widths"] == [16, 32, 64]
    invoke("export", out, "--out", tmp_path / "x", "--with-head")
    assert f"{json.loads((out / 'run.json').read_text())['final_acc']:.2f}%" in invoke("eval", tmp_path / "x").stdout


def test_prune_after_training_with_scope_all_narrows_the_stage_outputs(tmp_path, cache_dir):
    out = tmp_path / "all"
    rows = _e2e(out, "--prune-ratio", "0.5", "--set", "compress.scope=all")
    assert rows.width.tolist() == [64, 32, 32]
    net = prunegreedy.load_network(out)
    assert net.conv1.out_channels == 8 and net.layer2[0].conv2.out_channels == 16 and net.fc.in_features == 32
    assert json.loads((out / "run.json").read_text())["widths"] == [8, 16, 32]


def test_decoupled_cuts_every_stage_at_once_with_its_own_head(tmp_path, cache_dir):
    out = tmp_path / "dc"
    invoke("run", "--out", out, "--model", "resnet20", "--trainer", "decoupled", "--prune-ratio", "0.5", *TINY)
    rows = pd.read_csv(out / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == [(s, p) for p in ("trained", "pruned", "finetuned") for s in (1, 2, 3)]
    assert rows[rows.phase == "pruned"].removed.tolist() == [3 * 8, 3 * 16, 3 * 32]
    meta = json.loads((out / "run.json").read_text())
    assert meta["trainer"] == "decoupled" and meta["widths"] == [16, 32, 64] and meta["ensemble_acc"] is not None
    net = prunegreedy.load_network(out)
    assert type(net) is CifarResNet and _first_convs(net) == [8] * 3 + [16] * 3 + [32] * 3


def test_decoupled_cut_inside_the_schedule_with_scope_all(tmp_path, cache_dir, images):
    out = tmp_path / "dcat"
    invoke("run", "--out", out, "--model", "resnet20", "--trainer", "decoupled", "--prune-ratio", "0.5",
           "--set", "compress.at=0.5", "--set", "compress.scope=all", *TINY)
    rows = pd.read_csv(out / "stages.csv")
    assert rows.phase.tolist() == ["pruned"] * 3 + ["trained"] * 3 and rows.width.tolist()[-3:] == [8, 16, 32]
    net = prunegreedy.load_network(out)
    assert net.conv1.out_channels == 8 and net.fc.in_features == 32
    invoke("export", out, "--out", tmp_path / "x", "--format", "onnx", "--with-head")
    with torch.no_grad():
        assert (open_export(tmp_path / "x")(images) - net(images)).abs().max().item() <= TOLERANCE


def test_your_own_module_exports_and_reloads_onto_a_fresh_instance(tmp_path, cache_dir, images):
    from tests.test_user_models import TINY_SET, TwoBlocks

    net = TwoBlocks()
    run = prunegreedy.fit(out=tmp_path / "mine", model=net, split=["body1", "body2"], prune_ratio=0.5, epochs=0.2,
                          quiet=True, set=TINY_SET)
    for fmt in ("native", "onnx"):
        prunegreedy.export_run(run.path, tmp_path / fmt, fmt, with_head=True, model=TwoBlocks())
    loaded = prunegreedy.load_network(tmp_path / "native", model=TwoBlocks())
    assert type(loaded) is TwoBlocks and loaded.body2[0].out_channels == 8
    net.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert (loaded(images) - net(images)).abs().max().item() <= TOLERANCE
        assert (open_export(tmp_path / "onnx")(images) - net(images)).abs().max().item() <= TOLERANCE


def test_the_cli_exports_a_run_of_your_own_module_named_as_module_and_factory(tmp_path, cache_dir, images):
    from tests.test_user_models import TINY_SET, TwoBlocks

    net = TwoBlocks()
    run = prunegreedy.fit(out=tmp_path / "mine", model=net, split=["body1", "body2"], prune_ratio=0.5, epochs=0.2,
                          quiet=True, set=TINY_SET)
    invoke("export", run.path, "--out", tmp_path / "x", "--with-head", "--format", "onnx",
           "--model", "tests.test_user_models:TwoBlocks")
    net.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert (open_export(tmp_path / "x")(images) - net(images)).abs().max().item() <= TOLERANCE
    for bad, message in (("TwoBlocks", "--model takes MODULE:FACTORY (e.g. mynets:MyNet), got 'TwoBlocks'"),
                         ("tests.test_user_models:Nope", "--model tests.test_user_models:Nope: cannot import it"),
                         ("tests.test_user_models:TINY", "--model tests.test_user_models:TINY is a list, not a class"),
                         ("tests.test_user_models:ConfigError", "gave a ConfigError, not an nn.Module")):
        res = CliRunner().invoke(app, ["export", str(run.path), "--out", str(tmp_path / "y"), "--model", bad])
        assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "y").exists()

