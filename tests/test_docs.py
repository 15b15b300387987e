"""The docs say what the code does: the presets table is current and the README's code runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from lowdiff_sched import presets

ROOT = Path(__file__).resolve().parents[1]


def test_presets_doc_table_is_current():
    assert presets.markdown_table() in (ROOT / "docs" / "presets.md").read_text()


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """Run the README's Python blocks in order, in one namespace, with fewer samples; the EDM
    example reads a tiny network written in EDM's pickle format under the README's file name."""
    from lowdiff_sched.adapters.edm.networks import NETWORK_CLASSES, VPPrecond

    from edm_fixtures import build_network, snapshot, write_edm_pickle

    torch.manual_seed(0)
    tiny = build_network(VPPrecond, NETWORK_CLASSES.values(), img_resolution=32, img_channels=3, model_channels=16,
                         channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
    write_edm_pickle(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl", snapshot(tiny), NETWORK_CLASSES.values())
    # the DiT example loads a LowDiff checkpoint: a small one (dit-s1) under the README's name
    from lowdiff_sched.adapters.dit.cascade import LowDiffDiT
    from lowdiff_sched.adapters.dit.weights import save_dit
    from lowdiff_sched.adapters.dit.networks import LightningDiT
    from lowdiff_sched.adapters.dit.sizes import size_config

    save_dit(tmp_path / "lowdiff-b1.pt", LowDiffDiT(LightningDiT(size_config("dit-s1")), (8, 16)), size_config("dit-s1"))
    # the diffusers example reads a save_pretrained folder: a small random UNet2DModel and its scheduler
    import diffusers

    diffusers.UNet2DModel(sample_size=64, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                          down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                          ).save_pretrained(tmp_path / "my-ddpm" / "unet")
    diffusers.EulerDiscreteScheduler().save_pretrained(tmp_path / "my-ddpm" / "scheduler")
    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 3
    code = "\n".join(blocks).replace("range(64)", "range(4)").replace("range(16)", "range(2)")
    code = code.replace('size_config("dit-b1")', 'size_config("dit-s1")')
    namespace: dict = {}
    with torch.no_grad():
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["samples"].shape == (2, 3, 32, 32)
    assert torch.isfinite(namespace["samples"]).all()
    assert namespace["msf_samples"].shape == (2, 1, 16, 16) and torch.isfinite(namespace["msf_samples"]).all()
    assert namespace["tuned"].l2_after <= namespace["tuned"].l2_before
    assert namespace["latents"].shape == (8, 32, 16, 16) and torch.isfinite(namespace["latents"]).all()
    assert namespace["ddpm_samples"].shape == (4, 3, 64, 64) and torch.isfinite(namespace["ddpm_samples"]).all()
    assert [lv.size[0] for lv in namespace["low_high"].levels] == [32, 64]
    assert [lv.size[0] for lv in namespace["retrofit"].levels] == [32, 64] and namespace["retrofit"].conditions_on_lower_level


def test_readme_quick_start_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick


def test_local_links_and_pictures_exist():
    """Every relative link and picture in the README and docs/ points at a file of the repo."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if not path or "://" in path:
                continue
            assert (page.parent / path).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_the_toy_adapter_in_the_architecture_doc_runs(tmp_path):
    """docs/architecture.md's "How to add a backbone" example, as written, in a fresh process
    (it registers a backbone, which must not leak into the other tests)."""
    import subprocess
    import sys

    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## How to add a backbone", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1 and len(blocks[0].splitlines()) <= 70
    (tmp_path / "toy.py").write_text(blocks[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "toy.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "toy-run" / "checkpoint-00000002.pt").is_file()
