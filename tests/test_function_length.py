"""Small functions: none in cubesearch/ longer than MAX_LINES (the team's standard), so each
reads at a glance; a long one is listed with its file and length."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "cubesearch"
MAX_LINES = 80


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`file: name N lines` for each function or method (its decorators included) over `limit`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root)}: {node.name} {lines} lines")
    return found


def test_no_function_in_the_package_is_over_80_lines():
    assert long_functions(PACKAGE) == [], "split these:\n" + "\n".join(long_functions(PACKAGE))


def test_a_long_function_is_found(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (tmp_path / "m.py").write_text(f"@decorated\ndef long():\n{body}\n\ndef short():\n    pass\n")
    assert long_functions(tmp_path) == ["m.py: long 82 lines"]
