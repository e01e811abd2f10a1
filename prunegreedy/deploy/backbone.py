"""The deployable network: BN-folded blocks and optionally the final head; its spec; native loading.

An export folder holds `backbone.json` (the spec below) and one artifact named by its format:

    native       backbone.safetensors   weights; the module is rebuilt from the spec (no pickle)
    torchscript  backbone.pt            torch.jit.save of a traced module
    onnx         backbone.onnx          ONNX graph (run it with onnxruntime)
    onnx-int8    backbone.int8.onnx     the same, int8 static QDQ (deploy.quantize; `quantization` in the spec)

The network takes images normalised with the spec's mean/std and returns the last block's
features, or logits when exported with the head. The spec is checked completely before any
module is built, and the weight file's header before any tensor is read. The export of a whole
network (a model.arch run) has `network` (its run's spec: how to build and cut it) and `folded`
in place of `blocks`, and loads with deploy.network.load_network.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..compress.network import KIND as NETWORK_KIND
from ..nn.blocks import BLOCKS
from ..errors import ExportError, RunError, SpecError
from ..nn.heads import MLPSRHead, PooledHead, VGGHead
from ..nn.spec import check_fields
from ..fileio import read_json
from ..records import RUN_FILE

KIND = "prunegreedy-backbone"
FORMAT_VERSION = 1
SPEC_FILE = "backbone.json"
ARTIFACTS = {"native": "backbone.safetensors", "torchscript": "backbone.pt", "onnx": "backbone.onnx",
             "onnx-int8": "backbone.int8.onnx"}
_DTYPES = {torch.float32: "F32", torch.int64: "I64"}  # safetensors header names


class FoldedAuxHead(nn.Module):
    """An AuxHead with its BatchNorms folded away: k-1 conv3x3(+bias)+ReLU, average pool, linear."""

    FIELDS: ClassVar[dict[str, type]] = {"in_channels": int, "hidden": int, "k": int, "num_classes": int,
                                         "pool": int, "in_size": list}

    def __init__(self, in_channels: int, hidden: int, k: int, num_classes: int, pool: int,
                 in_size: tuple[int, int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(k - 1):
            layers += [nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(inplace=True)]
            c = hidden
        self.body = nn.Sequential(*layers)
        h, w = in_size
        # A fixed window equals the adaptive pool when the map divides evenly, and unlike it
        # exports to ONNX with a dynamic batch size.
        even = h % pool == 0 and w % pool == 0
        self.pool = nn.AvgPool2d((h // pool, w // pool)) if even else nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Linear(c * pool * pool, num_classes)
        self.in_channels, self.hidden, self.k, self.pool_size = in_channels, hidden, k, pool
        self.in_size = (h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))

    def spec(self) -> dict:
        return {"type": "aux-folded", "in_channels": self.in_channels, "hidden": self.hidden, "k": self.k,
                "num_classes": self.fc.out_features, "pool": self.pool_size, "in_size": list(self.in_size)}

    @classmethod
    def from_spec(cls, spec: dict) -> FoldedAuxHead:
        return cls(spec["in_channels"], spec["hidden"], spec["k"], spec["num_classes"], spec["pool"],
                   tuple(spec["in_size"]))


# Head types an export may carry, by the name stored in its spec; the VGG classifier has no BN to fold.
# Pooled and MLP-SR heads export as their own type with "bn": false.
HEADS: dict[str, type[nn.Module]] = {"aux-folded": FoldedAuxHead, "pooled": PooledHead, "mlp-sr": MLPSRHead,
                                     "vgg": VGGHead}


class Backbone(nn.Module):
    """Blocks 1..J, then the final head if there is one."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.head is None else self.head(x)

    def spec(self, fmt: str, input_shape, mean, std, classes, source: dict | None = None) -> dict:
        return {"kind": KIND, "version": FORMAT_VERSION, "format": fmt, "bn_folded": True,
                "blocks": [b.spec() for b in self.blocks],
                "head": self.head.spec() if self.head is not None else None,
                "input_shape": list(input_shape), "mean": list(mean), "std": list(std), "classes": list(classes),
                "params": sum(p.numel() for p in self.parameters()), "source": source or {}}


def halvings(blocks: list[dict]) -> int:
    """How many times the blocks halve height and width: once per psi, once per max-pool."""
    return sum(bool(b.get("psi")) + bool(b.get("pool")) for b in blocks)


def feature_size(input_shape, blocks: list[dict]) -> tuple[int, int]:
    """Spatial size after the blocks."""
    scale = 2 ** halvings(blocks)
    return input_shape[1] // scale, input_shape[2] // scale


def validate_backbone_spec(spec: dict) -> None:
    """Refuse a spec that would not build or not chain, before any module is made."""
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise SpecError(f"not a backbone spec (expected a JSON object with kind '{KIND}')")
    if spec.get("version") != FORMAT_VERSION:
        raise SpecError(f"backbone spec version {spec.get('version')!r} is not supported (this is version "
                        f"{FORMAT_VERSION}); export the run again")
    if spec.get("format") not in ARTIFACTS:
        raise SpecError(f"unknown export format {spec.get('format')!r}; valid: {', '.join(ARTIFACTS)}")
    network = "network" in spec  # a whole network (model.arch): folded where a trace finds conv + BN
    if spec.get("bn_folded") is not True and not (network and spec.get("bn_folded") is False):
        raise SpecError("this version reads only BatchNorm-folded exports ('bn_folded': true)")
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
    if network:
        _validate_network(spec)
    else:
        _validate_blocks(spec, shape, classes)
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


def _validate_blocks(spec: dict, shape: list, classes: list) -> None:
    blocks = spec.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise SpecError("backbone spec needs a non-empty 'blocks' list")
    prev = shape[0]
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") not in BLOCKS:
            raise SpecError(f"block {i}: unknown block type {b.get('type') if isinstance(b, dict) else b!r}; "
                            f"valid: {', '.join(BLOCKS)}")
        check_fields(b, BLOCKS[b["type"]].FIELDS, f"block {i}")
        if b["bn"]:
            raise SpecError(f"block {i} keeps a BatchNorm, but the spec says BatchNorm is folded")
        if b["in_channels"] != prev:
            raise SpecError(f"block {i}: in_channels {b['in_channels']} does not match "
                            f"{'the input' if i == 0 else f'block {i - 1} out_channels'} {prev}")
        prev = b["out_channels"]
    n = halvings(blocks)
    if shape[1] % 2 ** n or shape[2] % 2 ** n:
        raise SpecError(f"input {shape[1]}x{shape[2]} cannot be halved {n} times (once per psi or max-pool)")
    size = feature_size(shape, blocks)
    head = spec.get("head")
    if head is not None:
        _validate_head(head, prev, size, len(classes))


def _validate_head(head: dict, channels: int, size: tuple[int, int], num_classes: int) -> None:
    if not isinstance(head, dict) or head.get("type") not in HEADS:
        raise SpecError(f"head: unknown head type {head.get('type') if isinstance(head, dict) else head!r}; "
                        f"valid: {', '.join(HEADS)}")
    fields = HEADS[head["type"]].FIELDS
    check_fields(head, fields, "head")
    if head.get("bn"):
        raise SpecError("the head keeps a BatchNorm, but the spec says BatchNorm is folded")
    if head["in_channels"] != channels:
        raise SpecError(f"head takes {head['in_channels']} channels but the last block gives {channels}")
    if "in_size" in fields and head["in_size"] != list(size):
        raise SpecError(f"head in_size {head.get('in_size')!r} does not match the feature map {list(size)}")
    if head["num_classes"] != num_classes:
        raise SpecError(f"head has {head['num_classes']} outputs but the spec lists {num_classes} classes")


def build_backbone(spec: dict, with_head: bool = True) -> Backbone:
    """Modules from a validated spec (weights freshly initialised)."""
    blocks = [BLOCKS[b["type"]].from_spec(b) for b in spec["blocks"]]
    head = spec["head"]
    return Backbone(blocks, HEADS[head["type"]].from_spec(head) if with_head and head is not None else None)


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


def load_backbone(path: Path, with_head: bool = False) -> Backbone:
    """Rebuild a native export (folder or file in it) in eval mode: spec, then header, then weights."""
    from safetensors import SafetensorError, safe_open

    folder, spec = read_export_spec(path)
    if "network" in spec:
        raise ExportError(f"{folder} holds a whole network ({spec['network'].get('class')}); load it with "
                          f"prunegreedy.load_network({str(folder)!r})")
    if spec["format"] != "native":
        raise ExportError(f"{folder} holds a {spec['format']} export ({ARTIFACTS[spec['format']]}); "
                          f"load_backbone reads native exports")
    if with_head and spec["head"] is None:
        raise ExportError(f"{folder} was exported without a head (features only); export with --with-head")
    weights = artifact(folder, spec, verify=False)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        net = build_backbone(spec, with_head=True)
    expected = net.state_dict()
    try:
        with safe_open(weights, framework="pt") as f:
            _check_header(f, expected, weights)
            verify_unchanged(weights, spec)
            state = {k: f.get_tensor(k) for k in expected}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{weights} is not a valid safetensors file ({e})") from None
    net.load_state_dict(state, assign=True)
    if not with_head:
        net.head = None
    net.export_spec = spec  # mean, std, classes and input_shape travel with the module
    return net.eval().requires_grad_(False)


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


def _check_header(f, expected: dict[str, torch.Tensor], weights: Path) -> None:
    names = set(f.keys())
    if names != set(expected):
        raise SpecError(f"{weights} does not match its spec: tensors {sorted(names ^ set(expected))[:3]} differ")
    for name, t in expected.items():
        sl = f.get_slice(name)
        if tuple(sl.get_shape()) != tuple(t.shape) or sl.get_dtype() != _DTYPES.get(t.dtype):
            raise SpecError(f"{weights} does not match its spec: {name} is {sl.get_dtype()} "
                            f"{tuple(sl.get_shape())}, spec says {_DTYPES.get(t.dtype)} {tuple(t.shape)}")
