"""The protocol's optional members: their defaults for a duck-typed cascade, overrides through
CascadeDefaults, and the level checks every adapter shares."""

from __future__ import annotations

import pytest
import torch

from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.protocol import (
    CascadeDefaults,
    Level,
    ResolutionCascade,
    check_condition,
    check_level_sizes,
    conditions_on_lower_level_of,
    device_of,
    hand_overs_of,
    is_conditioned,
    label_dim_of,
    level_index,
)
from lowdiff_sched.sampling import sample_cascade
from lowdiff_sched.schedules import karras_sigmas
from lowdiff_sched.transitions import Renoise


class Shrink:
    """A k-diffusion-style cascade: `levels` and `denoise`, nothing else."""

    def __init__(self) -> None:
        self.levels = (Level((4, 4), 1), Level((8, 8), 1))

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)


class LabelledShrink(Shrink, CascadeDefaults):
    """The same cascade declaring what differs from the defaults."""

    label_dim = 10
    conditions_on_lower_level = False


def test_a_duck_typed_cascade_gets_the_documented_defaults_and_samples():
    cascade = Shrink()
    assert isinstance(cascade, ResolutionCascade)
    assert label_dim_of(cascade) == 0
    assert conditions_on_lower_level_of(cascade) is True
    assert hand_overs_of(cascade) == ("condition",)
    assert device_of(cascade) == torch.device("cpu")
    assert not is_conditioned(cascade, 0) and is_conditioned(cascade, 1) and is_conditioned(cascade, -1)
    plan = CascadePlan([StagePlan(0, karras_sigmas(3)[:-1], "euler"), StagePlan(1, karras_sigmas(3, sigma_max=10.0), "euler")])
    x = sample_cascade(cascade, plan, seeds=[0, 1])
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_the_mixin_gives_the_same_defaults_as_members():
    cascade = type("Plain", (Shrink, CascadeDefaults), {})()
    assert cascade.label_dim == label_dim_of(Shrink()) == 0
    assert cascade.conditions_on_lower_level is conditions_on_lower_level_of(Shrink()) is True
    assert cascade.hand_overs == hand_overs_of(Shrink()) == ("condition",)
    assert cascade.device == device_of(Shrink()) == torch.device("cpu")


def test_a_mixin_subclass_overrides_the_defaults():
    cascade = LabelledShrink()
    assert label_dim_of(cascade) == cascade.label_dim == 10
    assert conditions_on_lower_level_of(cascade) is False
    assert hand_overs_of(cascade) == cascade.hand_overs == ("continue", "renoise")  # implied by unconditional levels
    assert not is_conditioned(cascade, 1)
    declared = type("Declared", (LabelledShrink,), {"hand_overs": ("renoise",), "device": "meta"})()
    assert hand_overs_of(declared) == ("renoise",) and device_of(declared) == torch.device("meta")
    plan = CascadePlan([StagePlan(0, karras_sigmas(3), "euler"), StagePlan(1, karras_sigmas(3, sigma_max=10.0), "euler",
                                                                             transition=Renoise())])
    assert sample_cascade(cascade, plan, seeds=[3]).shape == (1, 1, 8, 8)


def test_an_nn_module_cascade_is_on_its_parameters_device():
    class Module(torch.nn.Module, CascadeDefaults):
        levels = (Level((4, 4), 1),)

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64, device="meta"))

        def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
            return x * self.scale

    assert Module().device == device_of(Module()) == torch.device("meta")


def test_level_index_counts_negative_levels_from_the_top():
    assert [level_index(i, 3) for i in (0, 2, -1, -3)] == [0, 2, 2, 0]
    for bad in (3, -4):
        with pytest.raises(ValueError, match=f"level {bad} is outside the cascade's 3 levels"):
            level_index(bad, 3)


def test_level_zero_takes_no_condition_and_the_others_need_one():
    cond = torch.zeros(1, 1, 4, 4)
    check_condition(0, None)
    check_condition(1, cond)
    check_condition(1, None, required=False)
    with pytest.raises(ValueError, match="level 0 is unconditional"):
        check_condition(0, cond, required=False)
    with pytest.raises(ValueError, match="level 2 is conditioned on the level below: cond is required"):
        check_condition(2, None)


def test_level_sizes_increase_end_at_the_top_and_divide_evenly():
    assert check_level_sizes([8, 16.0, 32], 32, multiple=4) == (8, 16, 32)  # type: ignore[list-item]
    for sizes in ([], [16, 8, 32], [8, 8, 32], [8, 16]):
        with pytest.raises(ValueError, match="increasing sizes that end at the network's resolution 32"):
            check_level_sizes(sizes, 32)
    with pytest.raises(ValueError, match="at least 2 increasing sizes"):
        check_level_sizes([32], 32, min_levels=2)
    with pytest.raises(ValueError, match=r"multiples of 4, .*got \[6\]"):
        check_level_sizes([6, 32], 32, multiple=4)
