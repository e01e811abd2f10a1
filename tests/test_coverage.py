"""One torchvision classifier per family, with no split given: its default split, and every stage cut
at 0.5 as the greedy hook cuts it (with a pooled head and into the next stage; the last with the
model's own classifier), leaving a network
that runs and costs less. The plan, fit, export and reload of every classifier under 60M
parameters is benchmarks/coverage.py's (slow); this keeps the suite fast."""
import pytest
import torch

from prunegreedy.compress.graph import prune_stage
from prunegreedy.measure.size import count_params
from prunegreedy.nn.heads import PooledHead
from prunegreedy.nn.models import build_model, default_split
from prunegreedy.nn.split import split_stages, stage_shapes

FAMILIES = {  # name: its default split at 32x32
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "resnext50_32x4d": ["layer1", "layer2", "layer3", "layer4"],
    "regnet_x_400mf": ["stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block4"],
    "mobilenet_v2": ["features.3", "features.6", "features.13", "features.18"],  # registered
    "mobilenet_v3_small": ["features.0", "features.1", "features.3", "features.12"],
    "efficientnet_b0": ["features.1", "features.2", "features.3", "features.8"],
    "shufflenet_v2_x0_5": ["conv1", "stage2", "stage3", "conv5"],
    "densenet121": ["features.relu0", "features.transition1.conv", "features.transition2.conv", "features.norm5"],
    "convnext_tiny": ["features.2.0", "features.4.0", "features.6.0", "classifier.0"],
    "squeezenet1_1": ["features.1", "features.4", "features.7", "features.12"],
    "mnasnet0_5": ["layers.7", "layers.8", "layers.9", "layers.16"],
}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_splits_by_default_and_every_stage_cuts(name):
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", 10, 32).eval()
    split = default_split(f"torchvision:{name}", (3, 32, 32))
    assert split == FAMILIES[name]
    stages, tail = split_stages(model, split)
    before = count_params(model)
    shape = (3, 32, 32)
    for j, stage in enumerate(stages):
        out = stage_shapes([stage], shape)[0]
        nxt = stages[j + 1] if j + 1 < len(stages) else None
        head = PooledHead(out[0], 16, 1, 10, 1, list(out[1:])) if nxt is not None else tail  # the model's own
        prune_stage(stage, head, nxt, shape, 0.5, "l1")
        shape = stage_shapes([stage], shape)[0]
    assert count_params(model) < before
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_network_whose_modules_check_their_version_reloads_from_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    from prunegreedy.records import load_weights

    torch.manual_seed(0)
    model = build_model("torchvision:mnasnet0_5", 10, 32)  # its _load_from_state_dict needs version 2
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    fresh = build_model("torchvision:mnasnet0_5", 10, 32)
    load_weights(fresh, load_file(tmp_path / "w.safetensors"), tmp_path / "w.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
