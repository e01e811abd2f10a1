"""benchmarks/gpu_paper.sh, dry-run on the CPU with a tiny schedule, so it is known to work before a GPU is lent."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from prunegreedy.data.registry import SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_paper_script_runs_both_recipes_and_reports(tmp_path, cache_dir):
    data = tmp_path / "data"
    for split, n in (("train", 40), ("test", 20)):
        for cls in sorted(p.name for p in (SAMPLE_DIR / split).iterdir()):
            (data / split / cls).mkdir(parents=True)
            for f in sorted((SAMPLE_DIR / split / cls).iterdir())[:n]:
                shutil.copy(f, data / split / cls / f.name)
    pack = tmp_path / "pack.npz"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pack_images.py"), "pack", str(data), str(pack)],
                   check=True, capture_output=True)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "PRUNEGREEDY_CACHE": str(cache_dir),
           "EXTRA": "--device cpu --set model.widths=8,8,16,16 --set run.threads=1 --set train.amp=off"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_paper.sh"), str(pack), str(out), "0.5"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metas = {name: json.loads((out / f"k2-{name}" / "run.json").read_text()) for name in ("unpruned", "pruned")}
    assert {m["status"] for m in metas.values()} == {"finished"}
    assert metas["unpruned"]["widths"] == [8, 8, 16, 16] and metas["pruned"]["widths"] == [4, 4, 8, 8]
    stages = pd.read_csv(out / "k2-pruned" / "stages.csv")
    assert (stages[stages.phase == "finetuned"].epochs == 0.05).all()  # the paper's 5 of 50, scaled
    assert (out / "report" / "report.html").exists() and "gpu_paper done in" in proc.stdout
