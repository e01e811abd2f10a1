"""Typed run configuration with strict keys.

A config is a tree of dataclasses. It is built from plain dicts (YAML files, `--set a.b=v`
overrides), and every unknown key or wrong type is an error that names the valid choices.
Library code receives the sub-config it uses (`cfg.train`, `cfg.compress`), never the whole tree.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError

# Recipes ship inside the package so a wheel install finds them; the top-level configs/ links here.
RECIPE_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    name: str = "cifar10-sample"  # a key of data.registry.DATASETS
    data_dir: str | None = None  # local copy; None = bundled sample / torchvision cache
    cache_dir: str | None = None  # decoded uint8 tensors; None = ~/.cache/prunegreedy
    image_size: int = 32  # imagefolder images are resized to this square size; imagenet: crop size
    workers: int = 8  # imagenet: DataLoader worker processes decoding JPEGs (per process under torchrun)
    train_limit: int | None = None  # use only the first N training images (smoke tests)
    test_limit: int | None = None
    # Training images held out (stratified, seeded with run.seed) for the decisions a run takes from
    # data: budgets and sensitivity. Only such runs hold them out; every other run trains on all.
    holdout: int = 5000


@dataclass
class ModelConfig:
    plan: str = "cifar10-k2"  # a key of nn.plans.PLANS
    width_mult: float = 1.0  # scales block and head widths of the plan
    widths: list[int] | None = None  # explicit block widths; overrides plan widths * width_mult
    k: int | None = None  # hidden layers of every aux head's problem (heads that take k); None = the network's
    head: str | None = None  # a key of nn.heads.HEADS replacing the plan's aux heads; None = the plan's
    head_pool: int | None = None  # pooled / mlp-sr heads pool the map to this side first; None = a quarter
    # airbench's parts for the paper's blocks (the fast network has its own GELU and dirac init):
    act: str = "relu"  # the blocks' activation, a key of nn.layers.ACTIVATIONS
    dirac: bool = False  # each block's conv starts as a partial identity (nn.layers.dirac_) when it is made
    # A whole network instead of a plan: a key of nn.models.MODELS or torchvision:NAME (None = the plan).
    arch: str | None = None
    split: list[str] | None = None  # module names ending its stages; None = the model's registered default
    stages: int = 4  # without a split: at most this many stages, ending where the map shrinks (nn.autosplit)
    # > 0: the split cut again at its stages' blocks into this many stages whose largest keeps the fewest
    # activations for training (measure.balance), written into split at the run's start (then 0 here)
    balance: int = 0
    last_head: str = "own"  # own: the last stage keeps the model's tail (pool + classifier); aux: a head of ours
    # Trained weights loaded into the network before it is compressed (--trainer compress): a
    # safetensors file or a state dict torch.load reads with weights_only=True. None: as built.
    weights: str | None = None


@dataclass
class TrainConfig:
    trainer: str = "greedy"  # a key of trainers.registry.TRAINERS: greedy | decoupled | end-to-end | compress
    epochs: Union[float, list[float]] = 50.0  # per stage: one value for all, or one per stage
    total_epochs: float | None = None  # end-to-end only; None = the sum of the per-stage epochs
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    wd_on_bn_bias: bool = True  # the paper decays every parameter; False skips BN and biases
    schedule: str = "step"  # a key of train.schedules.SCHEDULES
    milestones: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9])  # fractions of a stage
    gamma: float = 0.2  # step schedule: lr multiplier at each milestone (paper: / 5)
    warmup: float = 0.0  # fraction of the stage spent in linear warm-up
    label_smoothing: float = 0.0
    amp: str = "auto"  # auto | bf16 | off; auto = bf16 where the device supports it fast
    channels_last: bool = True
    eval_batch_size: int = 500
    # Minutes between checkpoints inside an epoch (besides the one at every epoch's end), so that a
    # killed run loses at most this much; None: at epochs' ends only. ImageNet epochs take hours.
    checkpoint_every: float | None = 15.0
    # The recipe's parts (airbench, Jordan 2024); each is off unless a recipe turns it on.
    # step: lr, finetune_lr and weight_decay are PyTorch SGD's (on the batch's mean loss); per1024: they are
    # per 1024 training examples with momentum's gain 1 + 1/(1 - momentum) taken out, and weight decay is
    # decoupled from the lr's value (airbench's convention: its lr 11.5, weight_decay 0.0153 at any batch size)
    lr_unit: str = "step"
    bn_bias_lr_mult: float = 1.0  # learning-rate multiplier of BatchNorm biases (airbench: 64)
    freeze_bn_scale: bool = False  # BatchNorm scales fixed at 1, not trained (airbench)
    # triangle schedule: lr factor rises linearly from start to 1 at fraction peak of the steps, then falls to end
    triangle_start: float = 0.2
    triangle_peak: float = 0.23
    triangle_end: float = 0.07
    lookahead_every: int = 0  # Lookahead: steps between pulls of the weights to their moving average; 0 = off
    lookahead_decay: float = 0.7737809375  # per pull, ramped by (step / steps)^3 (airbench: 0.95^5 every 5 steps)
    flip: str = "random"  # random: a coin per image; alternate: a fixed half on even epochs, the other on odd; off
    translate: int = 4  # random translation by up to this many pixels (the crop of a padded image); 0 = off
    translate_pad: str = "zeros"  # how the translation pads: zeros | reflect
    tta: str = "off"  # test-time augmentation, as final_acc_tta beside final_acc: off | flip | flip-translate
    whiten_bias_epochs: float | None = None  # epochs of each schedule a whitening stem's bias trains; None: all


@dataclass
class CompressConfig:
    hook: str = "none"  # a key of compress.hooks.HOOKS
    ratio: float = 0.0  # fraction of each new block's filters to remove, 0 <= r < 1
    ratios: list[float] | None = None  # one ratio per stage; overrides `ratio`
    importance: str = "l1"  # a key of compress.importance.IMPORTANCES
    round_to: int = 1  # kept filter count is a multiple of this
    taylor_batches: int = 4  # batches used to estimate first-order Taylor importance
    at: float = 1.0  # when to cut, as a fraction of the block's training schedule; 1 = after training
    cuts: int = 1  # cuts inside the schedule (at < 1): at at/n, ..., at, to Zhu and Gupta's cubic ratios
    # after a cut inside the schedule: weight of the pre-cut block + head's soft outputs (--trainer compress:
    # of the original network's soft outputs, beside the stage's feature loss); one for all, or one per stage
    distill: Union[float, list[float]] = 0.0
    distill_temperature: float = 4.0
    # --trainer compress: weight of the labels' cross-entropy, through the frozen rest and classifier, added to
    # each stage's repair loss; one for all, or one per stage. Like distill, it puts the rest in the step's graph
    labels: Union[float, list[float]] = 0.0
    # after the last cut inside the schedule the learning rate starts its schedule over (learning-rate
    # rewinding, Renda et al. 2020), instead of going on from where the cut found it
    rewind: bool = False
    # after every cut: training images on which each layer that lost input channels is refit by least
    # squares to its outputs before the cut (compress.reconstruct); 0 = off. None: 2,048 after a cut
    # after training, none inside the schedule, whose remaining steps repair the cut anyway (measured,
    # reports/benchmarks/cut-cost.*)
    reconstruct: int | None = None
    # epochs of fine-tuning after a cut, one for all or (greedy, compress) one per stage; None: 1 epoch after a cut
    # at the end (at 1), none inside the schedule
    finetune_epochs: Union[float, list[float], None] = None
    finetune_lr: float = 0.01
    # --trainer compress: learning rate of each stage's repair against the original's features. Their mean
    # squared error gives far smaller gradients than the labels' cross-entropy: on resnet20 finetune_lr's 0.01
    # measured 1.3 and 2.2 points below 0.5, and 1.0 within 0.2 of it (benchmarks/compress_trained.py)
    repair_lr: float = 0.5
    finetune_schedule: str = "linear"
    # --trainer compress: epochs of end-to-end fine-tuning of the whole network after its last stage; 0 = none
    finetune_all_epochs: float = 0.0
    scope: str = "internal"  # model stages: internal (inside residual blocks) | all (the stage's output too)
    # Budgets (issue 15): the final backbone's MACs or parameters, an absolute count with an optional
    # K/M/G suffix ("40M") or a fraction of the unpruned plan ("0.25x"). The per-stage ratios are then
    # chosen during training from each stage's sensitivity (compress.budget); ratio/ratios stay unset.
    target_macs: str | None = None
    target_params: str | None = None
    sensitivity: bool = False  # measure sensitivity.csv without a budget too (holds out data.holdout)
    sensitivity_ratios: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])
    # Training images (not held out) on which each pruned copy's head re-estimates its BatchNorm
    # statistics before it is scored; 0 scores with the trained statistics (compress.sensitivity).
    sensitivity_bn_images: int = 2000


    def finetune(self, stage: int = 0) -> float:
        """Fine-tuning epochs after stage `stage`'s cut. By default one after training, and none when
        the cut is made inside the schedule: the schedule's remaining epochs then train the pruned block."""
        if isinstance(self.finetune_epochs, list):
            return self.finetune_epochs[stage]
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        return 1.0 if self.at >= 1 else 0.0

    def refit_images(self) -> int:
        """Images the layers after a cut are refit on (compress.reconstruct); 0: no refit."""
        if self.reconstruct is not None:
            return self.reconstruct
        return 2048 if self.at >= 1 else 0


@dataclass
class RunConfig:
    name: str | None = None  # run folder name under runs/; None = generated
    out: str | None = None  # explicit run folder; overrides runs/<name>
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0
    threads: int | None = None  # CPU threads; None = all cores
    quiet: bool = False


@dataclass
class DistConfig:
    """Under torchrun: how long a collective waits for the other processes before the run fails
    (a process that hangs instead of dying). Rank 0's own work between collectives (checkpoints,
    a budget's choice) and the slowest process's data loading must fit in it."""
    timeout: float = 600.0  # seconds


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stage_value(self, values: float | list[float] | None, default: float, stage: int, n: int) -> float:
        """One value per stage from a scalar or a list of length n."""
        if values is None:
            return default
        if isinstance(values, list):
            if len(values) != n:
                raise ConfigError(f"expected {n} per-stage values (one per stage), got {len(values)}: {values}")
            return float(values[stage])
        return float(values)


def as_list(values: float | list[float]) -> list[float]:
    """One value, or one per stage, as a list."""
    return values if isinstance(values, list) else [values]


def per_stage(values: float | list[float]) -> str:
    """One value, or one per stage, as a user gives them (--set key=0,0.5,0.5)."""
    return ",".join(f"{v:g}" for v in values) if isinstance(values, list) else f"{values:g}"


# ---------------------------------------------------------------------------------------------
# Building dataclasses from dicts, strictly.

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; accept ints for floats and strings from --set."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # from --set: comma-separated
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section (a nested dict is merged, anything else replaced)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """`["train.lr=0.05", "model.widths=64,64"]` -> nested dict of strings (typed later)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key.sub=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set: '{key}' conflicts with another --set")
        parsed = yaml.safe_load(value) if value.strip() else None
        # Keep lists given as "a,b" and YAML booleans ("off") as strings: _coerce types them against
        # the annotation, so `train.amp=off` stays the string it names.
        node[parts[-1]] = value if isinstance(parsed, (dict, list, bool)) or "," in value else parsed
    return out


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe name (`cifar10-cpu`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    valid = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
    raise ConfigError(f"config '{name_or_path}' is neither a YAML file nor a recipe; recipes: {valid}")


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections (data, model, train, compress, run, dist)")
    return data


def load(recipe: str | None, overrides: dict[str, Any] | None = None) -> Config:
    base = load_yaml(resolve_recipe(recipe)) if recipe else {}
    return from_dict(merge(base, overrides or {}))


AMP_CHOICES = ("auto", "bf16", "off")
SCOPES = ("internal", "all")
LAST_HEADS = ("own", "aux")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def validate(cfg: Config) -> None:
    """Range checks that types cannot express. Registry names are checked where they are used."""
    def ratio_ok(r: float) -> bool:
        return not math.isnan(r) and 0.0 <= r < 1.0

    if not ratio_ok(cfg.compress.ratio):
        raise ConfigError(f"prune ratio must be in [0, 1), got {cfg.compress.ratio}")
    for r in cfg.compress.ratios or []:
        if not ratio_ok(r):
            raise ConfigError(f"prune ratios must each be in [0, 1), got {r}")
    if cfg.compress.round_to < 1:
        raise ConfigError(f"compress.round_to must be >= 1, got {cfg.compress.round_to}")
    sens = cfg.compress.sensitivity_ratios
    if not sens or any(not (0 < r < 1) for r in sens) or len(set(sens)) != len(sens):
        raise ConfigError(f"compress.sensitivity_ratios must be distinct ratios in (0, 1), got {sens}")
    if cfg.compress.sensitivity_bn_images < 0:
        raise ConfigError(f"compress.sensitivity_bn_images must be >= 0 (0: the trained BatchNorm statistics), "
                          f"got {cfg.compress.sensitivity_bn_images}")
    if cfg.data.holdout < 1:
        raise ConfigError(f"data.holdout must be at least 1 image, got {cfg.data.holdout}")
    epochs = cfg.train.epochs if isinstance(cfg.train.epochs, list) else [cfg.train.epochs]
    if not epochs or any(not (e > 0) or math.isinf(e) for e in epochs):
        raise ConfigError(f"train.epochs must be positive numbers, got {cfg.train.epochs}")
    total = cfg.train.total_epochs
    if total is not None and (not (total > 0) or math.isinf(total)):
        raise ConfigError(f"train.total_epochs must be a positive number, got {total}")
    ft = cfg.compress.finetune_epochs
    if ft is not None and not all(0 <= e < math.inf for e in as_list(ft)):
        raise ConfigError(f"compress.finetune_epochs must be >= 0 (one value, or one per stage), got {per_stage(ft)}")
    if isinstance(ft, list) and cfg.train.trainer not in ("greedy", "compress"):
        raise ConfigError(f"--trainer {cfg.train.trainer} fine-tunes every block at once: give "
                          f"compress.finetune_epochs one value, not one per stage ({per_stage(ft)})")
    fa = cfg.compress.finetune_all_epochs
    if not (fa >= 0) or math.isinf(fa):
        raise ConfigError(f"compress.finetune_all_epochs must be >= 0, got {fa}")
    if not (0 < cfg.compress.at <= 1):
        raise ConfigError(f"compress.at must be in (0, 1] (a fraction of a block's training schedule; 1 = after "
                          f"training), got {cfg.compress.at}")
    every = cfg.train.checkpoint_every
    if every is not None and (not (every > 0) or math.isinf(every)):
        raise ConfigError(f"train.checkpoint_every must be a positive number of minutes (or null: at epochs' ends "
                          f"only), got {every}")
    c = cfg.compress
    if c.cuts < 1 or (c.cuts > 1 and c.at >= 1):
        raise ConfigError(f"compress.cuts must be 1, or more with compress.at < 1 (cuts inside the schedule), "
                          f"got {c.cuts} with compress.at {c.at:g}")
    if not all(0 <= a <= 1 for a in as_list(c.distill)) or (max(as_list(c.distill)) > 0 and c.at >= 1
                                                      and cfg.train.trainer != "compress"):
        raise ConfigError(f"compress.distill must be in [0, 1] (one value, or one per stage), and above 0 only with "
                          f"compress.at < 1 (it follows a cut inside the schedule) or --trainer compress, got "
                          f"{per_stage(c.distill)} with compress.at {c.at:g}")
    if not all(0 <= w < math.inf for w in as_list(c.labels)) or (max(as_list(c.labels)) > 0
                                                                 and cfg.train.trainer != "compress"):
        raise ConfigError(f"compress.labels must be a weight >= 0 (one value, or one per stage), and above 0 only "
                          f"with --trainer compress (it adds the labels to a stage's repair), got "
                          f"{per_stage(c.labels)} with --trainer {cfg.train.trainer}")
    if c.rewind and c.at >= 1:
        raise ConfigError(f"compress.rewind restarts the schedule after a cut inside it: it needs compress.at < 1, "
                          f"got compress.at {c.at:g}")
    if c.reconstruct is not None and c.reconstruct < 0:
        raise ConfigError(f"compress.reconstruct is a number of training images, 0 (off) or more, got {c.reconstruct}")
    if not (c.distill_temperature > 0) or math.isinf(c.distill_temperature):
        raise ConfigError(f"compress.distill_temperature must be a positive number, got {c.distill_temperature}")
    if cfg.train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {cfg.train.batch_size}")
    for key, lr in (("train.lr", cfg.train.lr), ("compress.finetune_lr", c.finetune_lr),
                    ("compress.repair_lr", c.repair_lr)):
        if not (lr > 0) or math.isinf(lr):
            raise ConfigError(f"{key} must be a positive number, got {lr}")
    if cfg.train.amp not in AMP_CHOICES:
        raise ConfigError(f"unknown train.amp '{cfg.train.amp}'; valid: {', '.join(AMP_CHOICES)}")
    if cfg.run.device not in DEVICE_CHOICES:
        raise ConfigError(f"unknown device '{cfg.run.device}'; valid: {', '.join(DEVICE_CHOICES)}")
    if cfg.compress.scope not in SCOPES:
        raise ConfigError(f"compress.scope must be internal or all, got '{cfg.compress.scope}'")
    if cfg.model.last_head not in LAST_HEADS:
        raise ConfigError(f"model.last_head must be own or aux, got '{cfg.model.last_head}'")
    if not (cfg.dist.timeout > 0) or math.isinf(cfg.dist.timeout):
        raise ConfigError(f"dist.timeout must be a positive number of seconds, got {cfg.dist.timeout}")
    if cfg.model.stages < 1:
        raise ConfigError(f"model.stages must be at least 1, got {cfg.model.stages}")
    if cfg.model.balance < 0:
        raise ConfigError(f"model.balance must be 0 (the split as it is) or a number of stages, got {cfg.model.balance}")
    validate_recipe(cfg.train)
    if not (cfg.model.width_mult > 0):
        raise ConfigError(f"model.width_mult must be > 0, got {cfg.model.width_mult}")


LR_UNITS = ("step", "per1024")
FLIPS = ("random", "alternate", "off")
PADS = ("zeros", "reflect")
TTAS = ("off", "flip", "flip-translate")


def validate_recipe(t: TrainConfig) -> None:
    """Range checks of the recipe's parts (lr unit, BN, triangle, Lookahead, augmentation, TTA)."""
    def finite(v: float) -> bool:
        return not (math.isnan(v) or math.isinf(v))

    for key, value, valid in (("lr_unit", t.lr_unit, LR_UNITS), ("flip", t.flip, FLIPS),
                              ("translate_pad", t.translate_pad, PADS), ("tta", t.tta, TTAS)):
        if value not in valid:
            raise ConfigError(f"unknown train.{key} '{value}'; valid: {', '.join(valid)}")
    if not (t.bn_bias_lr_mult > 0) or not finite(t.bn_bias_lr_mult):
        raise ConfigError(f"train.bn_bias_lr_mult must be a positive number, got {t.bn_bias_lr_mult}")
    if t.lr_unit == "per1024" and not (0 <= t.momentum < 1):
        raise ConfigError(f"train.lr_unit per1024 needs train.momentum in [0, 1), got {t.momentum}")
    for key in ("triangle_start", "triangle_end"):
        v = getattr(t, key)
        if not (v >= 0) or not finite(v):
            raise ConfigError(f"train.{key} must be a factor >= 0, got {v}")
    if not (0 <= t.triangle_peak < 1):
        raise ConfigError(f"train.triangle_peak must be a fraction of the steps in [0, 1), got {t.triangle_peak}")
    if t.lookahead_every < 0:
        raise ConfigError(f"train.lookahead_every must be >= 0 steps (0 = off), got {t.lookahead_every}")
    if not (0 <= t.lookahead_decay <= 1):
        raise ConfigError(f"train.lookahead_decay must be in [0, 1], got {t.lookahead_decay}")
    if t.translate < 0:
        raise ConfigError(f"train.translate must be >= 0 pixels, got {t.translate}")
    w = t.whiten_bias_epochs
    if w is not None and (not (w >= 0) or not finite(w)):
        raise ConfigError(f"train.whiten_bias_epochs must be >= 0 epochs (or null: the whole schedule), got {w}")
