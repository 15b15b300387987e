"""One model-spec format for every backbone (`runs`): each adapter's cascades round-trip through
it, version-1 specs (older runs, the shipped weights) load as before, and bad specs are one line."""

from __future__ import annotations

import json

import pytest
import torch

from lowdiff_sched.adapters.dit.networks import DiTConfig, LightningDiT
from lowdiff_sched.adapters.dit.weights import dit_cascade_of
from lowdiff_sched.adapters.edm.lowdiff import build_network, cascade_of
from lowdiff_sched.runs import MODEL_SPEC, SPEC_FORMAT, build_from_spec, load_run, same_model, spec_of
from lowdiff_sched.checkpoints import save_checkpoint

EDM = dict(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
DIT = DiTConfig(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)


def edm(levels, method="lowdiff"):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return cascade_of(build_network("VPPrecond", dict(EDM)), levels, method=method)


def dit(levels, method="lowdiff"):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return dit_cascade_of(LightningDiT(DIT), levels, method)


CASES = {
    "edm-none": lambda: edm([8], "none"), "edm-lowdiff": lambda: edm([4, 8]), "edm-c2f": lambda: edm([4, 8], "c2f"),
    "edm-distill": lambda: edm([4, 8], "distill"), "dit-none": lambda: dit([4], "none"), "dit-lowdiff": lambda: dit([2, 4]),
    "dit-c2f": lambda: dit([2, 4], "c2f"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_cascade_round_trips_through_one_format(case):
    model = CASES[case]()
    spec = json.loads(json.dumps(spec_of(model)))
    assert spec["format"] == SPEC_FORMAT and spec["backbone"] == case.split("-")[0] and spec["method"] == case.split("-")[1]
    rebuilt = build_from_spec(spec)
    assert type(rebuilt) is type(model) and rebuilt.state_dict().keys() == model.state_dict().keys()
    assert spec_of(rebuilt) == spec


def version_1(spec: dict) -> dict:
    """The spec as lowdiff-sched wrote it before one format served every backbone."""
    if spec["backbone"] == "dit":
        return {"format": "lowdiff-sched/lowdiff-dit", "version": 1, "config": spec["network"], "levels": spec["levels"],
                "method": spec["method"]}
    old = {"format": "lowdiff-sched/lowdiff-edm", "version": 1, "backbone": spec["network"], "levels": spec["levels"]}
    if spec["method"] == "none":
        return {**old, "retrofit": False}
    return {**old, **({"method": spec["method"]} if spec["method"] != "lowdiff" else {}), **spec["options"]}


@pytest.mark.parametrize("case", CASES)
def test_version_1_specs_build_the_same_model(case):
    spec = spec_of(CASES[case]())
    old = version_1(spec)
    assert same_model(old, spec) and spec_of(build_from_spec(old)) == spec


def test_an_old_run_folder_loads_with_its_weights(tmp_path):
    model = CASES["edm-lowdiff"]()
    (tmp_path / MODEL_SPEC).write_text(json.dumps(version_1(spec_of(model))))
    state = {k: v + 0.01 for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, {"step": 1, "model": state, "ema": state, "optimizer": {}, "config": {}, "world_size": 1})
    loaded = load_run(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def _cut(path) -> None:  # type: ignore[no-untyped-def]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_a_cut_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    """`info`, `export` and `sample --model RUN` read runs through load_run: a latest
    checkpoint cut short is skipped with a note naming it, and the one before is used; a
    cut exported .safetensors is one line naming the file."""
    from lowdiff_sched.runs import export_run, load_exported

    model = CASES["edm-lowdiff"]()
    (tmp_path / MODEL_SPEC).write_text(json.dumps(spec_of(model)))
    states = [{k: v + 0.01 * step for k, v in model.state_dict().items()} for step in (1, 2)]
    for step, state in zip((1, 2), states):
        save_checkpoint(tmp_path, {"step": step, "model": state, "ema": state, "optimizer": {}, "config": {}, "world_size": 1})
    _cut(tmp_path / "checkpoint-00000002.pt")
    loaded = load_run(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in states[0].items())
    assert "skipped checkpoint-00000002.pt, which does not load" in capsys.readouterr().err
    _cut(tmp_path / "checkpoint-00000001.pt")
    with pytest.raises(ValueError, match=r"no checkpoint in .* loads: skipped checkpoint-00000002.pt.*; skipped checkpoint-00000001.pt"):
        load_run(tmp_path)

    save_checkpoint(tmp_path, {"step": 3, "model": states[1], "ema": states[1], "optimizer": {}, "config": {}, "world_size": 1})
    stem = tmp_path / "exported"
    export_run(tmp_path, stem)
    _cut(stem.with_suffix(".safetensors"))
    with pytest.raises(ValueError, match=r"exported.safetensors' is not a readable safetensors file"):
        load_exported(stem)


@pytest.mark.parametrize("change, needle", [
    ({"backbone": "unet"}, "backbone"), ({"method": "retrofit"}, "method"), ({"levels": []}, "levels"),
    ({"options": {"cond": "nearest"}}, "options"), ({"version": 3}, "version"), ({"format": "x"}, "not a lowdiff-sched model spec"),
])
def test_bad_specs_are_one_line(change, needle):
    spec = {**spec_of(CASES["edm-lowdiff"]()), **change}
    with pytest.raises(ValueError, match=needle) as info:
        build_from_spec(spec)
    assert "\n" not in str(info.value)


def test_method_none_is_the_network_itself_for_every_backbone():
    with pytest.raises(ValueError, match='method "none"'):
        edm([4, 8], "none")
    with pytest.raises(ValueError, match='method "none"'):
        dit([2, 4], "none")
