"""The Python API: `fit`, `plan`, `resume`, `sweep`. The CLI is a thin layer over these.

    import prunegreedy
    run = prunegreedy.fit("quick", out="runs/demo", prune_ratio=0.5, epochs=1)
    print(run.final_acc, run.params, run.macs)
    run.stages            # one row per (stage, phase), a DataFrame
    net = run.backbone()  # the trained network in eval mode

Options are the CLI's by name (`dataset=`, `data_dir=`, `prune_ratio=`, `epochs=`, `trainer=`,
`target_macs=`, ...) plus `set={"train.lr": 0.05}` for any config field. A user mistake raises a
PrunegreedyError subclass carrying the one-line message the CLI prints.
"""
from .options import overrides
from .run import PrintUI, Run, fit, plan, resume, train_config
from .sweep import sweep

__all__ = ["PrintUI", "Run", "fit", "overrides", "plan", "resume", "sweep", "train_config"]
