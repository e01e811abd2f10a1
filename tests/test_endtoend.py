"""The end-to-end baselines: joint training of the plan, and prune-after-training."""
import copy

import pytest
import torch
from torch import nn

from prunegreedy import config
from prunegreedy.compress.network import cut_stage
from prunegreedy.deploy.network import load_trained
from prunegreedy.trainers import registry as trainers_registry
from prunegreedy.trainers.endtoend import total_epochs
from prunegreedy.errors import ConfigError
from prunegreedy.records import RunRecord
from prunegreedy.trainers.run import execute, new_meta

from helpers import made_stages, snapshot


def _cfg(tmp_path, **over):
    base = {"data": {"name": "cifar10-sample", "train_limit": 256, "test_limit": 100},
            "model": {"plan": "cifar10-k2", "widths": [8, 8, 16, 16]},
            "train": {"trainer": "end-to-end", "epochs": 0.5, "batch_size": 64, "lr": 0.05, "amp": "off",
                      "schedule": "linear"},
            "compress": {"finetune_epochs": 0.5},
            "run": {"out": str(tmp_path / "run"), "quiet": True}}
    return config.from_dict(config.merge(base, over))


def _run(cfg, sample, tmp_path, name="run"):
    ds = sample.__class__(sample.name, sample.train_x[:256], sample.train_y[:256], sample.test_x[:100],
                          sample.test_y[:100], sample.classes, sample.mean, sample.std)
    RunRecord.make_folder(tmp_path / name)
    record = RunRecord(tmp_path / name, new_meta(cfg, ds, torch.device("cpu")))
    return record, execute(cfg, record, ds, torch.device("cpu"))[0]


def test_end_to_end_updates_every_block_and_records_one_stage(sample, tmp_path):
    cfg = _cfg(tmp_path)
    _, blocks, heads = made_stages(seed=0, heads=False)  # the run seeds its init the same way: seed * 1000
    init = snapshot(nn.Sequential(*blocks, heads[-1]))
    run, meta = _run(cfg, sample, tmp_path)
    net, heads, _ = load_trained(run.ckpt / "stage-4")
    trained = snapshot(nn.Sequential(*net.modules_of(), heads[-1]))
    assert init.keys() == trained.keys()
    for j in range(4):  # every block's conv weights and BN statistics moved: gradients reached all of them
        for key in (f"{j}.conv.weight", f"{j}.bn.running_mean"):
            assert not torch.equal(init[key], trained[key]), key
    assert [type(h).__name__ for h in heads] == ["Identity"] * 3 + ["AuxHead"]
    assert meta["widths"] == [8, 8, 16, 16] and meta["ensemble_acc"] is None
    assert [r["phase"] for r in run.rows] == ["trained"] and run.rows[0]["stage"] == 4
    assert run.rows[0]["epochs"] == 4 * 0.5  # default budget: the greedy total
    assert meta["final_acc"] == run.rows[0]["test_acc"]


def test_total_epochs_budget(tmp_path):
    assert total_epochs(_cfg(tmp_path, train={"epochs": [3, 2, 2, 2]}), 4) == 9
    assert total_epochs(_cfg(tmp_path, train={"total_epochs": 5}), 4) == 5
    with pytest.raises(ConfigError, match="total_epochs"):
        _cfg(tmp_path, train={"total_epochs": 0})


def test_unknown_trainer_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown trainer 'layerwise'; valid: greedy, decoupled, end-to-end"):
        trainers_registry.get_trainer(_cfg(tmp_path, train={"trainer": "layerwise"}))


def test_prune_after_training_gives_the_greedy_widths(sample, tmp_path):
    prune = {"hook": "prune", "ratio": 0.5, "finetune_epochs": 0.25}
    _, pat = _run(_cfg(tmp_path, compress=prune), sample, tmp_path, "pat")
    _, greedy = _run(_cfg(tmp_path, compress=prune, train={"trainer": "greedy"}), sample, tmp_path, "greedy")
    assert pat["widths"] == greedy["widths"] == [4, 4, 8, 8]
    assert pat["params"] == greedy["params"]
    assert {j: len(r["cuts"][0]["removed"]) for j, r in pat["removed_filters"]["4"].items()} == \
        {"0": 4, "1": 4, "2": 8, "3": 8}


def test_cutting_every_stage_equals_zeroing_the_cut_filters():
    """Cutting filters (through psi too) computes exactly what the full net computes with them zeroed."""
    net, blocks, heads = made_stages(seed=1, heads=False)
    full = nn.Sequential(*blocks, heads[-1])
    with torch.no_grad():
        for m in full.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    full.eval()
    reference = copy.deepcopy(full)
    removed, shape = {}, (3, 32, 32)
    for j, ratio in enumerate([0.5, 0.25, 0.5, 0.5]):  # forward order, as the end-to-end trainer cuts
        removed[j] = list(cut_stage(net, j, heads[j], shape, ratio, "l1").cuts[0].removed)
        shape = tuple(nn.Sequential(*blocks[:j + 1])(torch.zeros(1, 3, 32, 32)).shape[1:])
    assert [b.conv.out_channels for b in blocks] == [4, 6, 8, 8]
    assert blocks[2].conv.in_channels == 4 * 6  # psi: four inputs per kept filter of block 2
    hooks = [reference[j].register_forward_hook(
        lambda m, i, out, idx=idx: out.index_fill(1, torch.tensor(idx), 0.0)) for j, idx in removed.items()]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(full(x), reference(x), rtol=1e-5, atol=1e-5)
    for h in hooks:
        h.remove()
