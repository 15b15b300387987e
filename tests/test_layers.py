"""The package's import graph, read from the source (function-level imports included): no
module imports one of a higher layer, and no group of modules imports itself in a circle.
A new module must be given a layer here, so where it sits is decided, not drifted into."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import lowdiff_sched

ROOT = Path(lowdiff_sched.__file__).parent

# Low -> high. A module may import its own layer and those below, never one above.
LAYERS: list[tuple[str, ...]] = [
    # foundations: the protocol, numbers, files, processes and the backbone table
    ("lowdiff_sched", "errors", "outputs", "tensorfiles", "devices", "protocol", "resample", "schedules", "samplers",
     "flow", "metrics", "laplacian_swd", "weights", "labels", "processes", "kernels", "checkpoints", "backbones"),
    # plans and sampling, data, feature networks
    ("transitions", "plan", "presets", "plan_space", "cost", "msf", "sampling", "trd", "datasets", "classifier", "inception"),
    # judges, models on disk and by name
    ("judges", "runs", "models"),
    # jobs: sampling into folders, evaluation, search, training, pictures
    ("generate", "evaluate", "search", "plots", "training"),
    # backbones' adapters: they may use every layer below
    ("adapters",),
    # the command line
    ("cli",),
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        name = ".".join(parts[1:depth]) if depth > 1 else "lowdiff_sched"
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: give it one")


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (the module itself, not the package above it,
    for `from . import outputs`)."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                candidates = submodules or [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in mods and c != name)
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a, targets in sorted(graph.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_every_module_has_a_layer_and_imports_none_above_it() -> None:
    upward = upward_imports(import_graph())
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path: Path, monkeypatch) -> None:
    """The two checks above are not vacuous: a package with both defects is caught."""
    pkg = tmp_path / "lowdiff_sched"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "protocol.py").write_text("def f():\n    from .cli import app\n")
    (pkg / "cli" / "app.py").write_text("from ..protocol import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    graph = import_graph()
    assert upward_imports(graph) == ["lowdiff_sched.protocol (layer 0) imports lowdiff_sched.cli.app (layer 5)"]
    assert cycles(graph) == [["lowdiff_sched.cli.app", "lowdiff_sched.protocol", "lowdiff_sched.cli.app"]]
