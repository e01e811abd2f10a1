"""Deployable backbone: BN folding, the three export formats, loading, eval, bench, and bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.deploy.backbone import SPEC_FILE
from prunegreedy.cli import app
from prunegreedy.data.base import Normalize
from prunegreedy.deploy.deployed import evaluate
from prunegreedy.deploy.deployed import open_export
from prunegreedy.errors import ExportError
from prunegreedy.errors import SpecError
from prunegreedy.deploy.export import check_images
from prunegreedy.deploy.export import export_run
from prunegreedy.deploy.network import deployable, fold_trained, load_trained

# The CLI's main() silences these; CliRunner calls the app directly (fvcore scripts at import).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# Widths 16,16,32,32 pruned by half: big enough that a safetensors header is under 5% of the file.
TINY = ["--set", "train.epochs=0.2", "--set", "compress.finetune_epochs=0.1", "--set", "model.widths=16,16,32,32",
        "--prune-ratio", "0.5", "--set", "run.threads=1", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "pruned"
    res = invoke("run", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def exports(run, tmp_path_factory):
    """Export folders by name: native features-only, and each format with the head."""
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for name, fmt, head in [("features", "native", False), ("native", "native", True),
                            ("torchscript", "torchscript", True), ("onnx", "onnx", True)]:
        res = invoke("export", run, "--out", root / name, "--format", fmt, *(["--with-head"] if head else []))
        assert res.exit_code == 0, res.output
        made[name] = root / name
    return made


@pytest.fixture(scope="session")
def batch(run):
    """The trained network (with its last head), its spec and a normalised batch of real images."""
    net, heads, spec = load_trained(run)
    x = Normalize(spec["mean"], spec["std"], torch.device("cpu"), channels_last=False)(
        check_images(spec["input_shape"]))
    return (net, heads), spec, x


def test_native_round_trip_is_bit_identical_to_folding(exports, batch):
    (net, heads), spec, x = batch
    folded_net, folded_heads, _ = fold_trained(net, heads, spec)
    with torch.no_grad():
        cases = [(False, exports["features"], deployable(net, heads, False)(x)),
                 (True, exports["native"], deployable(net, heads, True)(x))]
        for with_head, folder, ref in cases:
            folded = deployable(folded_net, folded_heads, with_head)(x)
            loaded = prunegreedy.load_backbone(folder, with_head=with_head)
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
            out = loaded(x)
            assert torch.equal(out, folded)
            assert (out - ref).abs().max().item() <= 1e-5
            assert loaded.export_spec["mean"] == spec["mean"] and loaded.export_spec["classes"] == spec["classes"]
        # features unless asked: the export with its head loads without it
        features = deployable(folded_net, folded_heads, False)(x)
        assert torch.equal(prunegreedy.load_backbone(exports["native"])(x), features)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_torchscript_and_onnx_match_pytorch(exports, batch, fmt):
    (net, heads), _, x = batch
    net = deployable(net, heads, True)
    model = open_export(exports[fmt])
    with torch.no_grad():
        assert (model(x) - net(x)).abs().max().item() <= 1e-4
        assert (model(x[:1]) - net(x[:1])).abs().max().item() <= 1e-4  # any batch size, not just the traced one


def _tampered(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    spec = json.loads((dst / SPEC_FILE).read_text())
    edit(spec)
    (dst / SPEC_FILE).write_text(json.dumps(spec))
    return dst


def _widen_last_head(spec):  # builds (a wider hidden layer) but no longer matches the weights
    spec["network"]["heads"]["3"]["hidden"] += 1


@pytest.mark.parametrize("edit, message, before_build", [
    (lambda s: s["network"]["heads"]["1"].update(type="resnet"),
     "head 1: unknown head type 'resnet'; valid: aux, pooled, mlp-sr, max, vgg", True),
    (lambda s: s["network"]["args"]["widths"].__setitem__(0, 17),
     "pruning record cuts 16 filters of 'conv', which has 17", False),
    (_widen_last_head, "does not match its spec: 4.body.0.bias has shape (32,), spec says (33,)", False),
])
def test_tampered_spec_is_refused_before_weights_load(exports, tmp_path, monkeypatch, edit, message, before_build):
    folder = _tampered(exports["native"], tmp_path / "t", edit)

    def forbidden(*a, **k):
        raise AssertionError("reached a step the bad spec must never reach")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", forbidden)
    if before_build:
        monkeypatch.setattr("prunegreedy.compress.network.build_network", forbidden)
    with pytest.raises(SpecError) as err:
        prunegreedy.load_backbone(folder, with_head=True)
    assert message in str(err.value)


def test_changed_weights_are_refused(exports, tmp_path):
    folder = shutil.copytree(exports["native"], tmp_path / "t")
    data = bytearray((folder / "backbone.safetensors").read_bytes())
    data[-1] ^= 0x01  # same shapes, one weight changed
    (folder / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="was changed after export"):
        prunegreedy.load_backbone(folder)


def test_native_file_is_four_bytes_per_parameter(exports):
    for name in ("features", "native"):
        model = prunegreedy.load_backbone(exports[name], with_head=name == "native")
        params = sum(p.numel() for p in model.parameters())
        assert params == json.loads((exports[name] / SPEC_FILE).read_text())["params"]
        size = (exports[name] / "backbone.safetensors").stat().st_size
        assert abs(size / (4 * params) - 1) < 0.05


def test_eval_equals_the_run_final_acc(run, exports, sample):
    final_acc = json.loads((run / "run.json").read_text())["final_acc"]
    res = invoke("eval", exports["native"])
    assert res.exit_code == 0, res.output
    assert f"test acc {final_acc:.2f}%" in res.stdout and "(equal)" in res.stdout
    for fmt in ("native", "torchscript", "onnx"):
        assert evaluate(open_export(exports[fmt]), sample)["acc"] == final_acc


def test_bench_writes_bench_json_into_the_run(run, exports):
    res = invoke("bench", run, "--repeats", "2", "--threads", "1")
    assert res.exit_code == 0, res.output
    bench = json.loads((run / "bench.json").read_text())
    assert {"latency_ms_batch1", "throughput_batch64", "threads", "repeats", "torch"} <= set(bench)
    assert bench["threads"] == 1 and bench["repeats"] == 2 and bench["throughput_batch64"] > 0
    res = invoke("bench", exports["onnx"], "--repeats", "2", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert json.loads((exports["onnx"] / "bench.json").read_text())["format"] == "onnx"


def test_missing_onnx_is_one_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails as if not installed
    with pytest.raises(ExportError, match=r"pip install 'prunegreedy\[deploy\]'"):
        export_run(run, tmp_path / "o", "onnx")
    assert not (tmp_path / "o").exists()


def _copy_run(run: Path, dst: Path, edit_file: str, edit) -> Path:
    shutil.copytree(run, dst)
    data = json.loads((dst / edit_file).read_text())
    edit(data)
    (dst / edit_file).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("case, message", [
    ("not_a_run", "is not a run folder (no run.json)"),
    ("no_stage", "has no finished stage yet"),
    ("tampered_model", "does not match its spec"),
    ("bad_format", "unknown export format 'tflite'; valid: native, torchscript, onnx"),
    ("out_taken", "exists and is not an empty folder"),
    ("eval_features", "exported without a head (features only)"),
    ("eval_run", "is a run folder, not an export"),
    ("missing_file", "missing file"),
    ("bench_nothing", "is not an export folder (no backbone.json)"),
])
def test_bad_input_is_one_line_exit_2(run, exports, tmp_path, case, message):
    out = tmp_path / "out"
    cases = {
        "not_a_run": lambda: ["export", tmp_path, "--out", out],
        "no_stage": lambda: ["export", _copy_run(run, tmp_path / "r", "run.json",
                                                 lambda d: d.update(status="running", stages_done=0)), "--out", out],
        "tampered_model": lambda: ["export", _copy_run(run, tmp_path / "r", "model.json", _widen_model), "--out", out],
        "bad_format": lambda: ["export", run, "--out", out, "--format", "tflite"],
        "out_taken": lambda: ["export", run, "--out", exports["native"]],
        "eval_features": lambda: ["eval", exports["features"]],
        "eval_run": lambda: ["eval", run],
        "missing_file": lambda: ["eval", _delete(shutil.copytree(exports["onnx"], tmp_path / "e"), "backbone.onnx")],
        "bench_nothing": lambda: ["bench", tmp_path],
    }
    res = invoke(*cases[case]())
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def _widen_model(spec):  # a consistent architecture whose first head no longer matches the weights
    spec["heads"]["0"]["hidden"] += 1


def _delete(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def test_import_stays_light():
    subprocess.run([sys.executable, "-c", "import sys, prunegreedy; assert 'torch' not in sys.modules"], check=True)
    from prunegreedy.deploy.network import load_backbone

    assert prunegreedy.load_backbone is load_backbone
