"""Cuts inside the schedule: several cuts on Zhu and Gupta's cubic schedule, and distillation from
the block as it was before the cut; both resume exactly."""

import pandas as pd
import pytest
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.compress.inside import cut_plan
from prunegreedy.train.stop import Stopped

from test_stop import SETS, SignalAt, _same_records


def test_cut_plan_follows_the_cubic_schedule():
    assert cut_plan(0.5, 1, 0.5) == [(0.5, 0.5)]
    plan = cut_plan(0.6, 3, 0.5)
    assert [f for f, _ in plan] == [0.6 * 1 / 3, 0.6 * 2 / 3, 0.6]
    assert [r for _, r in plan] == [0.5 * (1 - (1 - i / 3) ** 3) for i in (1, 2, 3)] == pytest.approx([19 / 54, 13 / 27, 0.5])


def _fit(out, ui=None, **sets):
    return prunegreedy.fit("quick", out=out, epochs=2, prune_ratio=0.5, set={**SETS, **sets}, ui=ui, quiet=True)


def test_three_cuts_end_at_the_ratio_and_record_every_cut_in_order(tmp_path, cache_dir):
    run = _fit(tmp_path / "run", **{"compress.cuts": 3, "compress.at": 0.6})
    rows = run.stages
    pruned = rows[rows.phase == "pruned"]
    # Ratios 0.352, 0.481, 0.5 of the original: 8 -> 5 -> 4 and 16 -> 10 -> 8; the third cut finds
    # the block at its final width already and removes nothing (no row).
    assert pruned.groupby("stage").size().tolist() == [2, 2, 2, 2]
    assert pruned[pruned.stage == 3][["width_before", "width"]].values.tolist() == [[16, 10], [10, 8]]
    assert run.meta["widths"] == [4, 4, 8, 8]
    removed = run.meta["removed_filters"]
    assert {k: sum(len(c["removed"]) for c in v["cuts"]) for k, v in removed.items()} == {"1": 4, "2": 4, "3": 8, "4": 8}
    for v, width in zip(removed.values(), [8, 8, 16, 16]):  # each cut on the width the one before left
        for c in v["cuts"]:
            assert c["width"] == width and len(set(c["removed"])) == len(c["removed"])
            assert all(0 <= i < width for i in c["removed"])
            width -= len(c["removed"])


def test_distillation_changes_training_after_the_cut_only(tmp_path, cache_dir):
    plain = _fit(tmp_path / "plain").stages
    distilled = _fit(tmp_path / "kd", **{"compress.distill": 0.7}).stages
    first = lambda t: t[(t.stage == 1) & (t.phase == "pruned")]  # noqa: E731  before any distilled step
    pd.testing.assert_frame_equal(first(plain).drop(columns=["seconds"]), first(distilled).drop(columns=["seconds"]))
    assert plain[plain.phase == "trained"].train_loss.tolist() != distilled[distilled.phase == "trained"].train_loss.tolist()


def test_rewinding_restarts_the_schedule_after_the_cut_only(tmp_path, cache_dir):
    plain = _fit(tmp_path / "plain").stages
    rewound = _fit(tmp_path / "rw", **{"compress.rewind": True}).stages
    first = lambda t: t[(t.stage == 1) & (t.phase == "pruned")]  # noqa: E731  before the restart
    pd.testing.assert_frame_equal(first(plain).drop(columns=["seconds"]), first(rewound).drop(columns=["seconds"]))
    assert plain[plain.phase == "trained"].train_loss.tolist() != rewound[rewound.phase == "trained"].train_loss.tolist()


@pytest.mark.parametrize("sets", [{"compress.distill": 0.7}, {"compress.cuts": 3, "compress.at": 0.6},
                                  {"compress.rewind": True}, {"compress.reconstruct": 100}])
def test_a_stop_after_a_distilled_or_gradual_cut_resumes_exactly(sets, tmp_path, cache_dir):
    whole = _fit(tmp_path / "whole", **sets).path
    out = tmp_path / "stopped"
    with pytest.raises(Stopped):
        _fit(out, SignalAt("stage 2 train", 15), **sets)  # after every cut, inside an epoch
    prunegreedy.resume(out, ui=SignalAt("none", 0))
    _same_records(out, whole)


@pytest.mark.parametrize("args,message", [
    (["--set", "compress.cuts=0"], "compress.cuts must be 1, or more with compress.at < 1"),
    (["--prune-ratio", "0.5", "--set", "compress.cuts=2"], "compress.cuts must be 1, or more with compress.at < 1"),
    (["--set", "compress.distill=1.5", "--set", "compress.at=0.5"], "compress.distill must be in [0, 1]"),
    (["--prune-ratio", "0.5", "--set", "compress.distill=0.5"], "compress.distill must be in [0, 1] (one value, or one per stage), and above 0 only"),
    (["--prune-ratio", "0.5", "--set", "compress.labels=0.1"],
     "compress.labels must be a weight >= 0 (one value, or one per stage), and above 0 only with --trainer compress"),
    (["--trainer", "decoupled", "--prune-ratio", "0.5", "--set", "compress.at=0.5", "--set", "compress.cuts=2"],
     "compress.cuts 2, compress.distill 0, compress.rewind and compress.reconstruct are for the greedy trainer"),
    (["--trainer", "decoupled", "--prune-ratio", "0.5", "--set", "compress.reconstruct=64"],
     "compress.cuts 1, compress.distill 0, compress.rewind and compress.reconstruct are for the greedy trainer"),
    (["--trainer", "end-to-end", "--prune-ratio", "0.5", "--set", "compress.reconstruct=64"],
     "compress.reconstruct 64 refits a greedy stage's layers after its cut; --trainer end-to-end takes"),
    (["--prune-ratio", "0.5", "--set", "compress.reconstruct=-1"],
     "compress.reconstruct is a number of training images, 0 (off) or more, got -1"),
    (["--prune-ratio", "0.5", "--set", "compress.rewind=true"], "compress.rewind restarts the schedule after a cut "
     "inside it: it needs compress.at < 1, got compress.at 1"),
])
def test_bad_cut_settings_are_refused_in_one_line(args, message, tmp_path):
    res = CliRunner().invoke(app, ["run", *args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and not (tmp_path / "r").exists()
    assert res.stderr.strip().startswith(f"error: {message}") and len(res.stderr.strip().splitlines()) == 1
