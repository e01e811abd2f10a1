"""The plan of a run as a table: a DataFrame (prunegreedy.plan), plan.csv, run.json's `planned`
section and the lines `prunegreedy plan` prints and a run's log starts with."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pandas as pd
from torch import nn

from ..config import Config
from ..nn.network import declares_costs, network_name
from .common import check
from .planning import GroupPlan, StagePlan, plan_stages, run_ratios

UNIT = "MACs (fvcore: one multiply-add is one MAC)"


@dataclass
class RunPlan:
    """Every stage before and after its cut, the totals, and what a budget can know up front."""
    name: str  # the plan or model
    stages: list[StagePlan]
    totals: dict
    budget: dict | None
    notes: list[str]

    def table(self) -> pd.DataFrame:
        """One row per stage; `groups` names each group's root and widths (attrs: the whole plan)."""
        rows = []
        for s in self.stages:
            row = {f.name: getattr(s, f.name) for f in fields(s) if f.name not in ("groups", "note")}
            row["groups"] = "; ".join(f"{g.root} {g.width}->{g.kept}" for g in s.groups)
            rows.append(row)
        df = pd.DataFrame(rows)
        df.attrs.update(self.as_dict())
        return df

    def as_dict(self) -> dict:
        return {"name": self.name, "stages": [asdict(s) for s in self.stages], "totals": self.totals,
                "budget": self.budget, "notes": self.notes}

    def csv(self) -> str:
        """plan.csv: the stage rows, then a `total` row (backbone before and after every cut)."""
        t = self.totals
        total = {"stage": "total", "params": t["params"], "macs": t["macs"], "params_after": t["params_after"],
                 "macs_after": t["macs_after"]}
        table = self.table()
        return pd.concat([table, pd.DataFrame([total])], ignore_index=True).to_csv(index=False)

    def lines(self) -> list[str]:
        """One line per stage under a header, the totals, every group cut, the notes: for a terminal or log.txt."""
        header = ["stage", "modules", "block", "in", "out", "head", "head params", "head MACs", "params", "MACs",
                  "ratio", "width", "params after", "MACs after", "backbone params after", "backbone MACs after"]
        rows = [header] + [[str(s.stage), _modules(s), s.block or "-", s.in_shape, s.out_shape, s.head,
                            _n(s.head_params), _n(s.head_macs), _n(s.params), _n(s.macs), f"{s.ratio:.4g}",
                            f"{s.width}->{s.width_after}", _n(s.params_after), _n(s.macs_after),
                            _n(s.params_backbone_after), _n(s.macs_backbone_after)] for s in self.stages]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        out = [f"plan of {self.name}: {len(self.stages)} stages, built and cut on untrained weights; {UNIT}"]
        out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        t = self.totals
        out.append(f"  total backbone: params {_n(t['params'])} -> {_n(t['params_after'])} "
                   f"({_x(t['params_after'], t['params'])}), MACs {_n(t['macs'])} -> {_n(t['macs_after'])} "
                   f"({_x(t['macs_after'], t['macs'])}); with the last head: params {_n(t['params_with_head_after'])},"
                   f" MACs {_n(t['macs_with_head_after'])}")
        cut = [(s.stage, g) for s in self.stages for g in s.groups]
        if cut:
            out.append("  groups cut (root width->kept: coupled layers; (in): its input channels; "
                       "next: also narrows the next stage's input):")
            out += [f"    stage {j}  {_group(g)}" for j, g in cut]
        out += [f"  stage {s.stage}: {s.note}" for s in self.stages if s.note]
        out += [f"  {n}" for n in self.notes]
        return out


def _modules(s: StagePlan) -> str:
    return s.first if s.modules == 1 else f"{s.first}..{s.last} ({s.modules})"


def _group(g: GroupPlan) -> str:
    where = g.kind + (", next" if g.reaches_next else "")
    return f"{g.root} {g.width}->{g.kept}: {', '.join(g.coupled) or '-'}  [{where}]"


def _n(x: int) -> str:
    """A count at a glance (plan.csv and the DataFrame have it exactly): 9876, 12.3K, 4.72M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if x >= 10 * div if suffix == "K" else x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:,}"


def _x(after: int, before: int) -> str:
    return f"{after / before:.3f}x" if before else "-"


def make_run_plan(cfg: Config, num_classes: int, image_shape: tuple[int, int, int],
                  network: nn.Module | None = None) -> RunPlan:
    """The plan of a checked config (registry.get_trainer(cfg) first) on data of that shape."""
    ratios, budget = run_ratios(cfg, check(cfg, network), image_shape, num_classes, network)
    stages = plan_stages(cfg, num_classes, image_shape, network, ratios)
    unpruned = plan_stages(cfg, num_classes, image_shape, network, [0.0] * len(ratios)) if any(ratios) else stages
    before, after = unpruned[-1], stages[-1]
    totals = {"params": before.params_backbone_after, "macs": before.macs_backbone_after,
              "params_after": after.params_backbone_after, "macs_after": after.macs_backbone_after,
              "params_with_head": before.params_backbone_after + before.head_params_after,
              "macs_with_head": before.macs_backbone_after + before.head_macs_after,
              "params_with_head_after": after.params_backbone_after + after.head_params_after,
              "macs_with_head_after": after.macs_backbone_after + after.head_macs_after}
    return RunPlan(network_name(cfg.model), stages, totals, budget, _notes(cfg, budget))


def _notes(cfg: Config, budget: dict | None) -> list[str]:
    c = cfg.compress
    notes = []
    if c.hook == "none":
        notes.append("compress.hook none: nothing is cut (--prune-ratio, --prune-ratios or a budget cut)")
    elif c.hook != "prune":
        notes.append(f"compress.hook {c.hook}: shown as the prune hook's cut at the same ratios")
    else:
        notes.append(f"which filters go depends on the trained weights (importance {c.importance}); "
                     f"how many does not")
    if c.at < 1 and c.hook != "none":
        notes.append(f"cut inside the schedule (compress.at {c.at:g}, {c.cuts} cut(s)): the widths are those "
                     f"after the last cut")
    if cfg.train.trainer != "greedy":
        notes.append(f"trainer {cfg.train.trainer}: the same blocks and cuts; its heads and stages.csv rows "
                     f"differ from the greedy stages shown")
    if budget is not None:
        unit = "MACs" if budget["kind"] == "macs" else "params"
        if not declares_costs(cfg.model):
            notes.append(f"budget --target-{budget['kind']} {budget['text']}: {budget['target']:,} {unit} of the "
                         f"unpruned {budget['unpruned']:,}; every stage is cut at ratio {budget['uniform_ratio']:g}, "
                         f"the smallest that meets it alike (its stages declare no costs for the per-stage rule)")
            return notes
        notes.append(f"budget --target-{budget['kind']} {budget['text']}: {budget['target']:,} {unit} of the "
                     f"unpruned {budget['unpruned']:,}. The rule chooses each stage's ratio once the stage is "
                     f"trained, from its held-out sensitivity (compress.budget), so no ratio is known yet; shown: "
                     f"every stage at the one ratio that meets the target alike, {budget['uniform_ratio']:.4g}, "
                     f"the candidate the rule starts from")
    return notes
