"""Using an export: open it in its own runtime (PyTorch, TorchScript, onnxruntime: fp32 or int8) and test it.

Every export opens as a `Deployed`: its folder, its validated spec, and a forward function from
a float batch (normalised with the spec's mean/std) to a float tensor. Eval and bench go through
here, and so does the check at export time, so what is checked is what users will run.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .backbone import artifact, read_export_spec
from .network import load_network_export
from ..data.base import Dataset, Normalize
from ..errors import DataError, ExportError

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Deployed:
    folder: Path
    spec: dict
    forward: Forward

    @property
    def with_head(self) -> bool:
        return self.spec["head"] is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(x)


def require_onnx():
    """(onnx, onnxruntime), or a one-line error naming the extra that provides them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX needs the optional packages onnx and onnxruntime; "
                          "install them with: pip install 'prunegreedy[deploy]'") from None
    return onnx, onnxruntime


def _open_native(folder: Path, spec: dict, threads: int | None) -> Forward:
    return load_network_export(folder, spec, with_head=spec["head"] is not None)


def _open_torchscript(folder: Path, spec: dict, threads: int | None) -> Forward:
    path = artifact(folder, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated" on every call
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{path} is not a valid TorchScript file ({str(e).splitlines()[0][:120]})") from None


def _open_onnx(folder: Path, spec: dict, threads: int | None) -> Forward:
    require_onnx()
    return onnx_forward(artifact(folder, spec), threads)


def onnx_forward(path: Path, threads: int | None = None) -> Forward:
    """Run the ONNX file `path` (fp32 or int8 QDQ) in onnxruntime on the CPU, all graph optimisations on."""
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped exceptions for a bad file
        raise ExportError(f"{path} is not a valid ONNX model ({e.__class__.__name__})") from None
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().float().contiguous().numpy()})[0])


# Export format -> opener(folder, spec, threads) -> forward function.
OPENERS: dict[str, Callable[[Path, dict, int | None], Forward]] = {
    "native": _open_native, "torchscript": _open_torchscript, "onnx": _open_onnx, "onnx-int8": _open_onnx,
}


def open_export(path: Path, threads: int | None = None) -> Deployed:
    """An export folder (or a file in it) ready to run; `threads` sets onnxruntime's intra-op threads."""
    folder, spec = read_export_spec(path)
    return Deployed(folder, spec, OPENERS[spec["format"]](folder, spec, threads))


def require_head(model: Deployed) -> Deployed:
    if not model.with_head:
        raise ExportError(f"{model.folder} was exported without a head (features only) and cannot classify; "
                          f"export the run again with --with-head")
    return model


def evaluate(model: Deployed, ds: Dataset, batch_size: int = 500) -> dict:
    """Test accuracy (%) of an export with head, computed as training's evaluation computes it."""
    spec = require_head(model).spec
    if ds.classes != spec["classes"]:
        raise DataError(f"dataset {ds.name} has classes {ds.classes[:4]}..., the model was trained on "
                        f"{spec['classes'][:4]}...")
    if list(ds.image_shape) != spec["input_shape"]:
        raise DataError(f"dataset {ds.name} has images of shape {list(ds.image_shape)}, the model takes "
                        f"{spec['input_shape']}")
    norm = Normalize(spec["mean"], spec["std"], torch.device("cpu"), channels_last=False)
    correct = 0
    for xb, yb in ds.eval_batches(batch_size, norm):
        # argmax of the logits, as training's evaluation takes it (a float32 softmax can tie)
        correct += (model(xb).float().argmax(1) == yb).sum().item()
    n = len(ds.test_y)
    return {"acc": round(100.0 * correct / n, 4), "correct": correct, "images": n, "dataset": ds.name}
