"""Architecture rules, checked from the source (no imports of the package needed).

- Imports only run downhill: every import goes to its own layer or a lower one (:data:`LAYERS`), and
  the graph between the package's subpackages and root modules
  (``fewshotcx.io``, ``fewshotcx.segmenter``, ...) has no cycle. Module-level and function-level
  (lazy) imports count, as do ``import_module`` calls with a literal name. Imports under
  ``if TYPE_CHECKING:`` never run, so they cannot make a cycle, but they count for the layers: a
  module that names a higher layer's type, even only for type hints, is written against that layer
  (it receives or calls back into it), which is exactly the hidden back edge the layers forbid.
- Nothing outside ``segmenter.py`` touches a Segmenter attribute whose name starts with ``_``.
- No module of the package or benchmark script is over 400 lines, except pure data tables.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "fewshotcx"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400
#: Pure data tables, exempt from the line limit.
DATA_TABLES = {"io/deid_profile.py"}
#: The layers, bottom first (docs/architecture.md draws them). A node may import its own layer or a
#: lower one, never a higher one; a new subpackage or root module must be placed here.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"io", "paths", "progress", "compat"}),
    ("registration and data sets", {"registration", "datasets"}),
    ("data path", {"pipeline", "viz", "interactive"}),
    ("networks", {"models", "sam"}),  # sam: the deprecated alias of models.sam
    ("adapters and training", {"backends", "training"}),
    ("fitted model", {"predictor"}),
    ("evaluation", {"evaluation"}),
    ("segmenter and RT", {"segmenter", "rt"}),
    ("workflows", {"session", "cohort", "baselines"}),
    ("services", {"server", "demo", "node"}),
    ("entry points", {"cli", "client", "napari", "__main__"}),
]
#: Names under which code holds a Segmenter (``seg._x``, ``self.segmenter._x``, ...).
SEGMENTER_NAMES = {"seg", "segmenter", "_segmenter", "clone"}


def _sources(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path, root: Path = ROOT) -> str:
    """``fewshotcx/pipeline/support.py`` → ``fewshotcx.pipeline.support`` (``__init__`` → the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    """The graph node of a ``fewshotcx`` module: its top-level subpackage or root module.

    The package root itself (``fewshotcx/__init__.py``, the public API) is not a node."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """Absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imported_modules(path: Path, root: Path = ROOT, type_checking: bool = False) -> set[str]:
    """Every absolute module name that ``path`` imports at run time (module or function level), and
    with ``type_checking`` also those imported under ``if TYPE_CHECKING:``."""
    importer = _module_name(path, root)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, is_package, node.module, node.level)
            found.add(base)
            # ``from . import segmenter`` imports a module, not only an attribute.
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _called_name(node.func) == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
                level = len(name) - len(name.lstrip("."))
                found.add(_resolve(importer, is_package, name.lstrip(".") or None, level))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def import_graph(root: Path = ROOT, type_checking: bool = False) -> dict[str, set[str]]:
    """Node → the nodes it imports (edges within a node are not edges); ``type_checking``: imports under
    ``if TYPE_CHECKING:`` count too."""
    nodes = {_node(_module_name(p, root)) for p in _sources(root)} - {None}
    graph: dict[str, set[str]] = {node: set() for node in nodes}
    for path in _sources(root):
        source = _node(_module_name(path, root))
        if source is None:
            continue
        for module in imported_modules(path, root, type_checking):
            target = _node(module)
            if target is not None and target != source and target in nodes:
                graph[source].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed path through the component's first node (breadth-first, so a shortest one)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_cycle_finder_finds_and_prints_a_cycle():
    graph = {"io": set(), "pipeline": {"io", "models"}, "models": {"backends"}, "backends": {"pipeline"}}
    assert find_cycles(graph) == [["backends", "pipeline", "models", "backends"]]
    assert find_cycles({"io": set(), "pipeline": {"io"}}) == []


def test_import_reader_counts_lazy_imports_and_skips_type_checking(tmp_path):
    package = tmp_path / PACKAGE
    (package / "pipeline").mkdir(parents=True)
    source = package / "pipeline" / "slabs.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..io import Volume\n"
        "from . import support\n"
        "if TYPE_CHECKING:\n    from ..segmenter import Segmenter\n"
        "def lazy():\n    from ..models.universeg import UniverSeg\n    import fewshotcx.rt\n"
        "    return import_module('fewshotcx.cli')\n"
    )
    found = {_node(m) for m in imported_modules(source, root=package)}
    assert found - {None} == {"io", "pipeline", "models", "rt", "cli"}


def test_no_import_cycle_between_subpackages():
    cycles = find_cycles(import_graph())
    assert not cycles, "imports must only run downhill; cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def uphill_imports(graph: dict[str, set[str]], layers: list[tuple[str, set[str]]]) -> list[str]:
    """Edges that point to a higher layer, and nodes that no layer holds."""
    level = {node: i for i, (_, nodes) in enumerate(layers) for node in nodes}
    problems = [f"{node}: not in any layer of LAYERS" for node in sorted(graph) if node not in level]
    for source in sorted(graph):
        for target in sorted(graph[source]):
            if source in level and target in level and level[target] > level[source]:
                problems.append(f"{source} ({layers[level[source]][0]}) imports {target} ({layers[level[target]][0]})")
    return problems


def test_layer_check_finds_uphill_imports_and_unplaced_nodes():
    layers = [("low", {"io"}), ("high", {"cli"})]
    assert uphill_imports({"io": set(), "cli": {"io"}}, layers) == []
    assert uphill_imports({"io": {"cli"}, "cli": set(), "new": set()}, layers) == [
        "new: not in any layer of LAYERS", "io (low) imports cli (high)"]


def test_layer_check_counts_type_checking_imports(tmp_path):
    """``evaluation`` naming the Segmenter only for type hints is still an edge up to the segmenter layer
    (how 0.3's uncertainty module called the Segmenter back); a type from a lower layer is fine."""
    package = tmp_path / PACKAGE
    (package / "evaluation").mkdir(parents=True)
    (package / "segmenter.py").write_text("from .evaluation import uncertainty\n")
    (package / "predictor.py").write_text("")
    (package / "evaluation" / "uncertainty.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..segmenter import Segmenter\n    from ..predictor import Predictor\n"
        "def samples(seg: 'Segmenter'):\n    return seg.canonical_probabilities(None)\n"
    )
    layers = [("fitted model", {"predictor"}), ("evaluation", {"evaluation"}), ("segmenter", {"segmenter"})]
    assert uphill_imports(import_graph(package), layers) == []  # invisible at run time
    assert find_cycles(import_graph(package)) == []
    assert uphill_imports(import_graph(package, type_checking=True), layers) == [
        "evaluation (evaluation) imports segmenter (segmenter)"]


def test_imports_only_run_downhill_between_layers():
    problems = uphill_imports(import_graph(type_checking=True), LAYERS)
    assert not problems, "imports must run downhill (docs/architecture.md):\n" + "\n".join(problems)


def _segmenter_private_reach_ins(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        holder = node.value
        name = holder.id if isinstance(holder, ast.Name) else holder.attr if isinstance(holder, ast.Attribute) else None
        if name in SEGMENTER_NAMES:
            found.append((node.lineno, node.col_offset, f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}"))
    return [text for *_, text in sorted(found)]


def test_reach_in_scanner_sees_private_segmenter_access(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f(seg, self):\n    seg._labels(1)\n    self.segmenter._generator\n    seg.fit\n")
    found = _segmenter_private_reach_ins(source, root=tmp_path)
    assert [f.split(": ")[1] for f in found] == ["seg._labels", "self.segmenter._generator"]


def test_no_private_segmenter_access_outside_segmenter():
    found = [hit for path in _sources() if path != ROOT / "segmenter.py" for hit in _segmenter_private_reach_ins(path)]
    assert not found, "use the Segmenter's internal API, not its private members:\n" + "\n".join(found)


def _long_module_candidates() -> list[Path]:
    """The package's modules and the benchmark scripts, less the pure data tables (:data:`DATA_TABLES`)."""
    modules = [*_sources(), *sorted((ROOT.parent / "benchmarks").glob("*.py"))]
    return [p for p in modules if p.relative_to(ROOT.parent).as_posix().removeprefix(f"{PACKAGE}/") not in DATA_TABLES]


@pytest.mark.parametrize("path", _long_module_candidates(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_module_is_at_most_400_lines(path):
    name = path.relative_to(ROOT.parent).as_posix()
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (> {MAX_LINES}): split it by concern"


def test_architecture_page_draws_every_layer():
    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    picture = page.split("```", 2)[1]  # the first fenced block: the layers
    rows = [line for line in picture.splitlines() if line.strip() and line.strip() != "│"]
    drawn = [re.split(r"\s{2,}", line.strip())[0] for line in rows if not line.startswith("   ")]
    assert drawn == [name for name, _ in reversed(LAYERS)], "docs/architecture.md must draw LAYERS, top first"
    for _, nodes in LAYERS:
        for node in nodes:
            assert f"{node}/" in picture or f"{node}.py" in picture, f"docs/architecture.md does not place {node}"
