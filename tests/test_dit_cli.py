"""`lowdiff-sched sample --model dit-...` and `train --model dit-...` end to end: checkpoints
in LightningDiT's layout, latents out per batch, decoding through a VAE decoder, torchrun
sharding (the union of two processes' files equals one process's), and clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from lowdiff_sched.adapters.dit.cascade import LowDiffDiT
from lowdiff_sched.adapters.dit.weights import save_dit
from lowdiff_sched.adapters.dit.networks import LightningDiT
from lowdiff_sched.adapters.dit.sizes import size_config
from lowdiff_sched.adapters.dit.vae import DecoderConfig, VAEDecoder
from lowdiff_sched.cli.app import app
from lowdiff_sched.plan import CascadePlan, StagePlan
from lowdiff_sched.schedules import flow_sigmas, truncate_steps
from lowdiff_sched.transitions import Condition

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every trainable weight nudged: a fresh DiT's zero-initialised output layers give 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A LowDiff dit-s1 checkpoint, latent stats, a tiny VAE decoder for 32-channel latents, a
    short 2-stage plan and a short 1-stage plan."""
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    config = size_config("dit-s1")
    model = perturbed(LowDiffDiT(LightningDiT(config), (8, 16)), 1)
    save_dit(root / "lowdiff-s1.pt", model, config)
    torch.save({"mean": torch.randn(1, 32, 1, 1) * 0.1, "std": torch.rand(1, 32, 1, 1) + 0.5}, root / "latents_stats.pt")
    vae = perturbed(VAEDecoder(DecoderConfig(widths=(32, 32), num_res_blocks=0, attn_levels=(), z_channels=4, embed_dim=32)), 2)
    torch.save({"state_dict": vae.state_dict()}, root / "vae.pt")
    sig = flow_sigmas(6, shift=0.3)
    two = CascadePlan([StagePlan(-2, truncate_steps(sig, 3), "euler"), StagePlan(-1, flow_sigmas(3, shift=0.3), "euler", transition=Condition())], name="short-2stage")
    one = CascadePlan([StagePlan(-1, flow_sigmas(2, shift=0.3), "euler")], name="short-1stage")
    (root / "two.json").write_text(two.to_json())
    (root / "one.json").write_text(one.to_json())
    return root


def sample(*args: str) -> object:
    return runner.invoke(app, ["sample", "--no-progress", *args])


def test_no_checkpoint_is_a_clear_error(tmp_path):
    result = sample("--model", "dit-b1", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "no weights ship with lowdiff-sched for dit-b1: pass --ckpt PATH" in result.output
    assert "Traceback" not in result.output


def test_latents_and_decoded_images(files, tmp_path):
    out = tmp_path / "out"
    result = sample("--model", "dit-s1", "--ckpt", str(files / "lowdiff-s1.pt"), "--plan", str(files / "two.json"),
                    "--latent-stats", str(files / "latents_stats.pt"), "--vae", str(files / "vae.pt"),
                    "--seeds", "3-7", "--batch", "2", "--class-labels", "1,2", "--cfg-scale", "2.0", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("latents-*.safetensors"))
    assert names == ["latents-000003-000004.safetensors", "latents-000005-000006.safetensors", "latents-000007-000007.safetensors"]
    first = load_file(out / names[0])
    assert first["latents"].shape == (2, 32, 16, 16) and first["seeds"].tolist() == [3, 4] and first["labels"].tolist() == [2, 1]
    with safe_open(out / names[0], "pt") as f:
        assert f.metadata() == {"space": "vae"}
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{s:06d}.png" for s in range(3, 8)]
    assert (out / "grid.png").is_file()
    assert "5 samples of dit-s1 with plan short-2stage (NFE 3+3)" in result.output


def test_without_vae_only_latents_in_model_space(files, tmp_path):
    result = sample("--model", "dit-s1", "--ckpt", str(files / "lowdiff-s1.pt"), "--plan", str(files / "two.json"),
                    "--seeds", "0", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    with safe_open(tmp_path / "latents-000000-000000.safetensors", "pt") as f:
        assert f.metadata() == {"space": "model"}
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--model", "mnist-base", "--cfg-scale", "2"], "--cfg-scale: only for latent (DiT) models"),
    (["--model", "dit-s1", "--ckpt", "CKPT", "--vae", "VAE"], "--vae needs --latent-stats"),
    (["--model", "dit-s1", "--ckpt", "CKPT", "--class-labels", "1000"], "class label 1000 is out of range"),
    (["--model", "dit-s1", "--ckpt", "CKPT", "--seeds", "1,1"], "seeds must not repeat"),
    (["--model", "dit-s1", "--ckpt", "STATS"], "does not fit dit-s1: 63 missing keys"),
    (["--model", "dit-b1", "--ckpt", "CKPT"], "does not fit dit-b1"),
    (["--model", "dit-s1", "--ckpt", "CKPT", "--cfg-scale", "2", "--cfg-channels", "40"], "cfg_channels must lie in [1, 32]"),
])
def test_bad_input(files, tmp_path, args, message):
    swap = {"CKPT": str(files / "lowdiff-s1.pt"), "VAE": str(files / "vae.pt"), "STATS": str(files / "latents_stats.pt")}
    result = sample(*[swap.get(a, a) for a in args], "--plan", str(files / "two.json"), "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_b1_checkpoint_end_to_end(tmp_path):
    """The user story on the real architecture: a LightningDiT-B/1 checkpoint (random weights,
    LightningDiT's {"model", "ema"} layout) samples through the CLI; a plain checkpoint runs
    the single-resolution plan."""
    torch.manual_seed(0)
    config = size_config("dit-b1")
    net = LightningDiT(config)
    torch.save({"ema": net.state_dict()}, tmp_path / "b1.pt")
    del net
    plan = CascadePlan([StagePlan(-1, flow_sigmas(2, shift=0.3), "euler")], name="b1-2steps")
    (tmp_path / "plan.json").write_text(plan.to_json())
    result = sample("--model", "dit-b1", "--ckpt", str(tmp_path / "b1.pt"), "--plan", str(tmp_path / "plan.json"),
                    "--seeds", "0-1", "--batch", "2", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    latents = load_file(tmp_path / "out" / "latents-000000-000001.safetensors")["latents"]
    assert latents.shape == (2, 32, 16, 16) and torch.isfinite(latents).all()


def test_train_dit_on_latents_then_sample_the_run(files, tmp_path):
    from safetensors.numpy import save_file

    g = np.random.default_rng(0)
    save_file({"latents": g.standard_normal((8, 32, 16, 16)).astype(np.float32), "labels": np.arange(8) % 4},
              str(tmp_path / "latents.safetensors"))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "dit-s1", "--data", str(tmp_path / "latents.safetensors"), "--levels", "8,16",
                                 "--latent-stats", str(files / "latents_stats.pt"), "--out", str(run), "--batch", "4", "--steps", "2",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    result = sample("--model", str(run), "--plan", str(files / "two.json"), "--seeds", "0-1", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert load_file(tmp_path / "out" / "latents-000000-000001.safetensors")["latents"].shape == (2, 32, 16, 16)
    result = sample("--model", str(run), "--ckpt", str(files / "lowdiff-s1.pt"), "--plan", str(files / "two.json"), "--out", str(tmp_path / "o2"))
    assert result.exit_code == 2 and "is a training run" in result.output


def test_c2f_fine_tuning_of_a_dit_then_renoise_sampling(files, tmp_path):
    """C2F-DM's resolution-label fine-tuning on a DiT: levels alternate step by step, each
    unconditional; the run samples with a Renoise hand-over."""
    import json

    from safetensors.numpy import save_file

    from lowdiff_sched.runs import load_run
    from lowdiff_sched.transitions import Renoise

    g = np.random.default_rng(1)
    save_file({"latents": g.standard_normal((8, 32, 16, 16)).astype(np.float32)}, str(tmp_path / "latents.safetensors"))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "dit-s1", "--init", str(files / "lowdiff-s1.pt"), "--method", "c2f",
                                 "--data", str(tmp_path / "latents.safetensors"), "--out", str(run), "--batch", "4", "--steps", "2",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "model.json").read_text())["method"] == "c2f"
    trained = json.loads((run / "train_config.json").read_text())
    assert trained["alternate_levels"] is True and trained["loss"] == "flow" and trained["label_dim"] == 0  # unlabelled: null class
    model = load_run(run)
    assert type(model).__name__ == "C2FDiT" and [lv.size[0] for lv in model.levels] == [8, 16]
    sig = flow_sigmas(4, shift=0.3)
    plan = CascadePlan([StagePlan(0, sig, "euler"), StagePlan(1, sig[2:], "euler", transition=Renoise())], name="c2f-short")
    (tmp_path / "c2f.json").write_text(plan.to_json())
    result = sample("--model", str(run), "--plan", str(tmp_path / "c2f.json"), "--seeds", "0", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert torch.isfinite(load_file(tmp_path / "out" / "latents-000000-000000.safetensors")["latents"]).all()


# ---- torchrun: two processes write what one writes --------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
                 "--master-addr", "127.0.0.1", "--master-port", str(free_port())] if processes > 1 else [sys.executable])
    done = subprocess.run([*launcher, "-m", "lowdiff_sched.cli", "sample", "--no-progress", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def same_files(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".npz"):  # zip members carry a timestamp: compare the arrays
            x, y = np.load(a / name), np.load(b / name)
            assert sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


def test_two_processes_write_the_files_of_one(files, tmp_path):
    args = ["--model", "dit-s1", "--ckpt", str(files / "lowdiff-s1.pt"), "--plan", str(files / "two.json"),
            "--latent-stats", str(files / "latents_stats.pt"), "--vae", str(files / "vae.pt"), "--seeds", "0-4", "--batch", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers (OMP_NUM_THREADS=1): the same float reductions
    try:
        result = sample(*args, "--out", str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    two = run_cli([*args, "--out", str(tmp_path / "two")], 2)
    names = same_files(tmp_path / "one", tmp_path / "two")
    assert len([n for n in names if n.startswith("latents-")]) == 3 and "grid.png" in names
    assert "on 2 processes" in two.stdout and two.stdout.count("samples of dit-s1") == 1  # rank 0 reports


def test_image_model_ranks_share_the_work_and_rank0_writes_the_files_of_one(tmp_path, monkeypatch):
    """The image path under two ranks, with the all-gather replaced by handing over both ranks'
    results: batches are dealt round-robin, and rank 0 writes exactly the one-process files."""
    from lowdiff_sched import generate, presets
    from lowdiff_sched.models import load_model
    from lowdiff_sched.processes import Processes

    cascade, plan = load_model("gaussian-field"), presets.get("cifar10-2stage")
    seeds = list(range(5))
    ranks = [Processes(rank=r, world=2) for r in range(2)]
    dealt = [generate.deal_batches(seeds, None, 2, p) for p in ranks]
    assert [[b.index for b in d] for d in dealt] == [[0, 2], [1]]
    assert sorted(s for d in dealt for b in d for s in b.seeds) == seeds
    results = [[(b, generate.sample_batch(cascade, plan, b, "cpu")) for b in d] for d in dealt]
    parts = [[(b.index, b.seeds, b.labels, x) for b, x in r] for r in results]
    monkeypatch.setattr(generate, "gather_objects", lambda obj, procs: parts if procs.active else [obj])
    generate.finish_pixels(tmp_path / "two", results[0], ranks[0], (-1.0, 1.0), None)
    single = Processes()
    generate.finish_pixels(tmp_path / "one", [(b, generate.sample_batch(cascade, plan, b, "cpu"))
                                              for b in generate.deal_batches(seeds, None, 2, single)], single, (-1.0, 1.0), None)
    assert "samples.npz" in same_files(tmp_path / "one", tmp_path / "two")
    assert generate.finish_pixels(tmp_path / "x", results[1], ranks[1], (-1.0, 1.0), None) is None  # rank 1 writes nothing
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_info_counts_a_preset_without_weights():
    result = runner.invoke(app, ["info", "dit-b1"])
    assert result.exit_code == 0, result.output
    assert "130,556,192 parameters" in result.output and "8x8x32, 16x16x32 latents" in result.output
    assert "retrofit   +" in result.output and "LowDiffDiT" in result.output


def test_eval_scores_a_latent_model_through_its_vae(files, tmp_path, random_inception_weights):
    import json

    import numpy as np

    from lowdiff_sched.inception import ReferenceStats

    ReferenceStats(np.zeros(2048), np.eye(2048)).save(tmp_path / "ref.npz")  # size unknown: any images
    common = ["eval", "--model", "dit-s1", "--ckpt", str(files / "lowdiff-s1.pt"), "--plan", str(files / "two.json"),
              "--ref", str(tmp_path / "ref.npz"), "--inception-weights", str(random_inception_weights), "--n", "4", "--batch", "2"]
    result = runner.invoke(app, [*common, "--latent-stats", str(files / "latents_stats.pt"), "--vae", str(files / "vae.pt"),
                                 "--json", str(tmp_path / "r.json"), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 4 and report["nfe"] == 6 and np.isfinite(report["fid"]) and report["is"] >= 1.0 - 1e-9
    refused = runner.invoke(app, common)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and "--vae is required" in refused.stderr
