"""Every folder of Python source in the package is a regular package, so a wheel built with
setuptools' find_packages ships it (a folder without __init__.py would be silently left out)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lowdiff_sched"


def test_every_source_folder_has_an_init():
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"no __init__.py in {missing}"


def test_wheel_ships_the_weights(tmp_path):
    """The shipped models and classifier must be inside the wheel, or `sample --model
    mnist-lowdiff` fails on a fresh (non-editable) install."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = PACKAGE.parent
    source = tmp_path / "src"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".venv", ".git", "out", "runs", "build", "*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("lowdiff_sched-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"lowdiff_sched/weights/{p.name}" for p in (PACKAGE / "weights").iterdir() if p.suffix in (".safetensors", ".json")}
    assert shipped and shipped <= names, sorted(shipped - names)
