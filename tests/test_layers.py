"""Layers point one way: every `app` import (module level or inside a function) follows the table below.

The table is the one place the rules live. A unit is a top-level module (`app.config`) or subpackage
(`app.tracking`); a unit may import itself, the foundation, and the units `MAY_IMPORT` lists for it. An
import that breaks a rule for a reason being worked on is an entry in `ALLOWANCES`, naming the importing
module, the imported unit and why; an allowance nothing uses any more fails too, so the table stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.shared_data import REPO

APP = REPO / "app"

# Imported by anything; they import only each other (`app` is the package itself: `__version__`).
FOUNDATION = frozenset(
    {"app", "errors", "exit_codes", "url_masking", "cli_exit", "output_paths", "file_digest"}
)
# Command lines and the demo sit on top: they may import any unit (the demo runs main's), and no other unit
# imports them.
ENTRY_POINTS = frozenset({"main", "enroll", "demo"})

MAY_IMPORT: dict[str, frozenset[str]] = {
    # settings: the names of backends and embedder kinds come from inference's interface and specs
    "config": frozenset({"inference"}),
    "cameras": frozenset({"config"}),
    # domain packages, lowest first; sideways imports between them only as listed here
    "inference": frozenset(),
    "models": frozenset(),
    "vision": frozenset({"inference"}),  # the models it prepares input for, the embedder specs it aligns to
    "gallery": frozenset({"config", "inference"}),  # metric names and similarity arithmetic
    # the tracker follows boxes only; who is on a track (gallery matches, face quality) is recognition's
    "tracking": frozenset(),
    # identity voting over the tracker's tracks, enrolment, quality, clustering: the gallery's matches
    "recognition": frozenset({"config", "inference", "vision", "tracking", "gallery"}),
    # the framework: frames, rings, messages, supervision; it knows no stage and no domain package
    "pipeline": frozenset(),
    "integrations": frozenset({"config", "cameras", "pipeline", "vision"}),
    # the application: stages wire the domain packages into the framework
    "stages": frozenset(
        {
            "config",
            "cameras",
            "pipeline",
            "integrations",
            "inference",
            "vision",
            "tracking",
            "gallery",
            "recognition",
            "models",
        }
    ),
}

# (importing module, imported unit) -> why the rule is broken for now.
ALLOWANCES: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(APP.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The `app` modules `name` imports anywhere in its file (inside functions and TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # `from app.x import y` imports module app.x.y when there is one, else names from app.x
            for alias in node.names:
                full = f"{source}.{alias.name}"
                targets.add(full if full in modules else source)
    return {t for t in targets if t == "app" or t.startswith("app.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _allowed(importer: str, imported: str) -> bool:
    source, target = _unit(importer), _unit(imported)
    if source == target or source in ENTRY_POINTS:
        return True
    if target in ENTRY_POINTS:
        return False
    if source in FOUNDATION:
        return target in FOUNDATION
    return target in FOUNDATION or target in MAY_IMPORT[source]


def test_every_unit_of_app_has_a_rule() -> None:
    units = {_unit(module) for module in _modules()}
    assert units <= FOUNDATION | ENTRY_POINTS | MAY_IMPORT.keys(), "add the new unit to the layer table"


def test_imports_point_down_the_layers() -> None:
    broken = sorted(
        f"{importer} imports {imported}"
        for importer, targets in _graph().items()
        for imported in targets
        if not _allowed(importer, imported) and (importer, _unit(imported)) not in ALLOWANCES
    )
    assert not broken, "imports against the layers (tests/test_layers.py says which way they point):\n" + (
        "\n".join(broken)
    )


def test_every_allowance_is_still_needed() -> None:
    used = {
        (importer, _unit(imported))
        for importer, targets in _graph().items()
        for imported in targets
        if not _allowed(importer, imported)
    }
    stale = sorted(f"{importer} -> {unit}" for importer, unit in ALLOWANCES.keys() - used)
    assert not stale, "allowances nothing needs any more; remove them: " + ", ".join(stale)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), Tarjan's way."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_app() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_three_module_cycle() -> None:
    graph = {"app.a": {"app.b"}, "app.b": {"app.c"}, "app.c": {"app.a"}, "app.d": {"app.a"}}
    assert _cycles(graph) == [["app.a", "app.b", "app.c"]]


def test_function_level_and_relative_imports_are_seen(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def late():\n    from app.stages import detect\n\nfrom . import sibling\nimport app.config as cfg\n"
    )
    modules = {"app.pipeline.m": module, "app.stages.detect": module, "app.pipeline.sibling": module}
    assert _imports("app.pipeline.m", module, modules) == {
        "app.stages.detect",
        "app.pipeline.sibling",
        "app.config",
    }
    assert not _allowed("app.pipeline.m", "app.stages.detect")
