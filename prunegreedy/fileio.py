"""Atomic file writes and strict reads of JSON/YAML: what every layer that writes files shares.

Every file is written to a temporary file, fsynced and renamed, so a crash never leaves a
half-written file behind for a later command to read.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import yaml

from .errors import RunError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a temporary file, fsync, rename: readers see the old file or the new one.

    A failure (disk full, permissions) leaves the old file untouched and raises RunError.
    """
    path = Path(path)
    try:
        _atomic_write(path, write)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}; the previous version is untouched") from None


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON (damaged or tampered)") from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"missing file {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid YAML (damaged or tampered)") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a config mapping (damaged or tampered)")
    return data
