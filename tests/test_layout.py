"""The package's layout rule: one idea a file. A module past 400 lines, or a class past 200, says why.

A module (or class) that must stay long gives its reason in its docstring, on a line starting with
`Long because:`. The rule is checked here so that a new module that grows past it fails the suite instead
of drifting.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_linreg"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200
REASON = "Long because:"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def oversized(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """What in `path` breaks the rule without a reason: the module, or a class, named with its length."""
    source = path.read_text()
    tree = ast.parse(source)
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES and REASON not in (ast.get_docstring(tree) or ""):
        found.append(f"{path.relative_to(root)}: {lines} lines")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_CLASS_LINES and REASON not in (ast.get_docstring(node) or ""):
                found.append(f"{path.relative_to(root)}: class {node.name}, {length} lines")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_and_class_keeps_to_the_size_rule_or_says_why(path):
    assert oversized(path) == []


def test_the_size_rule_catches_a_long_module_and_a_long_class_without_a_reason(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CLASS_LINES + 1))
    long_class = tmp_path / "pkg" / "wide.py"
    long_class.parent.mkdir()
    long_class.write_text(f'"""A module."""\n\n\nclass Big:\n    """A class."""\n\n{body}\n')
    assert oversized(long_class, tmp_path) == ["pkg/wide.py: class Big, 204 lines"]
    long_module = tmp_path / "pkg" / "long.py"
    long_module.write_text('"""A module."""\n' + "x = 1\n" * MAX_MODULE_LINES)
    assert oversized(long_module, tmp_path) == ["pkg/long.py: 401 lines"]
    long_module.write_text(f'"""A module.\n\n{REASON} one table.\n"""\n' + "x = 1\n" * MAX_MODULE_LINES)
    assert oversized(long_module, tmp_path) == []


# The layers, from the ground up: a package imports only those before it (or itself), never one after.
LAYERS = ["errors", "statistics", "tables", "model", "data", "callbacks", "cli", "deploy"]
FACADES = {"lit_linreg", "lit_linreg.__main__", "lit_linreg._moved"}  # the package's front door, above every layer


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project's modules it imports: at the top, inside functions and under TYPE_CHECKING alike.

    `from pkg import name` counts as importing `pkg.name` where that is a module, else `pkg` itself.
    """
    package = root / "lit_linreg"
    names = {module_name(p, root) for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in names else node.module)
        graph[module_name(path, root)] = {e for e in edges if e in names} - {module_name(path, root)}
    return graph


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the layers: into a later package, or from statistics into the project."""
    found = []
    for module, targets in sorted(graph.items()):
        if module in FACADES:
            continue
        for target in sorted(targets):
            here, there = layer(module), layer(target)
            if there is None or here is None:
                found.append(f"{module} -> {target}")  # nothing outside the layers, the front door included
            elif here == "statistics" and there != "statistics":
                found.append(f"{module} -> {target}")
            elif LAYERS.index(there) > LAYERS.index(here):
                found.append(f"{module} -> {target}")
    return found


def circles(graph: dict[str, set[str]], root: Path = PACKAGE.parent) -> list[list[str]]:
    """The import cycles between modules (a package's `__init__`, which only re-exports, is left out)."""

    def is_package(module: str) -> bool:
        return (root / module.replace(".", "/") / "__init__.py").exists()

    graph = {m: {t for t in ts if t in graph and not is_package(t)} for m, ts in graph.items() if not is_package(m)}
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_imports_run_down_the_layers_and_never_in_a_circle():
    graph = import_graph(PACKAGE.parent)
    assert {layer(m) for m in graph} - {None} == set(LAYERS)
    assert upward_imports(graph) == []
    assert circles(graph) == []


def test_the_layer_check_catches_an_import_up_and_a_circle(tmp_path):
    package = tmp_path / "lit_linreg"
    for name in ("model", "data", "statistics"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "model" / "a.py").write_text("def f():\n    from lit_linreg.data import b\n")  # up, inside a function
    (package / "data" / "b.py").write_text("from lit_linreg.model import a\n")
    (package / "statistics" / "c.py").write_text("import lit_linreg.model.a\n")
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == [
        "lit_linreg.model.a -> lit_linreg.data.b",
        "lit_linreg.statistics.c -> lit_linreg.model.a",
    ]
    assert circles(graph, tmp_path) == [["lit_linreg.data.b", "lit_linreg.model.a", "lit_linreg.data.b"]]
