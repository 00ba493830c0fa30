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
