"""prunegreedy: greedy layerwise CNN training (Belilovsky et al., 2019) with compression after every stage."""

__version__ = "0.1.0"

# Public names imported on first use, so `import prunegreedy` stays light (no torch).
_LAZY = {"load_backbone": "prunegreedy.backbone", "export_run": "prunegreedy.export",
         "open_export": "prunegreedy.deployed"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunegreedy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
