"""A run whose process is gone is not running: it reads as stopped (Run.status, report, --resume)."""
import json
import subprocess
import sys

import prunegreedy
from prunegreedy.records import RunLock, live_status
from prunegreedy.report.tables import load_run

from helpers import LinesUI

TINY_SET = {"data.train_limit": 200, "data.test_limit": 100, "run.threads": 1, "model.widths": "4,4,8,8"}
HOLD = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); " \
       "print('held', flush=True); time.sleep(60)"


def test_a_running_run_whose_process_is_gone_reads_as_stopped_and_resumes(tmp_path, cache_dir):
    run = prunegreedy.fit(out=tmp_path / "r", dataset="cifar10-sample", epochs=0.2, quiet=True, set=TINY_SET)
    meta = json.loads((run.path / "run.json").read_text())
    meta.update(status="running", stages_done=3)  # as a process killed in stage 4 left it
    (run.path / "run.json").write_text(json.dumps(meta))
    assert run.status == "stopped" and load_run(run.path).meta["status"] == "stopped"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert RunLock.held(run.path) and run.status == "running"  # a live holder: still running
    finally:
        holder.kill()
        holder.wait()
    assert not RunLock.held(run.path) and run.status == "stopped"
    assert live_status(run.path, "interrupted") == "interrupted"  # only "running" is checked
    ui = LinesUI()
    done = prunegreedy.resume(run.path, ui=ui)
    lines = ui.lines
    assert done.status == "finished" and done.stages.stage.max() == 4
    assert f"resuming {run.path} after stage 3 (run.json said running, but its process was gone: stopped)" in lines
