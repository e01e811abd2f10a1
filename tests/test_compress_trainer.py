"""--trainer compress: a trained network (--weights, or your module as it is) compressed stage by
stage; the reference row, the rows per stage, reload, export, resume, and every bad input."""
import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import prunegreedy
from prunegreedy.cli import app
from prunegreedy.deploy.export import export_run
from prunegreedy.deploy.network import load_network
from prunegreedy.nn.models import build_model

runner = CliRunner()
LIMITS = {"data.train_limit": 200, "data.test_limit": 100, "run.threads": 1}
SHORT = {**LIMITS, "compress.finetune_epochs": 0.2, "compress.reconstruct": 64}
SPLIT = ["layer1", "layer2", "layer3"]
PHASES = [(0, "reference")] + [(s, p) for s in (1, 2, 3) for p in ("pruned", "finetuned")]


def _sets(d: dict) -> list[str]:
    return [a for k, v in d.items() for a in ("--set", f"{k}={v}")]


def _save(state: dict, path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A resnet20 trained briefly end to end on the sample, and its weights as safetensors."""
    root = tmp_path_factory.mktemp("trained")
    run = prunegreedy.fit(model="resnet20", trainer="end-to-end", epochs=0.2, dataset="cifar10-sample",
                          out=root / "run", quiet=True, set=LIMITS)
    _save(run.backbone().state_dict(), root / "resnet20.safetensors")
    return run, root / "resnet20.safetensors"


def _contiguous(net):
    return net.to(memory_format=torch.contiguous_format)


def test_cli_compresses_stage_by_stage_from_the_reference(trained, tmp_path):
    run, weights = trained
    out = tmp_path / "c"
    res = runner.invoke(app, ["run", "--model", "resnet20", "--dataset", "cifar10-sample", "--trainer", "compress",
                              "--weights", str(weights), "--prune-ratio", "0.5", "--out", str(out), "--quiet",
                              *_sets(SHORT)])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "stages.csv")
    assert list(zip(rows.stage, rows.phase)) == PHASES
    assert rows.test_acc[0] == run.final_acc  # the same network, data and evaluation
    assert rows.macs_backbone[0] == run.macs and rows.macs_backbone.iloc[-1] < run.macs
    assert rows.width[rows.phase == "finetuned"].tolist() == [16, 32, 64]  # compress.scope internal
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "finished" and meta["final_acc"] == rows.test_acc.iloc[-1]
    assert meta["head_accs"] == rows.test_acc[rows.phase == "finetuned"].tolist()  # one per stage, no reference
    assert meta["macs"] == rows.macs_backbone.iloc[-1]
    net = load_network(out)
    assert type(net).__name__ == "CifarResNet" and net.layer1[0].conv1.out_channels == 8
    # only one stage trains at a time: the classifier, never trained, is the given one (weight decay would move it)
    assert torch.equal(net.fc.weight, load_file(weights)["fc.weight"])
    r = export_run(out, tmp_path / "export", with_head=True)
    assert r["params"] < meta["params_with_head"] and r["fold_max_diff"] < 1e-2  # BatchNorm folded in
    assert load_network(tmp_path / "export")(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_python_module_as_given_reloads_identically(trained, tmp_path):
    run, _ = trained
    mine = build_model("resnet20", 10, 32)
    mine.load_state_dict(run.backbone().state_dict())
    r = prunegreedy.fit(model=mine, split=SPLIT, trainer="compress", prune_ratio=0.5, dataset="cifar10-sample",
                        out=tmp_path / "c", quiet=True, set=SHORT)
    rows = r.stages
    assert list(zip(rows.stage, rows.phase)) == PHASES and rows.test_acc[0] == run.final_acc
    assert mine.layer3[2].conv1.out_channels == 32  # compressed in place, as every trainer trains your module
    loaded = _contiguous(load_network(r.path, model=build_model("resnet20", 10, 32)))
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded(x), _contiguous(r.backbone())(x))


@pytest.mark.parametrize("given", ["weights", "module"])
def test_resumed_after_a_stage_goes_on_exactly(trained, tmp_path, given):
    run, weights = trained
    if given == "weights":
        r = prunegreedy.fit(model="resnet20", weights=weights, trainer="compress", prune_ratio=0.5,
                            dataset="cifar10-sample", out=tmp_path / "c", quiet=True, set=SHORT)
    else:
        mine = build_model("resnet20", 10, 32)
        mine.load_state_dict(run.backbone().state_dict())
        r = prunegreedy.fit(model=mine, split=SPLIT, trainer="compress", prune_ratio=0.5, dataset="cifar10-sample",
                            out=tmp_path / "c", quiet=True, set=SHORT)
    copy = tmp_path / "resumed"
    shutil.copytree(r.path, copy)
    meta = json.loads((copy / "run.json").read_text())
    meta.update(stages_done=1, status="interrupted")  # as a run stopped during stage 2 leaves it
    (copy / "run.json").write_text(json.dumps(meta))
    # the original network comes back from the run folder (checkpoints/original.safetensors)
    prunegreedy.resume(copy, quiet=True, model=build_model("resnet20", 10, 32) if given == "module" else None)
    cols = ["stage", "phase", "test_acc", "train_loss", "macs_backbone"]
    assert pd.read_csv(copy / "stages.csv")[cols].equals(r.stages[cols])


def test_finetune_all_adds_one_row_last(trained, tmp_path):
    _, weights = trained
    r = prunegreedy.fit(model="resnet20", weights=weights, trainer="compress", prune_ratio=0.5,
                        dataset="cifar10-sample", out=tmp_path / "c", quiet=True,
                        set={**SHORT, "compress.finetune_all_epochs": 0.2, "compress.distill": 0.5})
    rows = r.stages
    assert list(zip(rows.stage, rows.phase)) == PHASES + [(3, "finetuned-all")]
    assert r.final_acc == rows.test_acc.iloc[-1] and rows.epochs.iloc[-1] == 0.2


@pytest.mark.parametrize("key", ["compress.distill", "compress.labels"])
def test_a_loss_through_the_rest_per_stage_changes_only_the_stages_it_names(trained, tmp_path, key):
    _, weights = trained

    def fit(name, weight):
        return prunegreedy.fit(model="resnet20", weights=weights, trainer="compress", prune_ratio=0.5,
                               dataset="cifar10-sample", out=tmp_path / name, quiet=True,
                               set={**SHORT, key: weight}).stages
    plain, last = fit("plain", 0.0), fit("last", "0,0,0.5")
    cols = ["stage", "phase", "test_acc", "train_loss"]
    assert last[cols][last.stage < 3].equals(plain[cols][plain.stage < 3])  # the same steps, the same numbers
    assert last.train_loss.iloc[-1] != plain.train_loss.iloc[-1]  # stage 3 also learns the logits or the labels


def test_finetune_epochs_per_stage_are_each_stages_own(trained, tmp_path):
    _, weights = trained
    r = prunegreedy.fit(model="resnet20", weights=weights, trainer="compress", prune_ratio=0.5,
                        dataset="cifar10-sample", out=tmp_path / "c", quiet=True,
                        set={**SHORT, "compress.finetune_epochs": "0.1,0,0.2"})
    rows = r.stages
    assert list(zip(rows.stage, rows.phase)) == [p for p in PHASES if p != (2, "finetuned")]  # 0: no repair
    assert rows.epochs[rows.phase == "finetuned"].tolist() == [0.1, 0.2]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = build_model("resnet20", 10, 32)
    torch.save(model, root / "whole.pt")  # a pickled module: would need unpickling
    _save(build_model("resnet20", 100, 32).state_dict(), root / "classes.safetensors")
    _save(build_model("resnet56", 10, 32).state_dict(), root / "resnet56.safetensors")
    state = dict(model.state_dict())
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    _save(state, root / "shape.safetensors")
    _save(model.state_dict(), root / "ok.safetensors")
    return root


@pytest.mark.parametrize("args, message", [
    (["--weights", "{root}/whole.pt"], "holds more than tensors and would need unpickling"),
    (["--weights", "{root}/classes.safetensors"], "holds weights for 100 classes; the data have 10 (fc.weight)"),
    (["--weights", "{root}/resnet56.safetensors"], "does not match resnet20: tensors 216 unexpected (layer1.3."),
    (["--weights", "{root}/shape.safetensors"],
     "conv1.weight has shape [8, 3, 3, 3] in the file, [16, 3, 3, 3] in the network"),
    (["--weights", "{root}/none.safetensors"], "weights file {root}/none.safetensors does not exist"),
    ([], "--trainer compress compresses a trained network: give resnet20's weights with --weights PATH"),
    (["--weights", "{root}/ok.safetensors", "--set", "model.last_head=aux"], "use model.last_head own"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.scope=all"], "use compress.distill 1"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.distill=0,0.5"],
     "compress.distill lists 2 values but resnet20 has 3 stages; give one value (every stage) or 3"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.distill=0,1.5,0"],
     "compress.distill must be in [0, 1] (one value, or one per stage)"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.labels=0.1,0.1"],
     "compress.labels lists 2 values but resnet20 has 3 stages; give one value (every stage) or 3"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.labels=0,-0.1,0"],
     "compress.labels must be a weight >= 0 (one value, or one per stage), and above 0 only with --trainer "
     "compress (it adds the labels to a stage's repair), got 0,-0.1,0 with --trainer compress"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.finetune_epochs=1,1"],
     "compress.finetune_epochs lists 2 values but resnet20 has 3 stages; give one value (every stage) or 3"),
    (["--weights", "{root}/ok.safetensors", "--set", "compress.finetune_epochs=1,-1,1"],
     "compress.finetune_epochs must be >= 0 (one value, or one per stage), got 1,-1,1"),
])
def test_bad_input_is_one_line_and_no_folder(bad_files, tmp_path, cache_dir, args, message):
    out = tmp_path / "run"
    args = [a.format(root=bad_files) for a in args]
    res = runner.invoke(app, ["run", "--model", "resnet20", "--dataset", "cifar10-sample", "--trainer", "compress",
                              "--prune-ratio", "0.5", "--out", str(out), *args, *_sets(LIMITS)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(root=bad_files) in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.parametrize("trainer", ["greedy", "decoupled", "end-to-end"])
def test_weights_with_a_trainer_from_scratch_is_refused(bad_files, tmp_path, cache_dir, trainer):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--model", "resnet20", "--dataset", "cifar10-sample", "--trainer", trainer,
                              "--weights", str(bad_files / "ok.safetensors"), "--out", str(out), *_sets(LIMITS)])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: --weights starts from a trained network; --trainer {trainer} trains from "
                                  f"scratch (trainers that take weights: compress)")
    assert not out.exists()


def test_a_state_dict_saved_by_torch_save_loads(bad_files, tmp_path):
    torch.save(build_model("resnet20", 10, 32).state_dict(), tmp_path / "w.pt")
    table = prunegreedy.plan(model="resnet20", trainer="compress", weights=tmp_path / "w.pt", prune_ratio=0.5,
                             dataset="cifar10-sample")
    assert len(table) == 3
