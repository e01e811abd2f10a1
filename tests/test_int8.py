"""Int8 ONNX export: calibration on training images, agreement with fp32, loading, report, bad input."""
import json
import shutil
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from prunegreedy.cli import app
from prunegreedy.data.base import Normalize
from prunegreedy.deploy import quantize
from prunegreedy.deploy.deployed import open_export
from prunegreedy.errors import ExportError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# Two epochs per stage: about 28 % on the sample's test split (chance: 10 %), predictions spread
# over most classes, so agreement with fp32 is not trivially 100 %. About 8 s on one core.
TINY = ["--set", "train.epochs=2", "--set", "compress.finetune_epochs=0.2", "--set", "model.widths=16,16,32,32",
        "--prune-ratio", "0.5", "--set", "run.threads=1", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


class RecordingReader(quantize.CalibrationReader):
    """The calibration reader, remembering the uint8 images it was given and the batches it fed."""
    made: list = []

    def __init__(self, images, *args):
        super().__init__(images, *args)
        self.fed = []
        RecordingReader.made.append(self)

    def get_next(self):
        batch = super().get_next()
        if batch is not None:
            self.fed.append(torch.from_numpy(batch[self.input_name]).clone())
        return batch


@pytest.fixture(scope="session")
def run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "pruned"
    res = invoke("run", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def exports(run, tmp_path_factory):
    """fp32 ONNX beside the run, and the int8 export inside it (where the report looks), with the
    calibration readers its export made."""
    fp32 = tmp_path_factory.mktemp("exports") / "fp32"
    res = invoke("export", run, "--out", fp32, "--format", "onnx", "--with-head")
    assert res.exit_code == 0, res.output
    RecordingReader.made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize, "CalibrationReader", RecordingReader)
        res = invoke("export", run, "--out", run / "int8", "--format", "onnx", "--int8", "--with-head")
    assert res.exit_code == 0, res.output
    assert "top-1 agreement" in res.stdout
    return {"fp32": fp32, "int8": run / "int8", "readers": list(RecordingReader.made)}


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_calibration_reads_training_images_only(exports, sample):
    (reader,) = exports["readers"]
    images = reader.images
    assert images.dtype == torch.uint8 and len(images) == quantize.DEFAULT_CALIBRATION
    assert _rows(images) <= _rows(sample.train_x)
    assert not _rows(images) & _rows(sample.test_x)
    fed = torch.cat(reader.fed)  # what ONNX Runtime received: those images, normalised, each once
    assert torch.equal(fed, Normalize(sample.mean, sample.std, torch.device("cpu"), channels_last=False)(images))
    spec = json.loads((exports["int8"] / "backbone.json").read_text())
    assert spec["quantization"]["calibration"] == {"images": 1000, "split": "train", "dataset": "cifar10-sample",
                                                   "of": 1500, "seed": 0}


def test_int8_agrees_with_fp32_on_the_test_split(exports, sample):
    norm = Normalize(sample.mean, sample.std, torch.device("cpu"), channels_last=False)
    x = norm(sample.test_x)
    fp32, int8 = open_export(exports["fp32"]), open_export(exports["int8"])
    pf, pq = fp32(x).argmax(1), int8(x).argmax(1)
    # A trained model, not a constant one: several classes predicted, accuracy well above chance.
    assert len(pf.unique()) >= 5 and (pf == sample.test_y).float().mean() > 0.2
    agreement = (pf == pq).float().mean().item()
    assert agreement >= 0.95
    spec = json.loads((exports["int8"] / "backbone.json").read_text())
    q = spec["quantization"]
    assert spec["format"] == "onnx-int8" and q["per_channel"] and q["format"] == "QDQ"
    assert q["check"]["images"] == len(sample.test_x) and abs(q["check"]["top1_agreement"] - agreement) <= 0.01
    assert q["check"]["max_abs_diff"] > 0  # really quantized
    assert q["bytes"] == (exports["int8"] / "backbone.int8.onnx").stat().st_size < q["fp32_bytes"]


def test_eval_bench_and_report_read_the_int8_export(run, exports, tmp_path):
    res = invoke("eval", exports["int8"])
    assert res.exit_code == 0, res.output
    assert "onnx-int8 export" in res.stdout
    res = invoke("bench", exports["int8"], "--repeats", "2", "--threads", "1")
    assert res.exit_code == 0, res.output
    bench = json.loads((exports["int8"] / "bench.json").read_text())
    assert bench["format"] == "onnx-int8" and bench["throughput_batch64"] > 0
    res = invoke("report", run, "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "rep" / "summary.csv").iloc[0]
    spec = json.loads((exports["int8"] / "backbone.json").read_text())
    assert row["agreement_int8"] == spec["quantization"]["check"]["top1_agreement"]
    assert row["final_acc_int8"] == spec["quantization"]["check"]["test_acc_int8"]
    assert row["throughput_batch64_int8"] == bench["throughput_batch64"]
    assert row["bytes_int8"] == spec["quantization"]["bytes"]
    assert "Int8 top-1 agreement" in (tmp_path / "rep" / "report.html").read_text()


def test_tampered_int8_file_is_refused(exports, tmp_path):
    folder = shutil.copytree(exports["int8"], tmp_path / "t")
    data = bytearray((folder / "backbone.int8.onnx").read_bytes())
    data[-1] ^= 0x01
    (folder / "backbone.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="was changed after export"):
        open_export(folder)
    res = invoke("eval", folder)
    assert res.exit_code == 2 and "was changed after export" in res.stderr


def test_low_agreement_refuses_and_leaves_nothing(run, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # no model can pass: the late failure path
    res = invoke("export", run, "--out", tmp_path / "o", "--format", "onnx", "--int8", "--with-head",
                 "--calibration", "64")
    assert res.exit_code == 2 and "agrees with fp32 on only" in res.stderr, res.output
    assert not (tmp_path / "o").exists()


def test_missing_onnx_is_one_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails as if not installed
    res = invoke("export", run, "--out", tmp_path / "o", "--format", "onnx", "--int8")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "pip install 'prunegreedy[deploy]'" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "native", "--int8"], "--int8 needs --format onnx (ONNX Runtime quantizes it), got --format native"),
    (["--format", "torchscript", "--int8"], "--int8 needs --format onnx"),
    (["--format", "onnx", "--int8", "--calibration", "0"], "--calibration must be a number of training images >= 1"),
    (["--format", "onnx", "--int8", "--calibration", "1501"],
     "--calibration 1501 is more than the 1,500 training images of cifar10-sample"),
    (["--format", "onnx", "--calibration", "10"], "--calibration applies to --int8 exports"),
])
def test_bad_input_is_one_line_exit_2(run, tmp_path, args, message):
    res = invoke("export", run, "--out", tmp_path / "o", *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "o").exists()
