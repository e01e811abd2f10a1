"""Int8 ONNX: static quantization of a fp32 ONNX export with ONNX Runtime, and the check that it agrees.

The choices, and why (measured on the bundled sample, see the README's int8 subsection):

- Static, QDQ: activation ranges are fixed ahead from calibration images, so ONNX Runtime fuses
  every QuantizeLinear/DequantizeLinear pair around a conv into an int8 kernel (QLinearConv); the
  file stays a standard ONNX graph. Per-channel weights: pruned convs keep filters of very
  different magnitudes, and one scale per tensor would flatten the small ones.
- Calibration reads training images only, so the test split stays a fair judge of the int8 model.
- Signed int8 activations and weights (S8S8): the same grid as unsigned activations here (after
  a ReLU the calibrated range starts at 0 either way), and as fast or faster on this CPU.
- MinMax calibration: agreement with fp32 equal to or higher than Percentile's on the sample's
  small models, and it keeps two numbers per tensor and batch where Percentile keeps every
  activation of every calibration image in memory.
- Logits stay float (the output of the last Gemm is not requantized): int8 logits are rounded to
  1/255 of the calibration range and clipped where test logits exceed it, which flipped 2-4 % of a
  small model's predictions on the sample.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.base import Normalize
from ..errors import ExportError
from ..fileio import atomic_write
from .deployed import Forward, onnx_forward, require_onnx

DEFAULT_CALIBRATION = 1000  # training images
CALIBRATION_BATCH = 64
CALIBRATION_SEED = 0
MAX_CHECK_IMAGES = 10_000  # test images for the agreement check, evenly spaced (CIFAR-10: all of them)
MIN_AGREEMENT = 0.90  # top-1 agreement with fp32 below this refuses the export
EVAL_BATCH = 500
# What quantize_static is asked for; recorded in the export's JSON.
SETTINGS = {"format": "QDQ", "per_channel": True, "activations": "QInt8", "weights": "QInt8",
            "calibrate_method": "MinMax", "reduce_range": False, "float_logits": True,
            "pre_process": "quant_pre_process"}


def require_quantization():
    """onnxruntime.quantization, or the one-line error of `require_onnx` naming the extra."""
    require_onnx()
    from onnxruntime import quantization

    return quantization


def check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ExportError(f"--calibration must be a number of training images >= 1, got {n!r}")


@dataclass
class Calibration:
    """What an int8 export needs besides the network: uint8 images, never normalised yet."""
    images: torch.Tensor  # training images for the activation ranges
    check: torch.Tensor  # test images for the agreement check (never calibrated on)
    check_labels: torch.Tensor
    dataset: str
    train_images: int  # size of the training split the images were drawn from
    seed: int


def calibration_from(ds, n: int, seed: int = CALIBRATION_SEED) -> Calibration:
    """`n` training images drawn without replacement (fixed seed), and up to MAX_CHECK_IMAGES test images."""
    check_count(n)
    if not hasattr(ds, "train_x"):
        raise ExportError(f"int8 calibration reads datasets held in memory; {ds.name} is streamed from disk")
    if n > ds.num_train:
        raise ExportError(f"--calibration {n} is more than the {ds.num_train:,} training images of {ds.name}")
    idx = torch.randperm(ds.num_train, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    m = min(len(ds.test_x), MAX_CHECK_IMAGES)
    test_idx = torch.linspace(0, len(ds.test_x) - 1, m).long()
    return Calibration(ds.train_x[idx], ds.test_x[test_idx], ds.test_y[test_idx], ds.name, ds.num_train, seed)


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader (it is duck-typed: `get_next`): normalised image batches."""

    def __init__(self, images: torch.Tensor, input_name: str, mean, std):
        self.images, self.input_name = images, input_name
        self.norm = Normalize(mean, std, torch.device("cpu"), channels_last=False)
        self.start = 0

    def get_next(self) -> dict | None:
        if self.start >= len(self.images):
            return None
        batch = self.images[self.start:self.start + CALIBRATION_BATCH]
        self.start += CALIBRATION_BATCH
        return {self.input_name: self.norm(batch).numpy()}

    def rewind(self) -> None:
        self.start = 0


def compare(fp32: Forward, int8: Forward, calib: Calibration, mean, std, logits: bool) -> dict:
    """What the int8 model changes on the check images, batch by batch (features can be large): max
    output difference; with logits, top-1 agreement with fp32 and both test accuracies (%)."""
    norm = Normalize(mean, std, torch.device("cpu"), channels_last=False)
    n, max_diff = len(calib.check), torch.tensor(0.0)
    abs_diff, abs_ref, same, right_fp32, right_int8 = 0.0, 0.0, 0, 0, 0
    for i in range(0, n, EVAL_BATCH):
        x, y = norm(calib.check[i:i + EVAL_BATCH]), calib.check_labels[i:i + EVAL_BATCH]
        a, b = fp32(x).float(), int8(x).float()
        max_diff = torch.maximum(max_diff, (a - b).abs().max())  # keeps a NaN
        abs_diff, abs_ref = abs_diff + (a - b).abs().sum().item(), abs_ref + a.abs().sum().item()
        if logits:
            pa, pb = a.argmax(1), b.argmax(1)
            same, right_fp32, right_int8 = (same + (pa == pb).sum().item(), right_fp32 + (pa == y).sum().item(),
                                            right_int8 + (pb == y).sum().item())
    out = {"images": n, "split": "test", "dataset": calib.dataset, "max_abs_diff": round(max_diff.item(), 6)}
    if logits:
        out.update(top1_agreement=round(same / n, 6), test_acc_fp32=round(100.0 * right_fp32 / n, 4),
                   test_acc_int8=round(100.0 * right_int8 / n, 4))
    else:
        out["mean_rel_diff"] = round(abs_diff / max(abs_ref, 1e-12), 6)
    return out


def quantize_onnx(fp32: Path, out: Path, calib: Calibration, mean, std, logits: bool) -> dict:
    """Pre-process and quantize the fp32 ONNX file `fp32` into `out` (written atomically), compare
    the two on the check images, and return what the export's JSON records. Refuses (ExportError)
    when top-1 agreement is below MIN_AGREEMENT."""
    q, (onnx, _) = require_quantization(), require_onnx()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(fp32)).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="prunegreedy-int8-") as tmp:
        pre, qdq = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32), str(pre))
            q.quantize_static(
                str(pre), str(qdq), CalibrationReader(calib.images, input_name, mean, std),
                quant_format=getattr(q.QuantFormat, SETTINGS["format"]), per_channel=SETTINGS["per_channel"],
                reduce_range=SETTINGS["reduce_range"], activation_type=getattr(q.QuantType, SETTINGS["activations"]),
                weight_type=getattr(q.QuantType, SETTINGS["weights"]),
                calibrate_method=getattr(q.CalibrationMethod, SETTINGS["calibrate_method"]),
                extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"] if SETTINGS["float_logits"] else []})
        except Exception as e:  # ONNX Runtime's tools raise many untyped errors; all mean "no int8 file"
            raise ExportError(f"int8 quantization failed: {e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None
        data = qdq.read_bytes()
    atomic_write(out, lambda f: f.write(data))
    measured = compare(onnx_forward(fp32), onnx_forward(out), calib, mean, std, logits)
    agreement = measured.get("top1_agreement")
    if not measured["max_abs_diff"] < float("inf"):  # also NaN
        raise ExportError(f"the int8 model gives non-finite outputs (max diff {measured['max_abs_diff']}); "
                          "not exported")
    if agreement is not None and not agreement >= MIN_AGREEMENT:
        raise ExportError(f"the int8 model agrees with fp32 on only {100 * agreement:.1f} % of "
                          f"{measured['images']:,} test images (< {100 * MIN_AGREEMENT:.0f} %); not exported")
    return {**SETTINGS, "calibration": {"images": len(calib.images), "split": "train", "dataset": calib.dataset,
                                        "of": calib.train_images, "seed": calib.seed},
            "fp32_bytes": fp32.stat().st_size, "bytes": out.stat().st_size, "check": measured}
