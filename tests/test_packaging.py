"""Every folder of Python source in the package is a regular package, so a wheel built with
setuptools' find_packages ships it (a folder without __init__.py would be silently left out)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lowdiff_sched"


def test_every_source_folder_has_an_init():
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"no __init__.py in {missing}"
