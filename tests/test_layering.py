"""Dependencies point one way: no import cycles between leafseg modules or subpackages, and only the
entry points (recipes themselves, the CLI, the demo) import the recipes.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` of a leafseg
module counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import leafseg

SRC = Path(leafseg.__file__).resolve().parent
ENTRY_POINTS = ("leafseg.recipes", "leafseg.cli", "leafseg.demo")
ALLOWED: set[tuple[str, str]] = set()  # (importer, imported) edges exempt from the checks; none today


def module_files(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = ("leafseg", *path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _known(name: str, modules) -> str | None:
    """The longest prefix of ``name`` that is a leafseg module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """Module -> {imported leafseg module: first line}, module- and function-level imports alike."""
    modules = module_files(src)
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_known(a.name, modules) for a in node.names if a.name.split(".")[0] == "leafseg"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                if origin.split(".")[0] == "leafseg":
                    targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else _known(origin, modules)
                               for a in node.names]
            for target in targets:
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str] | dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def subpackage(module: str) -> str:
    """``leafseg.eval.metrics`` -> ``leafseg.eval``; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def _describe(component, graph) -> str:
    members = set(component)
    return "\n".join(f"  {a} -> {b} (line {line})" for a in component for b, line in sorted(graph[a].items())
                     if b in members)


def _layered_graph() -> dict[str, dict[str, int]]:
    graph = import_graph()
    return {a: {b: line for b, line in edges.items() if (a, b) not in ALLOWED} for a, edges in graph.items()}


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "leafseg.eval.prompts" in graph["leafseg.eval.clip_methods"]     # module level
    assert "leafseg.grouping" in graph["leafseg.eval.methods"]              # inside a method
    assert "leafseg.backbones" in graph["leafseg.eval.methods"]             # inside a function
    assert "leafseg.backbones.base" in graph["leafseg.backbones.vit"]       # relative import
    assert "leafseg.eval.report" in graph["leafseg.eval.outputs"]           # from a package import a module
    assert "leafseg.training.runinfo" in graph["leafseg.demo"]


def test_cycle_finder_reports_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_import_cycles_between_modules():
    graph = _layered_graph()
    found = cycles(graph)
    assert not found, "import cycles between leafseg modules:\n" + "\n".join(_describe(c, graph) for c in found)


def test_no_import_cycles_between_subpackages():
    graph = _layered_graph()
    collapsed: dict[str, dict[str, int]] = {}
    where: dict[str, dict[str, int]] = {}
    for a, edges in graph.items():
        for b, line in edges.items():
            pa, pb = subpackage(a), subpackage(b)
            collapsed.setdefault(pa, {})
            collapsed.setdefault(pb, {})
            if pa != pb:
                collapsed[pa].setdefault(pb, line)
                where.setdefault(pa, {}).setdefault(pb, f"{a}:{line} -> {b}")
    found = cycles(collapsed)
    lines = [f"  {where[a][b]}" for c in found for a in c for b in collapsed[a] if b in c]
    assert not found, "import cycles between leafseg subpackages:\n" + "\n".join(lines)


def test_only_entry_points_import_the_recipes():
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    offenders = [f"{a} (line {line}) imports {b}" for a, edges in import_graph().items()
                 for b, line in edges.items()
                 if inside(b, "leafseg.recipes") and not any(inside(a, p) for p in ENTRY_POINTS)]
    assert not offenders, "components must not import the recipes:\n  " + "\n  ".join(offenders)


def test_the_allowed_exceptions_are_still_needed():
    graph = import_graph()
    stale = [edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], {})]
    assert not stale, f"remove these from ALLOWED, the import is gone: {stale}"
