"""Every shell command and Python example in README.md runs, so the README cannot rot.

The ```bash blocks run in README order, in one folder, on the bundled sample: the data folders
the README names (~/data/...) point at the sample (an image folder of CIFAR-10's layout), and
each command gets options that shorten it (SHORT, EXTRA). The ```python blocks run as written.
Commands the sample cannot run are listed in NOT_RUN, each with its reason.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import prunegreedy
from prunegreedy.data.registry import SAMPLE_DIR

ROOT = Path(prunegreedy.__file__).resolve().parents[1]
README = ROOT / "README.md"

# The README's data folders: the sample has the layout of both (train/<class>/, test/<class>/).
DATA = {"~/data/cifar10": SAMPLE_DIR, "~/data/my-images": SAMPLE_DIR}
# Appended to every `prunegreedy run`: a fifth of an epoch on 300 of the sample's images.
SHORT = ["--epochs", "0.2", "--set", "data.train_limit=300", "--set", "data.test_limit=100",
         "--set", "compress.finetune_epochs=0.2", "--quiet"]
# Appended where a command needs more than SHORT to fit the sample or to be quick.
EXTRA = [
    (lambda a: a[0] == "run" and any(t.startswith("--target-") for t in a),  # the holdout must leave training images
     ["--set", "data.holdout=60", "--set", "compress.sensitivity_bn_images=60",
      "--set", "compress.sensitivity_ratios=0.25,0.5,0.75"]),
    (lambda a: a[0] == "export" and "--int8" in a, ["--calibration", "100"]),  # at most the 300 training images
    (lambda a: a[0] == "bench", ["--repeats", "2"]),
]
# Commands not run here, by a word they contain, with the reason.
NOT_RUN = {
    "venv": "makes the virtual environment: CI (.ci/run) does, as the README says",
    "pip": "installs the package: CI (.ci/run) does, as the README says",
    "pytest": "the test suite itself, which CI runs",
    "torchrun": "needs GPUs and ImageNet; tests/test_distributed.py runs torchrun on CPU processes",
    "--resume": "needs a stopped run; tests/test_api.py and tests/test_stop.py stop runs and resume them",
    "--weights": "needs a trained network's weights file; tests/test_compress_trainer.py saves one and runs it",
}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


def commands() -> list[list[str]]:
    """Every command of the bash blocks as tokens, comments dropped, `a && b` as two commands."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                out.append(tokens[:cut])
                tokens = tokens[cut + 1:]
    return out


def _words(tokens: list[str]) -> set[str]:
    return {*tokens, *(Path(t).name for t in tokens)}


def why_not_run(tokens: list[str]) -> str | None:
    return next((why for word, why in NOT_RUN.items() if word in _words(tokens)), None)


def prunegreedy_args(tokens: list[str]) -> list[str]:
    """The arguments after `prunegreedy`, on the sample and shortened."""
    args = [str(DATA.get(t, t)) for t in tokens[1:]]
    if args[0] == "run":
        args += SHORT
    for applies, more in EXTRA:
        if applies(args):
            args += more
    return args


def _env(cache_dir) -> dict:
    # Subprocesses import this checkout, whatever the installed copy or the working folder.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir), "PYTHONPATH": path}


def test_every_readme_command_is_run_or_listed_with_a_reason():
    cmds = commands()
    assert cmds and blocks("python"), "README.md has no examples"
    for tokens in cmds:
        runnable = Path(tokens[0]).name == "prunegreedy" and why_not_run(tokens) is None
        assert runnable or why_not_run(tokens), f"add a reason to NOT_RUN, or make it runnable: {shlex.join(tokens)}"
    used = {word for word in NOT_RUN if any(word in _words(tokens) for tokens in cmds)}
    assert used == set(NOT_RUN), f"NOT_RUN lists what the README no longer has: {set(NOT_RUN) - used}"


def test_every_readme_example_runs(tmp_path, cache_dir):
    env = _env(cache_dir)
    ran = 0
    for tokens in commands():
        if why_not_run(tokens):
            continue
        args = prunegreedy_args(tokens)
        proc = subprocess.run([sys.executable, "-m", "prunegreedy", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{shlex.join(tokens)}\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        ran += 1
    for code in blocks("python"):
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{code}\n{proc.stderr[-2000:]}"
    assert ran >= 8
    status = {p.name: json.loads((p / "run.json").read_text())["status"] for p in (tmp_path / "runs").iterdir()}
    assert len(status) >= 6 and set(status.values()) == {"finished"}, status
