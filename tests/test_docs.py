"""The docs say what the code does: the presets table is current and the README's code runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lowdiff_sched import presets

ROOT = Path(__file__).resolve().parents[1]


def test_presets_doc_table_is_current():
    assert presets.markdown_table() in (ROOT / "docs" / "presets.md").read_text()


def test_readme_python_examples_run():
    """Run the README's Python blocks in order, in one namespace, with fewer samples."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace("range(64)", "range(4)")
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["samples"].shape == (8, 3, 32, 32)
    assert torch.isfinite(namespace["samples"]).all()


def test_readme_quick_start_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
