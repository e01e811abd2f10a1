"""torchrun with 2 CPU processes (gloo) against one process: same global batch, same seed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import prunegreedy
from prunegreedy import config as config_mod
from prunegreedy.data.registry import SAMPLE_DIR
from prunegreedy.errors import ConfigError, RunError
from prunegreedy.train import distributed
from prunegreedy.train.distributed import SIGTERM, Dist, PeerLost, lost_reason

ARGS = ["run", "--dataset", "imagefolder", "--prune-ratio", "0.5", "--epochs", "2", "--device", "cpu", "--quiet",
        "--set", "model.widths=8,8,16,16", "--set", "train.batch_size=64", "--set", "train.lr=0.05",
        "--set", "train.amp=off", "--set", "compress.finetune_epochs=1"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """150 train and 50 test images of each of 4 classes, copied from the bundled sample."""
    root = tmp_path_factory.mktemp("tiny")
    for split, n in (("train", 150), ("test", 50)):
        for cls in ["airplane", "automobile", "ship", "truck"]:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((SAMPLE_DIR / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


def _run(cmd: list[str], out: Path, data: Path, cache: Path, extra=()) -> tuple[dict, pd.DataFrame]:
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + ARGS + [*extra, "--data-dir", str(data), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "run.json").read_text()), pd.read_csv(out / "stages.csv")


@pytest.mark.parametrize("trainer", ["greedy", "decoupled"])
def test_two_gloo_processes_match_one_process(trainer, tiny_folder, tmp_path, cache_dir):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "prunegreedy"]
    extra = ["--trainer", trainer]
    one_meta, one = _run([sys.executable, "-m", "prunegreedy"], tmp_path / "one", tiny_folder, cache_dir, extra)
    two_meta, two = _run(torchrun, tmp_path / "two", tiny_folder, cache_dir, extra)
    assert one_meta["processes"] == 1 and two_meta["processes"] == 2
    assert one_meta["widths"] == two_meta["widths"] == [4, 4, 8, 8]
    assert one["phase"].tolist() == two["phase"].tolist()
    assert one["width"].tolist() == two["width"].tolist()
    assert one["params_backbone"].tolist() == two["params_backbone"].tolist()
    # Both saw every training image once per epoch, in the same global batches.
    assert one["images_per_s"].notna().tolist() == two["images_per_s"].notna().tolist()
    # BatchNorm normalises each rank's half-batch on its own (32 images, not 64), so training
    # differs slightly; on 200 test images that moves a stage by a few images.
    gap = (one["test_acc"] - two["test_acc"]).abs()
    pairs = list(zip(one["test_acc"], two["test_acc"]))
    # Decoupled: every block trains on an input that moves with all the blocks below it, so the
    # per-rank BN difference compounds over four blocks at once (measured: mean 3.4, max 9.5 points).
    mean, most = (3.0, 7.5) if trainer == "greedy" else (4.5, 11.0)
    assert gap.mean() <= mean and gap.max() <= most, pairs  # 7.5 points = 15 of 200 test images
    assert list((tmp_path / "two").glob("*.tmp*")) == []  # only rank 0 wrote, atomically


def test_two_gloo_processes_train_and_prune_a_model_as_one_process_does(tiny_folder, tmp_path, cache_dir):
    """A whole network (resnet20, cut through the dependency graph inside the schedule) under torchrun:
    rank 0's cut reaches every rank, and the run reloads as the model's own class."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "prunegreedy"]
    model = ["--model", "resnet20", "--set", "compress.at=0.5", "--set", "model.widths=null",
             "--set", "compress.finetune_epochs=0"]
    one_meta, one = _run([sys.executable, "-m", "prunegreedy"], tmp_path / "one", tiny_folder, cache_dir, model)
    two_meta, two = _run(torchrun, tmp_path / "two", tiny_folder, cache_dir, model)
    assert (one_meta["processes"], two_meta["processes"]) == (1, 2)
    assert list(zip(two.stage, two.phase)) == [(s, p) for s in (1, 2, 3) for p in ("pruned", "trained")]
    for column in ("width", "params_backbone", "macs_backbone", "removed"):
        assert one[column].tolist() == two[column].tolist(), column
    assert two[two.phase == "pruned"].removed.tolist() == [3 * 8, 3 * 16, 3 * 32]
    net = prunegreedy.load_network(tmp_path / "two")
    assert type(net).__name__ == "CifarResNet" and net.layer3[0].conv1.out_channels == 32
    assert list((tmp_path / "two").glob("*.tmp*")) == []


def test_single_process_dist_is_a_no_op():
    d = Dist()
    assert not d.enabled and d.is_main and d.shard == (0, 1)
    assert d.broadcast([3, 1]) == [3, 1] and d.all_sum([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    lin = torch.nn.Linear(2, 1)
    assert d.wrap(lin, torch.device("cpu")) is lin
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(0.5)
    assert d.check_same([lin], "weights") == 2.5 + 3  # sum of values plus element count


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# Stage 2 trains long enough (8 epochs) to be killed in the middle of its schedule.
KILL_ARGS = [*ARGS[:ARGS.index("--epochs") + 1], "2,8,2,2", *ARGS[ARGS.index("--epochs") + 2:]]


def _worker_ranks(launcher: int) -> dict[int, int]:
    """{RANK: pid} of torchrun's worker processes (its children), read from /proc."""
    pids = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    ranks = {}
    for pid in pids:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                   if "=" in kv)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # not yet reaped
    except FileNotFoundError:
        return True


def _stop_worker_in_stage_2(tmp_path: Path, env: dict, args: list[str], sig: int) -> tuple[Path, float, str]:
    """A 2-process torchrun run whose rank 1 gets `sig` in stage 2, past its first epoch: (run folder,
    seconds until rank 0 ended, rank 0's own stderr). A stopped (SIGSTOP) rank 1 is killed after."""
    run, logs = tmp_path / "run", tmp_path / "logs"  # --redirects: each worker's own stderr in a file
    proc = subprocess.Popen([*TORCHRUN, "--log-dir", str(logs), "--redirects", "3", "-m", "prunegreedy", *args,
                             "--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "partial-stage-2.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.02)
        ranks = _worker_ranks(proc.pid)
        os.kill(ranks[1], sig)
        sent = time.monotonic()
        while not _ended(ranks[0]) and time.monotonic() < sent + 120:
            time.sleep(0.02)
        took = time.monotonic() - sent
        if sig == signal.SIGSTOP:  # else torchrun waits 30 s for it to take its SIGTERM
            os.kill(ranks[1], signal.SIGKILL)
        _, launcher_err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, launcher_err[-3000:]
    (survivor,) = [p for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    return run, took, survivor.read_text()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_killed_worker_fails_the_run_in_one_line_and_resume_finishes(tiny_folder, tmp_path, cache_dir):
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    args = [*KILL_ARGS, "--set", "dist.timeout=30", "--data-dir", str(tiny_folder)]
    done = subprocess.run([sys.executable, "-m", "prunegreedy", *args, "--out", str(tmp_path / "whole")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = pd.read_csv(tmp_path / "whole" / "stages.csv")

    run, took, err = _stop_worker_in_stage_2(tmp_path, env, args, signal.SIGKILL)
    print(f"rank 0 ended {took:.2f}s after rank 1 was killed")
    assert took < 30  # noticed at once, not at dist.timeout
    line = _one_error_line(err)
    assert "process 1 of 2 stopped (connection" in line and f"--resume {run}" in line, line
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and meta["error"].startswith("process 1 of 2 stopped (connection"), meta
    assert meta["stages_done"] == 1 and (run / "checkpoints" / "partial-stage-2.safetensors").exists()

    # Resume under torchrun as the run started, and a copy with one process: the global batch is kept.
    shutil.copytree(run, tmp_path / "run-one")
    for cmd, path in ((TORCHRUN, run), ([sys.executable], tmp_path / "run-one")):
        res = subprocess.run([*cmd, "-m", "prunegreedy", "run", "--resume", str(path), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        meta = json.loads((path / "run.json").read_text())
        assert meta["status"] == "finished" and "error" not in meta and meta["resumed"] == 1
        assert meta["processes"] == (2 if cmd is TORCHRUN else 1)
        rows = pd.read_csv(path / "stages.csv")
        assert len(rows) == len(whole) == 12
        assert rows[["stage", "phase", "width"]].values.tolist() == whole[["stage", "phase", "width"]].values.tolist()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_hanging_worker_fails_the_run_at_dist_timeout(tiny_folder, tmp_path, cache_dir):
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    args = [*KILL_ARGS, "--set", "dist.timeout=10", "--data-dir", str(tiny_folder)]
    run, took, err = _stop_worker_in_stage_2(tmp_path, env, args, signal.SIGSTOP)
    print(f"rank 0 ended {took:.2f}s after rank 1 was stopped")
    assert 10 <= took < 40
    line = _one_error_line(err)
    assert "process 1 of 2 did not answer within dist.timeout=10s" in line, line
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and "dist.timeout=10s" in meta["error"], meta


GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
               "[127.0.0.1]:20743. This is typically caused by a remote worker crashing.")
GLOO_RESET = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:42141: Connection "
              "reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")
GLOO_TIMEOUT = "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv"
NCCL_REMOTE = ("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error, "
               "NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a remote "
               "process exiting prematurely.")
NCCL_WATCHDOG = ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran "
                 "for 600046 milliseconds before timing out.")


@pytest.mark.parametrize("exc, reason", [
    (RuntimeError(GLOO_CLOSED), "connection closed"),
    (RuntimeError(GLOO_RESET), "connection reset"),
    (torch.distributed.DistBackendError(GLOO_TIMEOUT), "timeout"),
    (RuntimeError("Application timeout caused pair closure"), "timeout"),  # gloo, from DDP's wrap
    (torch.distributed.DistBackendError(NCCL_REMOTE), "remote process exited"),
    (torch.distributed.DistBackendError(NCCL_WATCHDOG), "timeout"),
    (torch.distributed.DistNetworkError("failed to recv, got 0 bytes"), "connection closed"),
    (torch.distributed.DistStoreError("client socket closed"), "connection lost"),
    (RuntimeError("Connection reset by peer"), None),  # not from a distributed backend
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),
    (ValueError(GLOO_CLOSED), None),
    (KeyboardInterrupt(), None),
])
def test_lost_reason_classifies_collective_failures(exc, reason):
    assert lost_reason(exc) == reason


def test_guard_turns_a_lost_peer_into_one_peer_lost(monkeypatch):
    monkeypatch.setattr(distributed, "_stopping", False)
    monkeypatch.setattr(distributed, "_lost", False)
    failed = []
    d = Dist(rank=0, world=2, timeout=30)
    with pytest.raises(PeerLost) as caught:
        with d.guard(on_lost=failed.append):
            raise RuntimeError(GLOO_CLOSED)  # what DDP's all-reduce raises from loss.backward()
    assert str(caught.value) == "process 1 of 2 stopped (connection closed)" == failed[0]
    assert isinstance(caught.value, RunError)  # the CLI prints it as one `error:` line
    assert distributed._stopping and distributed._lost  # SIGTERM ignored, process group left alone

    # A SIGTERM that broke into a failing collective gives way to the collective's reason.
    with pytest.raises(PeerLost) as caught:
        with Dist(rank=1, world=4, timeout=30).guard(on_lost=failed.append):
            try:
                raise torch.distributed.DistBackendError(GLOO_TIMEOUT)
            except RuntimeError:
                raise PeerLost("stopped", SIGTERM)
    assert failed[1] == str(caught.value) == \
        "another process of 4 did not answer within dist.timeout=30s (it hangs or has stopped)"
    # torchrun's SIGTERM alone: this process says it was stopped.
    monkeypatch.setattr(distributed, "_stopping", False)
    with pytest.raises(PeerLost, match="process 0 of 2 was stopped by SIGTERM"):
        with d.guard(on_lost=failed.append):
            d.on_sigterm(signal.SIGTERM, None)
    d.on_sigterm(signal.SIGTERM, None)  # once stopping, a further SIGTERM is ignored
    # Anything else passes unchanged, and one process guards nothing.
    for dd in (d, Dist()):
        with pytest.raises(ZeroDivisionError):
            with dd.guard(on_lost=failed.append):
                1 / 0
    with pytest.raises(RuntimeError):
        with Dist().guard(on_lost=failed.append):
            raise RuntimeError(GLOO_CLOSED)
    assert len(failed) == 3


def test_dist_timeout_config_and_launcher_hint():
    assert config_mod.load(None).dist.timeout == 600
    assert config_mod.load(None, {"dist": {"timeout": "30"}}).dist.timeout == 30
    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="dist.timeout"):
            config_mod.load(None, {"dist": {"timeout": bad}})
    assert Dist().launcher() == "prunegreedy"
    assert Dist(rank=0, world=2, local_world=2).launcher() == "torchrun --nproc_per_node=2 -m prunegreedy"
    assert Dist(rank=0, world=8, local_world=4).launcher() == "torchrun --nnodes=2 ... --nproc_per_node=4 -m prunegreedy"


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resume_matches(tiny_folder, tmp_path, cache_dir):
    """Slurm's time limit: torchrun passes SIGTERM on to every worker; they agree on a step, rank 0
    writes the checkpoint and marks the run interrupted; a resume reaches the uninterrupted records."""
    env = {**os.environ, "PRUNEGREEDY_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    args = [*KILL_ARGS, "--data-dir", str(tiny_folder)]
    run, logs = tmp_path / "run", tmp_path / "logs"
    proc = subprocess.Popen([*TORCHRUN, "--log-dir", str(logs), "--redirects", "3", "-m", "prunegreedy", *args,
                             "--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "partial-stage-2.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["stages_done"] == 1
    (out0,) = [p for p in logs.rglob("stdout.log") if p.parent.name == "0"]
    assert "stopped by SIGTERM; 1 finished stage(s) and" in out0.read_text()
    resumed = subprocess.run([*TORCHRUN, "-m", "prunegreedy", "run", "--resume", str(run), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = tmp_path / "whole"
    done = subprocess.run([*TORCHRUN, "-m", "prunegreedy", *args, "--out", str(whole)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    timing = ["seconds", "images_per_s"]
    pd.testing.assert_frame_equal(*(pd.read_csv(p / "stages.csv").drop(columns=timing) for p in (run, whole)))
