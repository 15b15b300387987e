"""Training: EDM's losses per level (LowDiff Alg. 1), EDM-format datasets, and the loop's
promises (losses fall, multi-process equals one process, exact resume, atomic checkpoints,
Ctrl-C)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowdiff_sched.protocol import Level
from lowdiff_sched.resample import downsample, upsample
from lowdiff_sched.training import (
    EDMLoss,
    ImageDataset,
    TrainConfig,
    VELoss,
    VPLoss,
    draw_multires_noise,
    latest_checkpoint,
    load_checkpoint,
    make_loss,
    multires_loss,
    one_hot,
    train,
)
from lowdiff_sched.checkpoints import list_checkpoints
from lowdiff_sched.training.config import resume_conflicts

ROOT = Path(__file__).resolve().parents[1]


# -- a tiny trainable cascade and a tiny dataset --------------------------------------------------


class TinyCascade(nn.Module):
    """Levels 4x4 and 8x8, one channel; per level a 3-layer conv net behind EDM's
    preconditioning, fed the noisy image, the condition, both noise levels and the label."""

    def __init__(self, sizes=(4, 8), channels: int = 1, label_dim: int = 2, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.levels = tuple(Level((s, s), channels) for s in sizes)
        self.sigma_data = 0.5
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            inputs = 2 * channels + 3
            self.nets = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(inputs, width, 3, padding=1), nn.SiLU(),
                    nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                    nn.Conv2d(width, channels, 3, padding=1),
                )
                for _ in sizes
            )
            self.label = nn.Linear(max(label_dim, 1), 1)

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, class_labels=None):
        sd = self.sigma_data
        s = sigma.to(x.dtype).view(-1, 1, 1, 1)
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        c = torch.zeros_like(x) if cond is None else cond
        cs = torch.zeros_like(s) if cond_sigma is None else cond_sigma.to(x.dtype).view(-1, 1, 1, 1)
        lab = torch.zeros_like(s) if class_labels is None else self.label(class_labels).view(-1, 1, 1, 1)
        plane = lambda v: v.expand(-1, 1, *x.shape[-2:])  # noqa: E731
        h = torch.cat([c_in * x, c / (cs**2 + sd**2).sqrt(), plane(s.log() / 4), plane((cs + 1e-3).log() / 4), plane(lab)], dim=1)
        return c_skip * x + c_out * self.nets[level](h)


class InterruptingCascade(TinyCascade):
    """Calls `interrupt()` on its `at_call`-th denoise call (counting from 0)."""

    def __init__(self, at_call: int, interrupt, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at_call, self.interrupt, self.calls = at_call, interrupt, 0

    def denoise(self, x, sigma, **kw):
        if self.calls == self.at_call:
            self.interrupt()
        self.calls += 1
        return super().denoise(x, sigma, **kw)


def make_images(n: int = 24, size: int = 8, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """Smooth 1-channel ramps: label 0 vertical, label 1 horizontal, random phase and contrast."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        label = k % 2
        ramp = np.linspace(-1, 1, size)
        img = ramp[:, None] * np.ones(size) if label == 0 else np.ones(size)[:, None] * ramp
        img = rng.uniform(0.4, 1.0) * img * rng.choice([-1, 1]) + rng.uniform(-0.2, 0.2)
        out.append((np.clip((img + 1) * 127.5, 0, 255).round().astype(np.uint8), label))
    return out


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_edm_folder(root: Path, images, labels: bool = True) -> Path:
    """EDM dataset_tool's layout: 00000/img00000000.png ... and a root dataset.json."""
    entries = []
    for k, (pixels, label) in enumerate(images):
        name = f"{k // 1000:05d}/img{k:08d}.png"
        write_png(root / name, pixels)
        entries.append([name, label])
    if labels:
        (root / "dataset.json").write_text(json.dumps({"labels": entries}))
    return root


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return dest


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny nets gain nothing from threads, and on a busy 2-core machine two threads
    spin against other work (7x slower seen); the gloo workers use one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return write_edm_folder(tmp_path_factory.mktemp("data") / "ramps", make_images())


def config(**kw) -> TrainConfig:
    base = dict(steps=6, batch=8, lr=2e-3, ema_halflife_kimg=0.05, checkpoint_every=0, seed=3, label_dim=2, log_every=1)
    return TrainConfig(**{**base, **kw})


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def no_temp_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


# -- losses -----------------------------------------------------------------------------------------


def test_weights_and_vp_sigma_match_edm_formulas_in_float64():
    sigma = torch.logspace(-3, 2.5, 50, dtype=torch.float64)
    for loss in (VPLoss(), VELoss()):
        torch.testing.assert_close(loss.weight(sigma), 1 / sigma**2, rtol=1e-15, atol=0)
    sd = 0.5
    torch.testing.assert_close(EDMLoss().weight(sigma), (sigma**2 + sd**2) / (sigma * sd) ** 2, rtol=1e-15, atol=0)
    t = torch.linspace(1e-5, 1, 50, dtype=torch.float64)
    expected = torch.tensor([math.sqrt(math.expm1(0.5 * 19.9 * v**2 + 0.1 * v)) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(VPLoss().sigma(t), expected, rtol=1e-12, atol=0)


def test_sigma_distributions_follow_edm():
    g = torch.Generator().manual_seed(0)
    n = 40_000
    ln_edm = EDMLoss().sample_sigma(n, g).log()
    assert abs(ln_edm.mean().item() + 1.2) < 0.03 and abs(ln_edm.std().item() - 1.2) < 0.03
    ln_ve = VELoss().sample_sigma(n, g).log()
    lo, hi = math.log(0.02), math.log(100)
    assert ln_ve.min() >= lo - 1e-5 and ln_ve.max() <= hi + 1e-5
    assert abs(ln_ve.mean().item() - (lo + hi) / 2) < 0.05 and abs(ln_ve.std().item() - (hi - lo) / math.sqrt(12)) < 0.05
    vp = VPLoss()
    s_vp = vp.sample_sigma(n, g)
    s_lo, s_mid, s_hi = vp.sigma(torch.tensor([1e-5, 0.5 + 0.5e-5, 1.0])).tolist()
    assert s_vp.min() >= s_lo * 0.999 and s_vp.max() <= s_hi * 1.001
    assert abs((s_vp < s_mid).float().mean().item() - 0.5) < 0.01  # t uniform: sigma(t)'s median is sigma(t_mid)


class RecordingCascade:
    """Three levels 2/4/8, two channels; D = 0.5 x + 0.1 cond; records every call."""

    def __init__(self):
        self.levels = tuple(Level((s, s), 2) for s in (2, 4, 8))
        self.calls = []

    def denoise(self, x, sigma, *, level, cond=None, cond_sigma=None, **extra):
        self.calls.append(dict(level=level, x=x, sigma=sigma, cond=cond, cond_sigma=cond_sigma, **extra))
        return 0.5 * x + (0 if cond is None else 0.1 * cond)


@pytest.mark.parametrize("loss_fn", [EDMLoss(), VPLoss(), VELoss()], ids=["edm", "vp", "ve"])
def test_multires_loss_builds_alg1_conditions_and_edm_loss(loss_fn):
    model = RecordingCascade()
    b = 5
    x0 = torch.randn(b, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = one_hot(torch.tensor([0, 1, 2, 0, 1]), 3)
    total, per_level = multires_loss(model, x0, loss_fn, class_labels=labels, generator=torch.Generator().manual_seed(7))

    # Recompute the generator's draws independently, in the documented order.
    g = torch.Generator().manual_seed(7)
    expected_total = 0.0
    for i, call in enumerate(model.calls):
        size = model.levels[i].size
        sigma = loss_fn.sample_sigma(b, g)
        eps = torch.randn(b, 2, *size, generator=g)
        y = downsample(x0, size)
        assert call["level"] == i and torch.equal(call["sigma"], sigma)
        torch.testing.assert_close(call["x"], y + sigma.view(-1, 1, 1, 1) * eps)
        assert torch.equal(call["class_labels"], labels)
        if i == 0:
            assert call["cond"] is None and call["cond_sigma"] is None
            cond = 0
        else:
            sigma_c = loss_fn.sample_sigma(b, g)
            eps_c = torch.randn(b, 2, *model.levels[i - 1].size, generator=g)
            cond = upsample(downsample(x0, model.levels[i - 1].size) + sigma_c.view(-1, 1, 1, 1) * eps_c, size, "nearest")
            assert torch.equal(call["cond_sigma"], sigma_c)
            assert not torch.allclose(sigma_c, sigma)  # drawn independently, not reused
            torch.testing.assert_close(call["cond"], cond)
        d = (0.5 * call["x"] + 0.1 * cond).double()
        level_loss = (loss_fn.weight(sigma.double()).view(-1, 1, 1, 1) * (d - y.double()) ** 2).sum(dim=(1, 2, 3)).mean()
        torch.testing.assert_close(per_level[i].double(), level_loss, rtol=1e-5, atol=0)
        expected_total += level_loss.item()
    assert len(model.calls) == 3
    assert math.isclose(total.item(), expected_total, rel_tol=1e-5)


def test_condition_noise_is_independent_of_sample_noise():
    levels = [Level((4, 4), 1), Level((8, 8), 1)]
    draws = draw_multires_noise(levels, 20_000, EDMLoss(), generator=torch.Generator().manual_seed(0))
    ln = torch.stack([draws[1].sigma.log(), draws[1].sigma_c.log()])
    assert abs(torch.corrcoef(ln)[0, 1].item()) < 0.03
    assert draws[0].sigma_c is None and draws[1].eps_c.shape == (20_000, 1, 4, 4)


def test_multires_loss_rejects_bad_inputs():
    model = RecordingCascade()
    with pytest.raises(ValueError, match="x0"):
        multires_loss(model, torch.zeros(2, 2, 4, 4), EDMLoss())
    with pytest.raises(ValueError, match="levels"):
        multires_loss(model, torch.zeros(2, 2, 8, 8), EDMLoss(), levels=[0, 3])
    total, per_level = multires_loss(model, torch.zeros(2, 2, 8, 8), EDMLoss(), levels=[2])
    assert list(per_level) == [2] and [c["level"] for c in model.calls] == [2]


# -- data ---------------------------------------------------------------------------------------------


def test_folder_and_zip_load_identically(dataset_dir, tmp_path):
    folder = ImageDataset(dataset_dir)
    zipped = ImageDataset(zip_folder(dataset_dir, tmp_path / "ramps.zip"))
    assert len(folder) == len(zipped) == 24 and folder.names == zipped.names
    assert folder.shape == (1, 8, 8) and folder.label_dim == 2 and folder.has_labels
    for k in range(len(folder)):
        (a, la), (b, lb) = folder[k], zipped[k]
        assert torch.equal(a, b) and la == lb == k % 2
    image, _ = folder[0]
    assert image.dtype == torch.float32 and image.min() >= -1 and image.max() <= 1
    pixels, _ = make_images()[0]
    torch.testing.assert_close(image[0], torch.from_numpy(pixels).float() / 127.5 - 1)


def test_plain_folder_without_labels(tmp_path):
    for k, (pixels, _) in enumerate(make_images(3)):
        write_png(tmp_path / "a" / f"x{k}.png", np.stack([pixels] * 3, axis=-1))
    ds = ImageDataset(tmp_path / "a")
    assert not ds.has_labels and ds.label_dim == 0 and ds.shape == (3, 8, 8) and ds[2][1] == -1
    (tmp_path / "b").mkdir()
    write_png(tmp_path / "b" / "x.png", make_images(1)[0][0])
    (tmp_path / "b" / "dataset.json").write_text(json.dumps({"labels": None}))
    assert not ImageDataset(tmp_path / "b").has_labels


def test_dataset_errors_name_the_offending_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no image files"):
        ImageDataset(tmp_path / "empty")

    write_png(tmp_path / "sizes" / "a.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "sizes" / "b.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"'a\.png'.*'b\.png'"):
        ImageDataset(tmp_path / "sizes")
    write_png(tmp_path / "chans" / "a.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "chans" / "c.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"'a\.png' is 8x8 with 1 channel, 'c\.png' is 8x8 with 3 channels"):
        ImageDataset(tmp_path / "chans")

    write_edm_folder(tmp_path / "labels", make_images(2), labels=False)
    bad = tmp_path / "labels" / "dataset.json"
    bad.write_text(json.dumps({"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", 1], ["00000/gone.png", 1]]}))
    with pytest.raises(ValueError, match=r"gone\.png"):
        ImageDataset(tmp_path / "labels")
    bad.write_text(json.dumps({"labels": [["00000/img00000000.png", 0]]}))
    with pytest.raises(ValueError, match=r"no label for '00000/img00000001\.png'"):
        ImageDataset(tmp_path / "labels")
    bad.write_text(json.dumps({"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", "cat"]]}))
    with pytest.raises(ValueError, match="class id"):
        ImageDataset(tmp_path / "labels")
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json"):
        ImageDataset(tmp_path / "labels")
    with pytest.raises(ValueError, match="class ids"):
        one_hot(torch.tensor([0, 2]), 2)


# -- config ---------------------------------------------------------------------------------------------


def test_config_is_json_data_and_validated():
    cfg = config(levels=[1], grad_clip=1.0, mixed_precision="bf16")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    for bad in (dict(loss="huber"), dict(batch=0), dict(mixed_precision="fp16"), dict(lr=0), dict(grad_clip=-1.0), dict(levels=[])):
        with pytest.raises(ValueError, match=next(iter(bad))):
            config(**bad)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "epochs": 3})
    assert resume_conflicts(cfg.to_dict(), config(levels=[1], grad_clip=1.0, mixed_precision="bf16", steps=99)) == []
    assert resume_conflicts(cfg.to_dict(), config(levels=[1], grad_clip=1.0, mixed_precision="bf16", seed=4)) == ["seed"]
    # a run saved before a field existed resumes as if it had the field's default
    older = {k: v for k, v in cfg.to_dict().items() if k != "alternate_levels"}
    assert resume_conflicts(older, cfg) == []
    assert resume_conflicts(older, config(levels=[1], grad_clip=1.0, mixed_precision="bf16", alternate_levels=True)) == ["alternate_levels"]


# -- the loop -------------------------------------------------------------------------------------------


def test_per_level_losses_go_down(dataset_dir, tmp_path):
    train(TinyCascade(seed=0), ImageDataset(dataset_dir), config(steps=80, batch=32, lr=1e-2), tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 81))
    for level in ("0", "1"):
        first = np.mean([r["levels"][level] for r in log[:8]])
        last = np.mean([r["levels"][level] for r in log[-8:]])
        assert last < 0.75 * first, (level, first, last)  # ~0.3-0.5 seen across seeds


def test_resume_continues_bit_for_bit(dataset_dir, tmp_path):
    data = ImageDataset(dataset_dir)
    whole = train(TinyCascade(seed=0), data, config(steps=8), tmp_path / "whole", progress=False)
    train(TinyCascade(seed=0), data, config(steps=4, checkpoint_every=4), tmp_path / "split", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "split")] == [4]
    with open(tmp_path / "split" / "log.jsonl", "a") as f:  # as if a run had died after logging step 5
        f.write(json.dumps({"step": 5, "loss": -1.0, "levels": {}}) + "\n")
    resumed = train(TinyCascade(seed=99), data, config(steps=8, checkpoint_every=4), tmp_path / "split", progress=False)
    assert_same(params(resumed), params(whole))
    assert (tmp_path / "split" / "log.jsonl").read_text() == (tmp_path / "whole" / "log.jsonl").read_text()
    a, b = load_checkpoint(latest_checkpoint(tmp_path / "whole")), load_checkpoint(latest_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 8
    assert_same(a["ema"], b["ema"])
    assert_same(a["model"], b["model"])
    assert not all(torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])  # the EMA is an average, not a copy
    assert a["config"] == config(steps=8).to_dict() and a["images_seen"] == 64


def test_resume_skips_a_cut_latest_checkpoint(dataset_dir, tmp_path, capsys):
    """The latest checkpoint cut short (a full disk, a bad copy): resuming says which file it
    skipped and continues from the one before, ending where an uninterrupted run ends."""
    data = ImageDataset(dataset_dir)
    whole = train(TinyCascade(seed=0), data, config(steps=6), tmp_path / "whole", progress=False)
    train(TinyCascade(seed=0), data, config(steps=4, checkpoint_every=2), tmp_path / "split", progress=False)
    latest = tmp_path / "split" / "checkpoint-00000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    resumed = train(TinyCascade(seed=99), data, config(steps=6, checkpoint_every=2), tmp_path / "split", progress=False)
    assert "skipped checkpoint-00000004.pt, which does not load" in capsys.readouterr().err
    assert_same(params(resumed), params(whole))


def test_resume_refuses_a_changed_config(dataset_dir, tmp_path):
    data = ImageDataset(dataset_dir)
    train(TinyCascade(), data, config(steps=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"seed: 3 -> 4"):
        train(TinyCascade(), data, config(steps=4, seed=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(TinyCascade(), data, config(steps=4), tmp_path, progress=False, resume=False)


def test_resuming_with_fewer_steps_than_trained_changes_nothing(dataset_dir, tmp_path):
    """Asking a run that is at step 4 for 2 steps says so and leaves its files as they are
    (it used to report "trained 2 steps" and rewrite train_config.json to 2)."""
    data = ImageDataset(dataset_dir)
    train(TinyCascade(), data, config(steps=4), tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"is already past 2 steps \(its latest checkpoint is at step 4\); nothing to do"):
        train(TinyCascade(), data, config(steps=2), tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_checkpoints_load_with_weights_only_and_hold_the_state(dataset_dir, tmp_path):
    rng = torch.get_rng_state()
    model = train(TinyCascade(), ImageDataset(dataset_dir), config(steps=3, grad_clip=0.5, lr_rampup_kimg=0.01), tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint-00000003.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "step", "images_seen", "config", "world_size"} <= set(state)
    assert_same(state["model"], params(model))
    assert json.loads((tmp_path / "train_config.json").read_text()) == state["config"]
    assert torch.equal(torch.get_rng_state(), rng)  # the per-step reseeding stays inside train


@pytest.mark.parametrize("target", ["torch.save", "os.replace"])
def test_crash_while_saving_keeps_the_previous_checkpoint(dataset_dir, tmp_path, monkeypatch, target):
    real_save, real_replace, saves = torch.save, os.replace, []

    def crashing_save(obj, f, *a, **kw):
        saves.append(f)
        if len(saves) == 2:
            f.write(b"half a checkpoint") if hasattr(f, "write") else Path(f).write_bytes(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *a, **kw)

    def crashing_replace(src, dst):
        if "checkpoint-" in str(dst):
            saves.append(dst)
            if len(saves) == 2:
                raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(torch, "save", crashing_save) if target == "torch.save" else monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError):
        train(TinyCascade(), ImageDataset(dataset_dir), config(steps=4, checkpoint_every=2, keep_checkpoints=1), tmp_path, progress=False)
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert load_checkpoint(tmp_path / "checkpoint-00000002.pt")["step"] == 2
    assert no_temp_files(tmp_path)


def test_keyboard_interrupt_inside_a_step_saves_the_last_completed_step(dataset_dir, tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    model = InterruptingCascade(at_call=3 * 2, interrupt=interrupt)  # 2 levels: the first call of step 3
    with pytest.raises(KeyboardInterrupt):
        train(model, ImageDataset(dataset_dir), config(steps=10, checkpoint_every=2), tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 3
    assert_same(state["model"], params(model))  # the interrupted step changed nothing
    assert no_temp_files(tmp_path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


class Terminated(Exception):
    """What this test's own SIGTERM handler raises if training leaves SIGTERM to it."""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_then_saves(dataset_dir, tmp_path, signum):
    """Ctrl-C and SIGTERM alike: the step under way ends, its checkpoint is written (no
    temporary file left), KeyboardInterrupt follows, and the handlers are restored."""

    def terminated(*_):  # type: ignore[no-untyped-def]
        raise Terminated

    own = signal.signal(signal.SIGTERM, terminated)  # without train's handler, SIGTERM must not end pytest
    try:
        model = InterruptingCascade(at_call=3 * 2 + 1, interrupt=lambda: os.kill(os.getpid(), signum))
        with pytest.raises(KeyboardInterrupt):
            train(model, ImageDataset(dataset_dir), config(steps=10), tmp_path, progress=False)
        assert signal.getsignal(signal.SIGTERM) is terminated and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, own)
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 4  # step 3 (0-based) ran to the end before stopping
    assert no_temp_files(tmp_path)
    reference = train(TinyCascade(), ImageDataset(dataset_dir), config(steps=4), tmp_path / "ref", progress=False)
    assert_same(state["model"], params(reference))


def test_bf16_autocast_trains(dataset_dir, tmp_path):
    train(TinyCascade(), ImageDataset(dataset_dir), config(steps=2, mixed_precision="bf16"), tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log)


# -- two processes over gloo --------------------------------------------------------------------------

WORKER = """
import os
import sys
import time
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import TinyCascade, config
from lowdiff_sched.training import ImageDataset, train

out, data = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
model = TinyCascade(seed=1 + rank)  # rank 0's weights must win the initial broadcast
model = train(model, ImageDataset(data), config(steps=5, batch=8), out, progress=False)
torch.save(model.state_dict(), f"{{out}}/rank{{rank}}.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(dataset_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), str(out), str(dataset_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt", weights_only=True), torch.load(out / "rank1.pt", weights_only=True)
    assert_same(rank0, rank1)

    single = train(TinyCascade(seed=1), ImageDataset(dataset_dir), config(steps=5, batch=8), tmp_path / "single", progress=False)
    for k, v in params(single).items():
        torch.testing.assert_close(rank0[k], v, rtol=1e-5, atol=2e-6, msg=k)  # ~1e-7 seen
    assert not torch.allclose(params(single)["nets.0.0.weight"], params(TinyCascade(seed=1))["nets.0.0.weight"])
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert ckpt["world_size"] == 2 and ckpt["step"] == 5
    torch.testing.assert_close(ckpt["ema"], load_checkpoint(latest_checkpoint(tmp_path / "single"))["ema"], rtol=1e-5, atol=2e-6)


# -- damaged files and killed runs (issue 14) ------------------------------------------------------


def test_a_corrupt_zip_is_one_line_naming_it(dataset_dir, tmp_path):
    whole = zip_folder(dataset_dir, tmp_path / "ramps.zip").read_bytes()
    cases = {"random.zip": np.random.default_rng(0).bytes(4096), "half.zip": whole[: len(whole) // 2], "empty.zip": b""}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable zip archive") as info:
            ImageDataset(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name


def corrupt_member_zip(dataset_dir: Path, dest: Path, member: str, how: str) -> Path:
    """The dataset as a zip in which `member` is damaged: `garbage` (not an image), `body`
    (a valid header, broken pixel data) or `crc` (bytes changed after the zip was written)."""
    zip_folder(dataset_dir, dest)
    with zipfile.ZipFile(dest) as z:
        original = z.read(member)
    if how == "crc":
        data = bytearray(dest.read_bytes())
        at = data.find(original) + len(original) - 20
        data[at] ^= 0xFF
        dest.write_bytes(bytes(data))
        return dest
    if how == "garbage":
        damaged = b"garbage!" * 8
    else:  # zeros inside the compressed pixels, past the chunks the header check reads
        at = original.find(b"IDAT") + 8
        damaged = original[:at] + bytes(8) + original[at + 8 :]
    rebuilt = dest.with_suffix(".tmp")
    with zipfile.ZipFile(dest) as src, zipfile.ZipFile(rebuilt, "w") as out:
        for info in src.infolist():
            out.writestr(info, damaged if info.filename == member else src.read(info))
    rebuilt.replace(dest)
    return dest


@pytest.mark.parametrize("how", ["garbage", "body", "crc"])
def test_a_corrupt_member_image_is_one_line_naming_it(dataset_dir, tmp_path, how):
    member = "00000/img00000005.png"
    path = corrupt_member_zip(dataset_dir, tmp_path / "ramps.zip", member, how)
    with pytest.raises(ValueError) as info:
        data = ImageDataset(path)  # a bad header fails here, bad pixels when the image is read
        for k in range(len(data)):
            data[k]
    message = str(info.value)
    assert member in message and str(path) in message and "\n" not in message, message


def stale_temporaries(folder: Path) -> list[str]:
    """What a kill -9 during each of the run's atomic writes leaves behind."""
    from lowdiff_sched.outputs import atomic_path

    names = []
    for target in ("checkpoint-00000006.pt", "log.jsonl", "train_config.json", "model.json"):
        with pytest.raises(KeyboardInterrupt), atomic_path(folder / target) as tmp:
            names.append(tmp.name)
            raise KeyboardInterrupt  # atomic_path removes it; put it back as a killed process leaves it
        (folder / names[-1]).write_bytes(b"half a file")
    return names


def test_resume_removes_temporary_files_left_by_a_killed_run(dataset_dir, tmp_path):
    data = ImageDataset(dataset_dir)
    whole = train(TinyCascade(seed=0), data, config(steps=8), tmp_path / "whole", progress=False)
    run = tmp_path / "split"
    train(TinyCascade(seed=0), data, config(steps=4, checkpoint_every=4), run, progress=False)
    left = stale_temporaries(run)
    other = run / ".notes.tmp"  # not a name our writers use: left alone
    other.write_text("mine")
    assert all((run / name).exists() for name in left)
    resumed = train(TinyCascade(seed=99), data, config(steps=8, checkpoint_every=4), run, progress=False)
    assert not [name for name in left if (run / name).exists()]
    assert other.read_text() == "mine"
    assert_same(params(resumed), params(whole))


def test_a_fresh_run_in_a_folder_with_leftovers_cleans_them(dataset_dir, tmp_path):
    left = stale_temporaries(tmp_path)
    train(TinyCascade(), ImageDataset(dataset_dir), config(steps=2), tmp_path, progress=False)
    assert not [name for name in left if (tmp_path / name).exists()]


def test_a_torn_last_log_line_is_dropped_on_resume(dataset_dir, tmp_path):
    data = ImageDataset(dataset_dir)
    train(TinyCascade(seed=0), data, config(steps=8), tmp_path / "whole", progress=False)
    run = tmp_path / "split"
    train(TinyCascade(seed=0), data, config(steps=4, checkpoint_every=4), run, progress=False)
    with open(run / "log.jsonl", "a") as f:  # killed halfway through appending a record
        f.write('{"step": 5, "loss": 0.4')
    train(TinyCascade(seed=0), data, config(steps=8, checkpoint_every=4), run, progress=False)
    assert (run / "log.jsonl").read_text() == (tmp_path / "whole" / "log.jsonl").read_text()


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_afresh(dataset_dir, tmp_path):
    data = ImageDataset(dataset_dir)
    train(TinyCascade(seed=0), data, config(steps=3), tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0, "levels": {}}) + "\n")  # and no checkpoint
    train(TinyCascade(seed=0), data, config(steps=3), run, progress=False)
    assert (run / "log.jsonl").read_text() == (tmp_path / "whole" / "log.jsonl").read_text()


KILLED_WORKER = """
import io
import os
import signal
import sys
import time
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import TinyCascade, config
from lowdiff_sched.training import ImageDataset, train

real_save, saves = torch.save, []

def save_then_die(obj, f, *args, **kwargs):
    # the second checkpoint: half of it reaches the disk, then the process is killed
    saves.append(f)
    if len(saves) == 2:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_then_die
train(TinyCascade(seed=0), ImageDataset(sys.argv[2]), config(steps=6, checkpoint_every=2), sys.argv[1], progress=False)
"""


def test_kill_9_while_writing_a_checkpoint_then_resume(dataset_dir, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WORKER.format(tests=str(Path(__file__).parent)))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(run), str(dataset_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(run)] == [2]
    half = [p.name for p in run.iterdir() if p.name.startswith(".checkpoint-00000004.pt.")]
    assert len(half) == 1 and (run / half[0]).stat().st_size > 0  # what kill -9 leaves behind

    resumed = train(TinyCascade(seed=5), ImageDataset(dataset_dir), config(steps=6, checkpoint_every=2), run, progress=False)
    assert no_temp_files(run)
    assert [s for s, _ in list_checkpoints(run)] == [4, 6]  # keep_checkpoints=2
    whole = train(TinyCascade(seed=0), ImageDataset(dataset_dir), config(steps=6, checkpoint_every=2), tmp_path / "whole", progress=False)
    assert_same(params(resumed), params(whole))
    assert (run / "log.jsonl").read_text() == (tmp_path / "whole" / "log.jsonl").read_text()


# -- TensorBoard logs (--log tensorboard) ---------------------------------------------------------------


TENSORBOARD_TAGS = {"loss/total", "loss/level_0", "loss/level_1", "train/lr", "train/ema_beta", "train/ema_halflife_kimg",
                    "train/images_per_sec"}


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in folder's event files, as TensorBoard shows them: (step, value) per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def float32(value: float) -> float:
    return float(np.float32(value))


def test_log_is_config_data_and_validated():
    cfg = config(log="tensorboard")
    assert TrainConfig.from_json(cfg.to_json()) == cfg and config().log == "jsonl"
    with pytest.raises(ValueError, match="TrainConfig.log must be one of"):
        config(log="wandb")
    assert resume_conflicts(config().to_dict(), cfg) == []  # logging changes no result: a run may resume with another


def test_tensorboard_scalars_match_the_jsonl_log(dataset_dir, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = config(steps=6, log_every=2, lr_rampup_kimg=0.04, log="tensorboard")
    train(TinyCascade(), ImageDataset(dataset_dir), cfg, tmp_path, progress=False)
    log = read_log(tmp_path)
    steps = [r["step"] for r in log]
    assert steps == [2, 4, 6]
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars) == TENSORBOARD_TAGS
    for tag, values in scalars.items():
        assert [s for s, _ in values] == steps, tag
    assert [v for _, v in scalars["loss/total"]] == [float32(r["loss"]) for r in log]
    for level in ("0", "1"):
        assert [v for _, v in scalars[f"loss/level_{level}"]] == [float32(r["levels"][level]) for r in log]
    # the learning rate ramps over 40 images (5 steps of 8); the EMA half-life is capped at 5% of the images seen before the step
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([2e-3 * min(8 * s / 40, 1.0) for s in steps], rel=1e-6)
    halflife = [min(50.0, 0.05 * 8 * (s - 1)) for s in steps]
    assert [v for _, v in scalars["train/ema_halflife_kimg"]] == pytest.approx([h / 1000 for h in halflife], rel=1e-6)
    assert [v for _, v in scalars["train/ema_beta"]] == pytest.approx([0.5 ** (8 / h) for h in halflife], rel=1e-6)
    assert all(v > 0 for _, v in scalars["train/images_per_sec"])


def test_a_resumed_run_appends_tensorboard_events_showing_each_step_once(dataset_dir, tmp_path):
    pytest.importorskip("tensorboard")
    data = ImageDataset(dataset_dir)
    train(TinyCascade(seed=0), data, config(steps=8, log="tensorboard"), tmp_path / "whole", progress=False)
    run = tmp_path / "split"
    train(TinyCascade(seed=0), data, config(steps=6, checkpoint_every=4, log="tensorboard"), run, progress=False)
    dict(list_checkpoints(run))[6].unlink()  # as if killed after logging steps 5 and 6, before saving them
    started = int(time.time())
    while int(time.time()) == started:  # event files are read in name order, which starts with the second they were made in
        time.sleep(0.02)
    train(TinyCascade(seed=0), data, config(steps=8, checkpoint_every=4, log="tensorboard"), run, progress=False)
    assert len(list((run / "tensorboard").iterdir())) == 2
    resumed, whole = read_scalars(run / "tensorboard"), read_scalars(tmp_path / "whole" / "tensorboard")
    assert set(resumed) == set(whole) == TENSORBOARD_TAGS
    for tag in ("loss/total", "loss/level_0", "loss/level_1", "train/lr", "train/ema_beta"):
        assert resumed[tag] == whole[tag], tag
    assert [v for _, v in resumed["loss/total"]] == [float32(r["loss"]) for r in read_log(run)]


def test_tensorboard_without_the_package_is_one_line_before_any_file(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails, as when not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        train(TinyCascade(), ImageDataset(dataset_dir), config(log="tensorboard"), out, progress=False)
    message = str(info.value)
    assert "pip install 'lowdiff-sched[tensorboard]'" in message and "\n" not in message, message
    assert not out.exists()

    from typer.testing import CliRunner

    from lowdiff_sched.cli.app import app

    result = CliRunner().invoke(app, ["train", "--init", "mnist-base", "--data", str(dataset_dir), "--out", str(out), "--log", "tensorboard"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "lowdiff-sched[tensorboard]" in lines[0], result.output
    assert not out.exists()


def test_cli_log_must_be_jsonl_or_tensorboard(dataset_dir, tmp_path):
    from typer.testing import CliRunner

    from lowdiff_sched.cli.app import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--init", "mnist-base", "--data", str(dataset_dir), "--out", str(out), "--log", "bogus"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--log" in lines[0] and "bogus" in lines[0], result.output
    assert not out.exists()


# ---- the DDPM loss: a discrete VP schedule as its networks are trained ---------------------

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_the_ddpm_loss_is_the_networks_own_regression_error(prediction):
    """lambda(sigma) ||D - x0||^2 equals ||eps_pred - eps||^2, ||v_pred - v||^2 or ||x0_pred - x0||^2."""
    loss = make_loss("ddpm", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction)
    sigma = loss.sample_sigma(64, torch.Generator().manual_seed(0)).double()
    assert all(s in set(loss.sigmas.double().tolist()) for s in sigma.tolist())  # training sigmas only
    x0, eps, pred = torch.randn(3, 64, dtype=torch.float64).unbind(0)
    s, scale = sigma, (sigma**2 + 1) ** 0.5
    x = x0 + s * eps
    if prediction == "epsilon":
        denoised, target = x - s * pred, eps
    elif prediction == "v_prediction":  # v = alpha eps - sigma_vp x0, with x_vp = x / scale
        denoised, target = x / scale**2 - s * pred / scale, (eps - s * x0) / scale
    else:
        denoised, target = pred, x0
    assert torch.allclose(loss.weight(sigma) * (denoised - x0) ** 2, (pred - target) ** 2)


def test_loss_settings_are_checked_by_kind():
    with pytest.raises(ValueError, match="loss 'edm': P_mean must be a number, got 'x'"):
        make_loss("edm", P_mean="x")
    with pytest.raises(ValueError, match="prediction_type must be epsilon, v_prediction or sample"):
        make_loss("ddpm", prediction_type="flow")
    with pytest.raises(ValueError, match="beta_schedule 'cosine' is not supported"):
        make_loss("ddpm", beta_schedule="cosine")
