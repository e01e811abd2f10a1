"""An export folder: its spec (backbone.json) and one artifact named by its format.

    native       backbone.safetensors   weights; the module is rebuilt from the spec (no pickle)
    torchscript  backbone.pt            torch.jit.save of a traced module
    onnx         backbone.onnx          ONNX graph (run it with onnxruntime)
    onnx-int8    backbone.int8.onnx     the same, int8 static QDQ (deploy.quantize; `quantization` in the spec)

The exported module takes images normalised with the spec's mean/std and returns the last stage's
features, or logits when exported with the head. The spec holds the trained network's own spec
(`network`: how to build and cut it), the BatchNorms folded (`folded`) and the head exported;
it is checked completely before any module is built. A native export loads with
deploy.network.load_network. FoldedAuxHead is the paper head with its BatchNorms folded away.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path


from ..compress.network import KIND as NETWORK_KIND
from ..errors import ExportError, RunError, SpecError
from ..fileio import read_json
from ..records import RUN_FILE

KIND = "prunegreedy-backbone"
FORMAT_VERSION = 1
SPEC_FILE = "backbone.json"
ARTIFACTS = {"native": "backbone.safetensors", "torchscript": "backbone.pt", "onnx": "backbone.onnx",
             "onnx-int8": "backbone.int8.onnx"}


def validate_backbone_spec(spec: dict) -> None:
    """Refuse a spec that would not build or not chain, before any module is made."""
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise SpecError(f"not a backbone spec (expected a JSON object with kind '{KIND}')")
    if spec.get("version") != FORMAT_VERSION:
        raise SpecError(f"backbone spec version {spec.get('version')!r} is not supported (this is version "
                        f"{FORMAT_VERSION}); export the run again")
    if spec.get("format") not in ARTIFACTS:
        raise SpecError(f"unknown export format {spec.get('format')!r}; valid: {', '.join(ARTIFACTS)}")
    if "network" not in spec:
        raise SpecError("this export predates networks with one spec; export its run folder again")
    if not isinstance(spec.get("bn_folded"), bool):
        raise SpecError("'bn_folded' must be true or false")
    shape = spec.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int and v > 0 for v in shape)):
        raise SpecError(f"input_shape must be [channels, height, width], got {shape!r}")
    for key in ("mean", "std"):
        v = spec.get(key)
        if not (isinstance(v, list) and len(v) == shape[0] and all(isinstance(a, (int, float)) for a in v)):
            raise SpecError(f"'{key}' must list one number per input channel ({shape[0]}), got {v!r}")
    if any(s <= 0 for s in spec["std"]):
        raise SpecError("'std' values must be positive")
    classes = spec.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise SpecError("'classes' must be a non-empty list of class names")
    _validate_network(spec)
    if not isinstance(spec.get("source", {}), dict):
        raise SpecError("'source' must be an object")
    if not (isinstance(spec.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", spec["sha256"])):
        raise SpecError(f"'sha256' must be the hex SHA-256 of {ARTIFACTS[spec['format']]}")


def _validate_network(spec: dict) -> None:
    """The fields of a whole network's export; the network spec itself is checked as it is rebuilt."""
    net = spec["network"]
    if not isinstance(net, dict) or net.get("kind") != NETWORK_KIND:
        raise SpecError(f"'network' must be the spec of a whole network (kind '{NETWORK_KIND}')")
    folded = spec.get("folded")
    if folded is not None and not (isinstance(folded, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in folded)):
        raise SpecError("'folded' must list [conv, batchnorm] module names, or be null")
    if spec.get("head") not in (None, {"type": "own"}, {"type": "aux"}):
        raise SpecError(f"head of a whole network must be null, {{'type': 'own'}} or {{'type': 'aux'}}, "
                        f"got {spec.get('head')!r}")


def read_export_spec(path: Path) -> tuple[Path, dict]:
    """The export folder holding `path` (the folder or a file in it) and its validated spec."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / SPEC_FILE).exists():
        if (folder / RUN_FILE).exists():
            raise ExportError(f"{folder} is a run folder, not an export; make one with "
                              f"`prunegreedy export {folder} --out DIR`")
        raise ExportError(f"{path} is not an export folder (no {SPEC_FILE})")
    try:
        spec = read_json(folder / SPEC_FILE)
    except RunError as e:
        raise ExportError(str(e)) from None
    validate_backbone_spec(spec)
    return folder, spec


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_unchanged(path: Path, spec: dict) -> None:
    if sha256(path) != spec["sha256"]:
        raise ExportError(f"{path} was changed after export (its sha256 differs from the one in {SPEC_FILE})")


def artifact(folder: Path, spec: dict, verify: bool = True) -> Path:
    """The export's model file, present and (if `verify`) unchanged since export."""
    path = folder / ARTIFACTS[spec["format"]]
    if not path.exists():
        raise ExportError(f"missing file {path}")
    if verify:
        verify_unchanged(path, spec)
    return path
