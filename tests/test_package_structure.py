"""The package's import graph, read from the source: no import cycle, and no entry point (a module run with
``python -m``) imported by another module of the package, whether an entry point or a library module."""

from __future__ import annotations

import ast
from pathlib import Path

import npair

PACKAGE_DIR = Path(npair.__file__).resolve().parent

# The command line of the figures is npair.plots.cli, run by npair.plots.__main__: one entry point.
CLI_MODULES = {"npair.plots.cli": "npair.plots.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at module level or inside functions (lazy imports), leaving out
    the ``if TYPE_CHECKING:`` blocks that exist for annotations only."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported_modules(name: str) -> set[str]:
    """The package modules that module ``name`` imports: ``from a.b import c`` is an import of ``a.b.c`` when
    that is a module, else of ``a.b``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:  # `import npair.x.y` of a name inside a module
                target = target.rpartition(".")[0]
            if target.startswith("npair") and target != name:
                out.add(target)
    return out


GRAPH = {name: imported_modules(name) for name in MODULES}


def entry_points() -> set[str]:
    """Modules run with ``python -m``: a ``__main__`` module or one with an ``if __name__ == "__main__":``."""
    found = set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        guard = any(
            isinstance(n, ast.If)
            and isinstance(n.test, ast.Compare)
            and isinstance(n.test.left, ast.Name)
            and n.test.left.id == "__name__"
            for n in tree.body
        )
        if guard or path.name == "__main__.py":
            found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in graph:
        if v not in index:
            connect(v)
    return out


def reachable(start: str) -> set[str]:
    seen, todo = set(), list(GRAPH[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
    return seen


def test_the_graph_reader_sees_the_imports_it_must() -> None:
    assert {"npair.build", "npair.checkpoint"} <= GRAPH["npair.train"]  # also `from npair import checkpoint`
    assert "npair.evaluation.evaluator" in GRAPH["npair.evaluation"]  # a relative import
    assert "npair.build" in GRAPH["npair.tables"]  # a lazy import inside a function
    assert "npair.checkpoint" not in GRAPH["npair.loggers"]  # under TYPE_CHECKING only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_the_package_has_no_import_cycle() -> None:
    found = [sorted(c) for c in cycles(GRAPH)]
    assert not found, f"import cycles: {found}"


def test_no_module_imports_an_entry_point() -> None:
    entries = entry_points()
    expected = {
        "npair.train",
        "npair.tables",
        "npair.evaluate",
        "npair.plots.__main__",
        "npair.data.download",
    }
    assert expected <= entries
    entries |= set(CLI_MODULES)
    for name, imports in GRAPH.items():
        allowed = {module for module, runner in CLI_MODULES.items() if runner == name}
        bad = sorted((imports & entries) - allowed)
        assert not bad, f"{name} imports the entry point(s) {bad}; import library modules (npair.build, ...)"
    for entry in entries:
        allowed = {module for module, runner in CLI_MODULES.items() if runner == entry}
        bad = sorted((reachable(entry) & entries) - allowed - {entry})
        assert not bad, f"the entry point {entry} reaches the entry point(s) {bad} through its imports"
