"""The package's stages import one way: a walk over every module's imports (those inside functions included)
finds no cycle, and no module imports a stage above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import ovseg3d

PACKAGE = Path(ovseg3d.__file__).parent

# lowest first; a module may import its own layer and the layers below (never a layer above)
LAYERS: list[tuple[str, ...]] = [
    (
        "ovseg3d",
        "ovseg3d.errors",
        "ovseg3d.atomic",
        "ovseg3d.accel",
        "ovseg3d.images",
        "ovseg3d.losses",
        "ovseg3d.syncs",
    ),
    ("ovseg3d.metrics",),
    ("ovseg3d.data",),
    ("ovseg3d.synth",),
    ("ovseg3d.teachers",),
    ("ovseg3d.field", "ovseg3d.render"),
    ("ovseg3d.depth_prior",),
    ("ovseg3d.config", "ovseg3d.run"),
    ("ovseg3d.train",),
    ("ovseg3d.distill", "ovseg3d.lift", "ovseg3d.views"),
    ("ovseg3d.evaluate", "ovseg3d.export", "ovseg3d.renders"),
    ("ovseg3d.detect",),
    ("ovseg3d.retrieval",),  # which photos prepare matches: numpy alone
    ("ovseg3d.prepare",),  # makes scenes of photos: turns them upright with camera_up and detect's rotation_between
    ("ovseg3d.viewer",),
    ("ovseg3d.pipeline",),
    ("ovseg3d.batch",),
    ("ovseg3d.bench",),  # the benchmark harness: a benchmark may run any stage
    ("ovseg3d.cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (``from a import b`` of a submodule b counts
    as importing ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("ovseg3d"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ovseg3d")}
        assert not (isinstance(node, ast.ImportFrom) and node.level > 0), f"{path}: relative import"
    return {m for m in found if m in known and m != "ovseg3d"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) < 0] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} -> {d}" for m, deps in sorted(graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == []


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(g.get(u, ())):
            if state.get(v) == 1:
                return [*stack[stack.index(v) :], v]
            if v not in state and (cycle := visit(v)) is not None:
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(g):
        if u not in state and (cycle := visit(u)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_walk_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ovseg3d.pipeline import run_scene\n    import ovseg3d.cli\n")
    assert imports_of(src, {"ovseg3d.pipeline", "ovseg3d.cli"}) == {"ovseg3d.pipeline", "ovseg3d.cli"}
