"""Export a run's network for deployment: fold BatchNorm, write one format, check its outputs.

Two checks guard every export, both on real images (the bundled CIFAR-10 sample's test split,
resized to the model's input if needed): the folded network must match the trained one within
TOLERANCE, and the written file, opened the way users will open it, must match the folded
network (bit for bit for the native format, within TOLERANCE for TorchScript and ONNX).
TOLERANCE is relative to the outputs' largest magnitude (absolute below 1): float32 rounds a
logit of 7,000 to 0.0005, and a barely trained network can have such logits.
An int8 export (`int8=`, ONNX only) writes the checked fp32 ONNX file to a temporary folder,
quantizes it (deploy.quantize) and records its agreement with fp32 in the spec's `quantization`.
A network exports as itself, BatchNorm folded in place (deploy.network): the model with its own
classifier, or its stages and last head.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .backbone import ARTIFACTS, FORMAT_VERSION, KIND, SPEC_FILE, read_export_spec, sha256, validate_backbone_spec
from . import quantize
from ..config import DataConfig
from ..data.base import Normalize
from ..data.registry import load_dataset
from .deployed import onnx_forward, open_export, require_onnx
from ..errors import ExportError, RunError, SpecError
from .network import deployable, fold_trained, load_network_export, load_trained
from ..nn.network import Network
from ..fileio import atomic_write, read_json, read_yaml, write_json
from ..records import RUN_FILE

TOLERANCE = 1e-4  # max abs difference of outputs (features or logits), per unit of their largest magnitude
CHECK_IMAGES = 64


def _write_native(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state)))


def _write_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # current torch marks TorchScript as deprecated on every call
        torch.jit.save(torch.jit.trace(model, x[:2]), buf)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _write_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    onnx, _ = require_onnx()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter: the dynamo one needs onnxscript, which [deploy] leaves out.
            torch.onnx.export(model, (x[:2],), buf, dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17)
        onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    except Exception as e:  # exporter and checker errors have many types; all mean "no valid file"
        raise ExportError(f"ONNX export failed: {e.__class__.__name__}: {str(e).splitlines()[0][:160]}") from None
    atomic_write(path, lambda f: f.write(buf.getvalue()))


# Export format -> writer(folded model, example batch, artifact path).
WRITERS: dict[str, Callable[[torch.nn.Module, torch.Tensor, Path], None]] = {
    "native": _write_native, "torchscript": _write_torchscript, "onnx": _write_onnx,
}


def _check_request(fmt: str, out: Path, calibration: int | None = None) -> None:
    """Everything that can be refused before the run is read (`calibration`: images, for int8)."""
    if fmt not in WRITERS:
        raise ExportError(f"unknown export format '{fmt}'; valid: {', '.join(WRITERS)}")
    if calibration is not None:
        if fmt != "onnx":
            raise ExportError(f"--int8 needs --format onnx (ONNX Runtime quantizes it), got --format {fmt}")
        quantize.check_count(calibration)
        quantize.require_quantization()
    if fmt == "onnx":
        require_onnx()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; choose another --out")


def finished_run(run: Path) -> tuple[dict, dict]:
    """(run.json, model.json) of a run folder with at least one finished stage."""
    run = Path(run)
    if not (run / RUN_FILE).exists():
        raise RunError(f"{run} is not a run folder (no {RUN_FILE})")
    meta = read_json(run / RUN_FILE)
    done = meta.get("stages_done") if isinstance(meta, dict) else None
    if not isinstance(done, int) or done < 1 or not (run / "model.json").exists():
        raise RunError(f"{run} has no finished stage yet; nothing to export")
    spec = read_json(run / "model.json")
    missing = [k for k in ("input_shape", "mean", "std", "classes") if k not in spec]
    if missing:
        raise SpecError(f"{run / 'model.json'} lacks {', '.join(missing)}")
    return meta, spec


def folded_run(run: Path, with_head: bool = False, model: torch.nn.Module | None = None,
               ) -> tuple[torch.nn.Module, list[int]]:
    """A run folder's latest network folded as `export` folds it, and its input shape."""
    finished_run(run)
    net, heads, spec = load_trained(run, model)
    net, heads, _ = fold_trained(net, heads, spec)
    return deployable(net, heads, with_head).eval(), spec["input_shape"]


def check_images(input_shape, n: int = CHECK_IMAGES) -> torch.Tensor:
    """Real uint8 images for output checks: the sample's test split, every class, at the model's size."""
    test_x = load_dataset(DataConfig(name="cifar10-sample")).test_x
    x = test_x[torch.linspace(0, len(test_x) - 1, n).long()]
    if input_shape[0] != x.shape[1]:
        raise ExportError(f"cannot check a model taking {input_shape[0]}-channel input with RGB images")
    if list(x.shape[2:]) != list(input_shape[1:]):
        x = F.interpolate(x.float(), size=tuple(input_shape[1:]), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _allowed(reference: torch.Tensor) -> float:
    """TOLERANCE, scaled to the outputs' largest magnitude when it is above 1."""
    return TOLERANCE * max(1.0, reference.float().abs().max().item())


def export_network(net: Network, heads: list[torch.nn.Module], model_spec: dict, out: Path, fmt: str = "native",
                   with_head: bool = False, images: torch.Tensor | None = None, source: dict | None = None,
                   int8: quantize.Calibration | None = None, fresh: torch.nn.Module | None = None) -> dict:
    """Fold a trained network (its spec `model_spec`), write it to the empty or new folder `out` in
    format `fmt` (int8 ONNX if `int8` is given), check it, and summarise: the model itself with its
    own classifier, else its stages (and last head). On any failure nothing is left in `out` (nor
    `out` itself, if made here). `fresh`: an unpruned instance of your own module, to reload a
    native export onto for its check."""
    out = Path(out)
    _check_request(fmt, out, None if int8 is None else len(int8.images))
    reopen = open_export
    if fresh is not None and fmt == "native":  # your own module reloads only onto an instance of it
        reopen = lambda folder: load_network_export(*read_export_spec(folder), with_head, fresh)  # noqa: E731
    folded, folded_heads, pairs = fold_trained(net, heads, model_spec)
    model = deployable(folded, folded_heads, with_head).eval().requires_grad_(False)
    head = ({"type": "own"} if net.own_tail else {"type": "aux"}) if with_head else None
    spec = {"kind": KIND, "version": FORMAT_VERSION, "format": fmt if int8 is None else "onnx-int8",
            "bn_folded": not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
            "network": model_spec, "folded": pairs, "head": head,
            **{k: list(model_spec[k]) for k in ("input_shape", "mean", "std", "classes")},
            "params": sum(p.numel() for p in model.parameters()), "source": source or {}}
    return _write_checked(deployable(net, heads, with_head), model, spec, out, fmt, images, int8, reopen)


def _write_checked(reference: torch.nn.Module, model: torch.nn.Module, spec: dict, out: Path, fmt: str,
                   images: torch.Tensor | None, int8: quantize.Calibration | None,
                   reopen: Callable[[Path], Callable] = open_export) -> dict:
    """Check the folded `model` against the trained `reference`, write it in `fmt`, reopen the file
    as users will and check it again; on any failure nothing is left behind."""
    shape, kind, with_head = spec["input_shape"], spec["format"], spec["head"] is not None
    if int8 is not None and list(int8.images.shape[1:]) != list(shape):
        raise ExportError(f"calibration images have shape {list(int8.images.shape[1:])}, the model takes {shape}")
    x = Normalize(spec["mean"], spec["std"], torch.device("cpu"), channels_last=False)(
        images if images is not None else check_images(shape))
    was_training = reference.training
    reference.eval()
    with torch.no_grad():
        ref = reference(x)
        folded = model(x)
    reference.train(was_training)
    fold_diff, allowed = _max_diff(ref, folded), _allowed(ref)
    if not fold_diff <= allowed:  # also catches NaN
        raise ExportError(f"folding BatchNorm changed the outputs by {fold_diff:.3g} (> {allowed:.3g}); not exported")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path, written = out / ARTIFACTS[kind], []
    try:
        written.append(path)
        if int8 is None:
            WRITERS[fmt](model, x, path)
        else:
            spec["quantization"], diff = _write_int8(model, x, folded, path, int8, spec, with_head)
        spec["sha256"] = sha256(path)
        validate_backbone_spec(spec)
        written.append(out / SPEC_FILE)
        write_json(out / SPEC_FILE, spec)  # last: a folder with a spec is a complete export
        with torch.no_grad():
            got = reopen(out)(x)
        if int8 is None:
            diff = _max_diff(folded, got)
        if fmt == "native" and not torch.equal(folded, got):
            raise ExportError(f"the native export reloads with different outputs (max diff {diff:.3g})")
        if not diff <= allowed:
            raise ExportError(f"the {fmt} export differs from PyTorch by {diff:.3g} (> {allowed:.3g})")
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return {"out": str(out), "format": kind, "file": path.name, "bytes": path.stat().st_size,
            "params": spec["params"], "with_head": with_head, "check_images": len(x),
            "fold_max_diff": fold_diff, "export_max_diff": diff, "quantization": spec.get("quantization")}


def _write_int8(model: torch.nn.Module, x: torch.Tensor, folded: torch.Tensor, path: Path,
                calib: quantize.Calibration, spec: dict, logits: bool) -> tuple[dict, float]:
    """The fp32 ONNX file, checked against PyTorch like an onnx export, then quantized into `path`;
    returns the spec's `quantization` and the fp32 file's max difference from PyTorch."""
    with tempfile.TemporaryDirectory(prefix="prunegreedy-fp32-") as tmp:
        fp32 = Path(tmp) / ARTIFACTS["onnx"]
        _write_onnx(model, x, fp32)
        diff, allowed = _max_diff(folded, onnx_forward(fp32)(x)), _allowed(folded)
        if not diff <= allowed:
            raise ExportError(f"the fp32 ONNX file differs from PyTorch by {diff:.3g} (> {allowed:.3g}); not quantized")
        info = quantize.quantize_onnx(fp32, path, calib, spec["mean"], spec["std"], logits=logits)
    return info, diff


def run_dataset(run: Path, data_dir: Path | None = None):
    """The dataset run folder `run` trained on (its config.yaml's `data`), optionally at a new `data_dir`."""
    data = (read_yaml(Path(run) / "config.yaml") or {}).get("data") or {}
    known = {f.name for f in dataclasses.fields(DataConfig)}
    cfg = DataConfig(**{k: v for k, v in data.items() if k in known})
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    return load_dataset(cfg)


def export_run(run: Path, out: Path, fmt: str = "native", with_head: bool = False,
               images: torch.Tensor | None = None, calibration: int | None = None,
               data_dir: Path | None = None, calibration_data=None, model: torch.nn.Module | None = None) -> dict:
    """Export the latest finished network of run folder `run` (see export_network). With
    `calibration` (a number of images), an int8 ONNX export calibrated on the training split of
    the dataset `calibration_data` (default: the run's own, read from `data_dir` if given).
    `model`: a fresh, unpruned instance of your own module, for a run that trained one."""
    _check_request(fmt, Path(out), calibration)
    meta, _ = finished_run(run)
    fresh = copy.deepcopy(model) if model is not None else None  # `model` is pruned as it is loaded
    net, heads, model_spec = load_trained(run, model)
    int8 = None
    if calibration is not None:
        ds = calibration_data if calibration_data is not None else run_dataset(run, data_dir)
        int8 = quantize.calibration_from(ds, calibration)
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    source = {"run": str(Path(run).resolve()), "status": meta.get("status"), "stages_done": meta.get("stages_done"),
              "final_acc": meta.get("final_acc"), "dataset": dataset.get("name"),
              "plan": model_spec.get("arch")}
    return export_network(net, heads, model_spec, out, fmt, with_head, images, source, int8, fresh)
