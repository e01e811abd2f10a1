"""prunegreedy: greedy layerwise CNN training (Belilovsky et al., 2019) with compression after every stage."""

__version__ = "0.1.0"

# Public names imported on first use, so `import prunegreedy` stays light (no torch).
_LAZY = {"fit": "prunegreedy.api", "plan": "prunegreedy.api", "resume": "prunegreedy.api", "sweep": "prunegreedy.api", "Run": "prunegreedy.api",
         "PrunegreedyError": "prunegreedy.errors", "load_backbone": "prunegreedy.deploy.network", "export_run": "prunegreedy.deploy.export",
         "open_export": "prunegreedy.deploy.deployed", "register_hook": "prunegreedy.compress.hooks",
         "build_model": "prunegreedy.nn.models", "register_model": "prunegreedy.nn.models",
         "split_stages": "prunegreedy.nn.split", "load_network": "prunegreedy.deploy.network"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunegreedy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
