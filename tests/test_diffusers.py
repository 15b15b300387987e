"""diffusers models as cascades. Exactness: a one-stage Euler plan equals diffusers' own
denoising loop (EulerDiscreteScheduler; FlowMatchEulerDiscreteScheduler for a flow
transformer) on the same sigmas and initial noise, to float32 rounding, on small
random-weight models built here. Then the sigma <-> timestep maps, the schedules, the
training-free cascades and what they refuse, and loading a save_pretrained folder offline."""

from __future__ import annotations

import json

import k_diffusion as K
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

diffusers = pytest.importorskip("diffusers")

from lowdiff_sched.adapters.diffusers import from_diffusers  # noqa: E402
from lowdiff_sched.adapters.diffusers.backbone import load_diffusers  # noqa: E402
from lowdiff_sched.adapters.diffusers.denoisers import ddpm_sigmas, flow_sigmas_for, sigma_to_timestep  # noqa: E402
from lowdiff_sched.cli.app import app  # noqa: E402
from lowdiff_sched.labels import class_label_args  # noqa: E402
from lowdiff_sched.plan import CascadePlan, StagePlan  # noqa: E402
from lowdiff_sched.protocol import stage_denoiser  # noqa: E402
from lowdiff_sched.sampling import sample_cascade  # noqa: E402
from lowdiff_sched.schedules import FLOW_SIGMA_MAX  # noqa: E402
from lowdiff_sched.transitions import Continue  # noqa: E402

runner = CliRunner()


def tiny_unet(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kwargs,
    ).eval()


def tiny_sd3() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=16,
    ).eval()


def diffusers_loop(model, scheduler, x, **inputs):
    """diffusers' own denoising loop: scale, predict, step."""
    with torch.no_grad():
        for t in scheduler.timesteps:
            scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x  # flow: none
            out = model(scaled, timestep=t.expand(x.shape[0]), **inputs).sample
            x = scheduler.step(out, t, x).prev_sample
    return x


def euler(cascade, noise, sigmas, **extra):
    with torch.no_grad():
        return K.sampling.sample_euler(stage_denoiser(cascade, -1), noise * sigmas[0], sigmas, disable=True,
                                       extra_args=extra or None).float()


@pytest.mark.parametrize("karras", [True, False])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_a_unet_one_stage_plan_equals_diffusers_euler_loop(karras, prediction):
    unet = tiny_unet()
    scheduler = diffusers.EulerDiscreteScheduler(use_karras_sigmas=karras, prediction_type=prediction)
    scheduler.set_timesteps(8)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = diffusers_loop(unet, scheduler, noise * scheduler.init_noise_sigma)
    got = euler(from_diffusers(unet, scheduler), noise.double(), scheduler.sigmas.double())
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_class_labels_pass_through_as_ids_or_one_hot_rows():
    unet = tiny_unet(num_class_embeds=5)
    scheduler = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(4)
    noise, ids = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 4])
    expected = diffusers_loop(unet, scheduler, noise * scheduler.init_noise_sigma, class_labels=ids)
    cascade = from_diffusers(unet, scheduler)
    assert cascade.label_dim == 5
    for labels in (ids, class_label_args([1, 4], 5)["class_labels"]):
        got = euler(cascade, noise.double(), scheduler.sigmas.double(), class_labels=labels)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    with pytest.raises(ValueError, match="class-conditional .5 classes.: give class_labels"):
        euler(cascade, noise.double(), scheduler.sigmas.double())


def test_a_sample_prediction_model_is_its_own_x0_estimate():
    unet = tiny_unet()
    cascade = from_diffusers(unet, {"_class_name": "DDPMScheduler", "prediction_type": "sample"})
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 0.5])
    t = sigma_to_timestep(sigma, ddpm_sigmas({}), log=False)
    with torch.no_grad():
        expected = unet(x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5, t.float()).sample
        assert torch.allclose(cascade.denoise(x, sigma, level=0), expected, atol=1e-6)


def test_a_flow_transformer_one_stage_plan_equals_diffusers_flow_euler_loop():
    net = tiny_sd3()
    inputs = {"encoder_hidden_states": torch.randn(2, 5, 16), "pooled_projections": torch.randn(2, 8)}
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=[0.999, 0.9, 0.7, 0.5, 0.3, 0.1])  # t = 1 has no finite EDM sigma: start below it
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    s = scheduler.sigmas.double()
    expected = diffusers_loop(net, scheduler, noise * scheduler.sigmas[0], **inputs)
    sigmas = torch.cat([s[:-1] / (1 - s[:-1]), s[-1:]])  # noise fraction s -> sigma = s / (1 - s)
    got = euler(from_diffusers(net, scheduler), noise.double(), sigmas, **inputs)  # x_s = s0 n is x = x_s / (1 - s0) = sigma0 n
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_a_flux_transformer_one_stage_plan_equals_diffusers_flow_euler_loop():
    """Flux on packed latents (2x2 patches), rotary position ids, timesteps as noise fractions
    and a guidance input, against the loop as Flux pipelines run it."""
    torch.manual_seed(0)
    net = diffusers.FluxTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                           num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                           guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    b, c, h = 2, 4, 8
    inputs = {"encoder_hidden_states": torch.randn(b, 5, 16), "pooled_projections": torch.randn(b, 8), "guidance": torch.full((b,), 3.5)}
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=[0.999, 0.8, 0.6, 0.4, 0.2], mu=0.7)
    noise = torch.randn(b, c, h, h, generator=torch.Generator().manual_seed(4))
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(h // 2), indexing="ij")
    ids = {"img_ids": torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float(), "txt_ids": torch.zeros(5, 3)}
    x = (noise * scheduler.sigmas[0]).view(b, c, h // 2, 2, h // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) ** 2, 4 * c)
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = net(x, timestep=(t / 1000).expand(b), **inputs, **ids).sample
            x = scheduler.step(v, t, x).prev_sample
    expected = x.view(b, h // 2, h // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, h)
    s = scheduler.sigmas.double()
    cascade = from_diffusers(net, scheduler, levels=[4, 8])
    got = euler(cascade, noise.double(), torch.cat([s[:-1] / (1 - s[:-1]), s[-1:]]), **inputs)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert [cascade.image_seq_len(i) for i in (0, 1)] == [4, 16]
    with pytest.raises(ValueError, match="FluxTransformer2DModel has no size of its own: give levels"):
        from_diffusers(net, scheduler)


@pytest.mark.parametrize("config, mu_tokens", [({"shift": 3.0}, None), ({"shift": 1.0}, None),
                                               ({"use_dynamic_shifting": True}, 64), ({"use_dynamic_shifting": True}, 4096)])
def test_flow_schedules_are_the_schedulers_own_in_sigma(config, mu_tokens):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    mu = None
    if mu_tokens is not None:  # the pipelines' shift for a picture of mu_tokens tokens, from the config's defaults
        c = scheduler.config
        mu = c.base_shift + (c.max_shift - c.base_shift) * (mu_tokens - c.base_image_seq_len) / (c.max_image_seq_len - c.base_image_seq_len)
    scheduler.set_timesteps(7, mu=mu)
    s = scheduler.sigmas.double()
    ours = flow_sigmas_for(scheduler.config, 7, mu_tokens)
    assert ours[0] == FLOW_SIGMA_MAX and ours[-1] == 0
    assert torch.allclose(ours[1:-1], s[1:-1] / (1 - s[1:-1]), rtol=1e-5)


@settings(max_examples=50, deadline=None)
@given(t=st.floats(0, 999), log=st.booleans(), schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]))
def test_sigma_to_timestep_inverts_the_schedulers_map(t, log, schedule):
    train = ddpm_sigmas({"beta_schedule": schedule}).double()
    i = int(t)
    w = t - i if i < 999 else 0.0
    hi = train[min(i + 1, 999)]
    sigma = torch.exp((1 - w) * train[i].log() + w * hi.log()) if log else (1 - w) * train[i] + w * hi
    assert sigma_to_timestep(sigma.reshape(1), train, log).item() == pytest.approx(i + w, abs=1e-6)
    assert sigma_to_timestep(train[[0, 999]], train, log).tolist() == [0, 999]  # the ends exactly


def test_a_training_free_unet_cascade_runs_a_continue_plan():
    cascade = from_diffusers(tiny_unet(), diffusers.EulerDiscreteScheduler(), levels=[8, 16])
    assert [lv.size for lv in cascade.levels] == [(8, 8), (16, 16)] and cascade.hand_overs == ("continue", "renoise")
    plan = CascadePlan([StagePlan(0, [14.0, 5.0, 2.0], "euler"), StagePlan(1, [4.0, 1.0, 0.0], "euler", transition=Continue())])
    out = sample_cascade(cascade, plan, seeds=[0, 1])
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_what_a_cascade_refuses_is_one_line():
    euler_scheduler, flow = diffusers.EulerDiscreteScheduler(), diffusers.FlowMatchEulerDiscreteScheduler()
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                          sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    cases = [
        (lambda: from_diffusers(dit, euler_scheduler, levels=[4, 8]), "fixed positional table for 8x8; it cannot run at level 4"),
        (lambda: from_diffusers(tiny_sd3(), flow, levels=[8, 16, 32]), "end at the network's resolution 16"),
        (lambda: from_diffusers(tiny_unet(), euler_scheduler, levels=[5, 16]), "multiples of 2"),
        (lambda: from_diffusers(tiny_sd3(), euler_scheduler), "flow-matching model"),
        (lambda: from_diffusers(tiny_unet(), flow), "trained on a DDPM-family schedule"),
        (lambda: from_diffusers(torch.nn.Linear(2, 2), euler_scheduler), "Linear is not supported"),
        (lambda: from_diffusers(tiny_unet(), {"prediction_type": "flow"}).denoise(torch.zeros(1, 3, 16, 16), torch.ones(1), level=0),
         "prediction_type 'flow' is not supported"),
    ]
    for make, needle in cases:
        with pytest.raises(ValueError, match=needle):
            make()
            pytest.fail(f"no error: {needle}")
    with pytest.raises(ValueError, match="takes no prompt"):
        from_diffusers(tiny_unet(), euler_scheduler).denoise(torch.zeros(1, 3, 16, 16), torch.ones(1), level=0, prompt="a cat")


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    tiny_unet().save_pretrained(folder)
    diffusers.EulerDiscreteScheduler(use_karras_sigmas=True).save_pretrained(folder)
    return folder


def test_a_save_pretrained_folder_loads_offline_to_the_same_cascade(saved):
    loaded, original = load_diffusers(saved), from_diffusers(tiny_unet(), diffusers.EulerDiscreteScheduler(use_karras_sigmas=True))
    x, sigma = torch.randn(1, 3, 16, 16), torch.tensor([2.0])
    with torch.no_grad():
        assert torch.equal(loaded.denoise(x, sigma, level=0), original.denoise(x, sigma, level=0))


def test_sample_takes_a_diffusers_folder(saved, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(CascadePlan([StagePlan(0, [14.0, 3.0, 0.5, 0.0], "euler")], name="euler-3").to_json())
    out = tmp_path / "out"
    done = runner.invoke(app, ["sample", "--model", f"diffusers:{saved}", "--plan", str(plan), "--seeds", "0-2", "--out", str(out),
                               "--no-progress"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png", "grid.png"]
    assert np.load(out / "samples.npz")["samples"].shape == (3, 3, 16, 16)


def test_bad_diffusers_folders_are_one_line(saved, tmp_path):
    (tmp_path / "no-scheduler").mkdir()
    (tmp_path / "no-scheduler" / "config.json").write_text((saved / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline", "vae": ["x", "y"]}))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.json").write_text((saved / "config.json").read_text())
    (tmp_path / "cut" / "scheduler_config.json").write_text((saved / "scheduler_config.json").read_text())
    (tmp_path / "cut" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 10)
    for folder, needle in [
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "no-scheduler", "no scheduler config"),
        (tmp_path / "other", "UNet2DConditionModel is not supported"),
        (tmp_path / "pipe", "AudioLDMPipeline has no unet or transformer"),
        (tmp_path / "cut", "its weights do not load"),
    ]:
        done = runner.invoke(app, ["sample", "--model", f"diffusers:{folder}", "--plan", "cifar10-3stage", "--seeds", "0",
                                   "--out", str(tmp_path / "o"), "--no-progress"])
        assert done.exit_code == 2, (folder, done.output)
        line = done.output.strip()
        assert "\n" not in line and needle in line and "Traceback" not in line, line


# ---- LowDiff retrofit and fine-tuning of a UNet2DModel --------------------------------------

def test_the_retrofit_top_level_is_the_original_network_and_lower_levels_run():
    from lowdiff_sched.adapters.diffusers.lowdiff import LowDiffUNet2D
    from lowdiff_sched.protocol import MissingCondition

    unet = tiny_unet(num_class_embeds=4)
    scheduler = diffusers.EulerDiscreteScheduler()
    retrofit = LowDiffUNet2D(unet, scheduler, [8, 16]).eval()
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([2.0, 0.3]), torch.tensor([1, 3])
    with torch.no_grad():
        original = from_diffusers(unet, scheduler).denoise(x, sigma, level=0, class_labels=labels)
        top = retrofit.denoise(x, sigma, level=1, cond=torch.randn_like(x), cond_sigma=1.0, class_labels=labels)
        low = retrofit.denoise(torch.randn(2, 3, 8, 8), sigma, level=0, class_labels=labels)
    assert torch.equal(top, original) and low.shape == (2, 3, 8, 8) and torch.isfinite(low).all()
    with pytest.raises(MissingCondition):
        retrofit.denoise(x, sigma, level=1, class_labels=labels)
    with pytest.raises(ValueError, match="at least two levels"):
        LowDiffUNet2D(unet, scheduler, [16])


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_a_unet_is_fine_tuned_through_the_recipe_and_reloads_from_its_run(saved, images, tmp_path):
    from lowdiff_sched.adapters.diffusers.lowdiff import LowDiffUNet2D
    from lowdiff_sched.runs import build_from_spec, load_run, spec_of
    from lowdiff_sched.training import TrainRecipe

    recipe = TrainRecipe(init=f"diffusers:{saved}", data=str(images), levels=[8, 16], out=str(tmp_path / "run"),
                         train={"steps": 2, "batch": 4, "seed": 3})
    done = recipe.run(progress=False)
    assert done.config.loss == "ddpm" and done.config.loss_kwargs["prediction_type"] == "epsilon"
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["backbone"] == "diffusers" and spec["method"] == "lowdiff" and spec["levels"] == [8, 16]
    model = load_run(tmp_path / "run")
    assert isinstance(model, LowDiffUNet2D)
    assert spec_of(model) == spec and type(build_from_spec(spec)) is LowDiffUNet2D
    plan = CascadePlan([StagePlan(0, [14.0, 2.0], "euler"), StagePlan(1, [2.0, 0.5, 0.0], "euler")], name="two")
    out = sample_cascade(model, plan, seeds=[0, 1])
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_training_free_cascades_round_trip_through_the_model_spec():
    from lowdiff_sched.runs import build_from_spec, spec_of

    for cascade in (from_diffusers(tiny_unet(), diffusers.EulerDiscreteScheduler()),
                    from_diffusers(tiny_unet(), diffusers.EulerDiscreteScheduler(), levels=[8, 16])):
        spec = spec_of(cascade)
        rebuilt = build_from_spec(spec)
        rebuilt.load_state_dict(cascade.state_dict())
        x, sigma = torch.randn(1, 3, 16, 16), torch.tensor([1.0])
        with torch.no_grad():
            assert torch.equal(rebuilt.denoise(x, sigma, level=-1), cascade.denoise(x, sigma, level=-1))
        assert spec["method"] == ("none" if len(cascade.levels) == 1 else "shared")


def test_train_and_info_take_a_diffusers_folder(saved, images, tmp_path):
    done = runner.invoke(app, ["info", f"diffusers:{saved}"])
    assert done.exit_code == 0 and "UNet2DModel (epsilon prediction)" in done.output, done.output
    done = runner.invoke(app, ["train", "--init", f"diffusers:{saved}", "--data", str(images), "--levels", "8,16", "--steps", "1",
                               "--batch", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["info", str(tmp_path / "run")])
    assert done.exit_code == 0 and "for LowDiffUNet2D (method lowdiff)" in done.output, done.output
    done = runner.invoke(app, ["train", "--init", f"diffusers:{saved}", "--data", str(images), "--method", "c2f",
                               "--out", str(tmp_path / "c2f"), "--no-progress"])
    assert done.exit_code == 2 and "backbone diffusers trains lowdiff" in done.output and not (tmp_path / "c2f").exists()


def tiny_dit(channels: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=channels,
                                           out_channels=2 * channels, num_layers=2, sample_size=8, patch_size=2,
                                           num_embeds_ada_norm=10).eval()


def test_the_dit_retrofit_top_level_is_the_original_network_and_survives_a_copy():
    import copy

    from lowdiff_sched.adapters.diffusers.lowdiff import LowDiffDiT2D

    dit, scheduler = tiny_dit(), diffusers.EulerDiscreteScheduler()
    retrofit = LowDiffDiT2D(dit, scheduler, [4, 8]).eval()
    x, sigma, labels = torch.randn(2, 4, 8, 8), torch.tensor([2.0, 0.3]), torch.tensor([1, 3])
    with torch.no_grad():
        original = from_diffusers(dit, scheduler).denoise(x, sigma, level=0, class_labels=labels)
        top = retrofit.denoise(x, sigma, level=1, cond=torch.randn_like(x), cond_sigma=1.0, class_labels=labels)
        low = retrofit.denoise(torch.randn(2, 4, 4, 4), sigma, level=0, class_labels=labels)
        torch.nn.init.normal_(retrofit.level_embed.weight)  # the level embedding reaches every block ...
        moved = retrofit.denoise(x, sigma, level=1, cond=torch.randn_like(x), cond_sigma=1.0, class_labels=labels)
        twin = copy.deepcopy(retrofit)  # ... and a copy's reaches its own (EMA copies are deep copies)
        torch.nn.init.zeros_(twin.level_embed.weight)
        assert torch.equal(twin.denoise(x, sigma, level=1, cond=torch.randn_like(x), cond_sigma=1.0, class_labels=labels), original)
    assert torch.equal(top, original) and low.shape == (2, 4, 4, 4) and not torch.allclose(moved, original)


def test_a_dit_is_fine_tuned_through_the_recipe_and_reloads_from_its_run(images, tmp_path):
    from lowdiff_sched.adapters.diffusers.lowdiff import LowDiffDiT2D
    from lowdiff_sched.runs import load_run
    from lowdiff_sched.training import TrainRecipe

    folder = tmp_path / "dit"
    torch.manual_seed(0)
    diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=1,
                                    sample_size=16, patch_size=2, num_embeds_ada_norm=4).save_pretrained(folder)
    (images / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", i % 4] for i in range(8)]}))  # EDM's layout
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_pretrained(folder)
    done = TrainRecipe(init=f"diffusers:{folder}", data=str(images), levels=[8, 16], out=str(tmp_path / "run"),
                       train={"steps": 2, "batch": 4}).run(progress=False)
    assert done.config.loss_kwargs["prediction_type"] == "v_prediction"
    model = load_run(tmp_path / "run")
    assert isinstance(model, LowDiffDiT2D) and [lv.size[0] for lv in model.levels] == [8, 16]
    plan = CascadePlan([StagePlan(0, [14.0, 2.0], "euler"), StagePlan(1, [2.0, 0.5, 0.0], "euler")], name="two")
    labels = class_label_args([0, 3], 4)
    assert torch.isfinite(sample_cascade(model, plan, seeds=[0, 1], extra_args=labels)).all()
