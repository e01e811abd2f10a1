"""A network is a list of named stages: decided once, then every trainer, cut, plan and loader
works on this one type.

A stage (as timm's `feature_info`) has a name in the network (the module name that ends it), the
settings of the head it learns against (a `StageSpec`: head type, k, hidden width, pooling), and
a module that is either prebuilt (a registered model's or your own modules, cut at module names by
`split_stages`) or made when its input width is known (the paper's blocks, after the previous
stage's cut). A made stage also declares how its input narrows when the previous stage is cut
(psi hides that from the traced graph) and its cost as a function of its widths (for budgets).

`build_network(name or module, ...)` is the one place that knows where a network comes from: the
paper's plans, the registered models, torchvision, or a module the caller passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import BLOCKS, cut_input
from .heads import HEADS
from .layers import check_activation, dirac_
from .models import MODELS, USER, build_model, default_split, is_model, registered_split
from .plans import PLANS, make_plan
from .spec import StageSpec
from .split import check_feature_maps, split_stages, stage_shapes

OWN = "own"  # the last stage learns against the network's own tail (its pooling and classifier)
# model.* options and the networks that take them: a paper plan takes all; a whole model its heads'.
PLAN_OPTIONS = ("width_mult", "widths", "k", "head", "head_pool", "act", "dirac")
MODEL_OPTIONS = ("k", "head", "head_pool")


def _registered(table: dict, name: str, what: str):
    if name not in table:
        raise ConfigError(f"unknown {what} type '{name}'; valid: {', '.join(table)}")
    return table[name]


def make_block(in_channels: int, stage: StageSpec, dirac: bool = False) -> nn.Module:
    """Stage's block on in_channels; `dirac`: its conv starts as a partial identity (nn.layers.dirac_),
    at the width it is made at, so a block made after a cut needs no second init."""
    block = _registered(BLOCKS, stage.block, "block").for_stage(in_channels, stage)
    if dirac:
        dirac_(block.conv)
    return block


def make_head(in_channels: int, stage: StageSpec, num_classes: int,
              in_size: tuple[int, int] | None = None) -> nn.Module:
    """The stage's head on a block giving in_channels maps of in_size (pooled heads need the size)."""
    return _registered(HEADS, stage.head, "head").for_stage(in_channels, stage, num_classes, in_size)


@dataclass
class Stage:
    """One named stage: its head's settings and its module, prebuilt or made from `spec.block`."""
    name: str
    spec: StageSpec
    module: nn.Module | None = None  # None until made (a made stage)
    made: bool = False  # made when its input width is known (declares narrow_input and cost)
    dirac: bool = False  # a made stage's conv starts as a partial identity (model.dirac)

    def narrow_input(self, removed: list[int]) -> None:
        """Drop the input channels fed by the previous stage's removed filters (psi: 4 per filter)."""
        cut_input(self.module, removed)


class PlanNet(nn.Module):
    """The paper's nets: blocks made one at a time, each when its input width is known."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@dataclass
class Network:
    """The model that is trained and given back, its stages in forward order, and its tail (what
    follows the last stage in the model's forward; None for the paper's nets)."""
    name: str
    model: nn.Module
    stages: list[Stage]
    tail: nn.Module | None
    args: dict = field(default_factory=dict)  # how to build it again: num_classes, image_size, options

    @property
    def own_tail(self) -> bool:
        return self.stages[-1].spec.head == OWN

    def module(self, j: int, in_channels: int) -> nn.Module:
        """Stage j's module; a made stage is made now on `in_channels` (its seed is the caller's)."""
        stage = self.stages[j]
        if stage.module is None:
            stage.module = make_block(in_channels, stage.spec, stage.dirac)
            self.model.blocks.append(stage.module)
        return stage.module

    def head(self, j: int, out_shape: tuple[int, ...], spec: StageSpec | None = None) -> nn.Module:
        """A new head for stage j (as `spec` says, default its own) on its output of out_shape, or
        the model's own tail."""
        spec = spec or self.stages[j].spec
        if spec.head == OWN:
            return self.tail
        return make_head(out_shape[0], spec, self.args["num_classes"], tuple(out_shape[1:]))

    def modules_of(self, upto: int | None = None) -> list[nn.Module]:
        return [s.module for s in self.stages[:upto] if s.module is not None]

    def shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The input shape of every stage made so far, then the last one's output shape."""
        return [tuple(input_shape), *stage_shapes(self.modules_of(), tuple(input_shape))]


def network_name(model_cfg) -> str:
    """The network a config trains: model.arch, else the plan (the paper's nets, by name)."""
    return model_cfg.arch if model_cfg.arch is not None else model_cfg.plan


def options_of(model_cfg) -> dict:
    """The model.* options set away from their defaults: what the network is built with."""
    defaults = {"width_mult": 1.0, "widths": None, "k": None, "head": None, "head_pool": None, "act": "relu",
                "dirac": False}
    return {k: getattr(model_cfg, k) for k, d in defaults.items() if getattr(model_cfg, k) != d}


def from_config(model_cfg, num_classes: int, image_size: int, module: nn.Module | None = None,
                name: str | None = None) -> Network:
    """The network of a config's model section (or the caller's `module`, named `name`)."""
    return build_network(name or network_name(model_cfg), num_classes, image_size, options_of(model_cfg),
                         model_cfg.split, model_cfg.last_head, module, model_cfg.stages)


def build_network(name: str, num_classes: int, image_size: int, options: dict | None = None,
                  split: list[str] | None = None, last_head: str = OWN, module: nn.Module | None = None,
                  stages: int = 4) -> Network:
    """The named network (a paper plan, a registered model, torchvision:NAME) or the caller's
    `module` (named user:Class), untrained, cut into its stages. Options a network does not
    declare are refused. A prebuilt model's weights come from torch's current random state. With
    no split given or registered, its stages end where its traced map shrinks (at most `stages`)."""
    options = dict(options or {})
    args = {"num_classes": num_classes, "image_size": image_size, **options}
    if module is None and not (name in PLANS or is_model(name)):
        raise ConfigError(f"unknown model '{name}'; valid: {', '.join([*MODELS, *PLANS])}, fastcifar-W1-W2-..., "
                          f"torchvision:NAME or MODULE:FACTORY")
    declared = PLAN_OPTIONS if module is None and name in PLANS else MODEL_OPTIONS
    bad = [k for k in options if k not in declared]
    if bad:
        raise ConfigError(f"model.{bad[0]} applies to the networks that declare it (the paper's nets: "
                          f"{', '.join(PLANS)}); {name} takes {', '.join(f'model.{k}' for k in declared)}")
    if module is None and name in PLANS:
        net = _plan_network(name, image_size, options, args)
        if split is not None and list(split) != [st.name for st in net.stages]:
            raise ConfigError(f"{name} is made block by block and ends its stages itself; give no split")
        return net
    model = module if module is not None else build_model(name, num_classes, image_size)
    shape = (3, image_size, image_size)
    if split is None:
        split = default_split(model if module is not None else name, shape, stages)
    modules, tail = split_stages(model, list(split))
    check_feature_maps(modules, list(split), shape, type(model).__name__, tail)
    head = StageSpec(width=0, head=options.get("head", "pooled"), k=options.get("k", 2),
                     head_pool=options.get("head_pool"))
    _check_head(head)
    last = replace(head, head=OWN) if last_head == OWN and tail is not None else head
    stages = [Stage(s, last if j == len(split) - 1 else head, m) for j, (s, m) in enumerate(zip(split, modules))]
    return Network(name, model, stages, tail, args)


def _check_head(spec: StageSpec) -> None:
    if spec.head not in HEADS:
        raise ConfigError(f"unknown model.head '{spec.head}'; valid: {', '.join(HEADS)}")
    if spec.k < 1:
        raise ConfigError(f"model.k must be at least 1, got {spec.k}")


def _plan_network(name: str, image_size: int, options: dict, args: dict) -> Network:
    plan = make_plan(name, options.get("width_mult", 1.0), options.get("widths"), options.get("head"),
                     options.get("head_pool"), image_size)
    if "k" in options:
        plan = [replace(s, k=options["k"]) for s in plan]
        _check_head(plan[0])
    if "act" in options:  # checked now: the blocks are made later, stage by stage
        act = check_activation(options["act"], "model.act")
        plan = [replace(s, act=act) for s in plan]
    stages = [Stage(f"blocks.{j}", s, made=True, dirac=options.get("dirac", False)) for j, s in enumerate(plan)]
    return Network(name, PlanNet(), stages, None, args)


def ends_its_stages(name: str) -> bool:
    """Whether the named network says where its stages end (a plan's blocks, a registered split)."""
    return name in PLANS or registered_split(name) is not None


def declares_costs(model_cfg) -> bool:
    """Whether every stage of the config's network declares its cost as a function of its widths
    (made stages do): what the per-stage budget rule needs."""
    return model_cfg.arch is None or model_cfg.arch in PLANS


def user_network(model: nn.Module | list[nn.Module]) -> tuple[nn.Module, str, list[str] | None]:
    """(module, its name, split) for a module or a list of stage modules passed from Python. A
    list becomes an nn.Sequential cut after every one of its modules."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        if not model or not all(isinstance(m, nn.Module) for m in model):
            raise ConfigError("stages given as a list must be a non-empty list of nn.Module")
        return nn.Sequential(*model), f"{USER}Sequential", [str(i) for i in range(len(model))]
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model= takes a registered name, an nn.Module or a list of them, got {type(model).__name__}")
    return model, f"{USER}{type(model).__name__}", None
