"""The package's layers hold: modules import each other without cycles, never upward (the order
of `LAYERS`, as docs/design.md draws it), and at the top of their files."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "cubesearch"

# docs/design.md "Package map", bottom first: a module may import its own layer and the layers
# below it, never one above. A new top-level module or subpackage must be placed here.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("blocks",),
    ("models",),
    ("plan",),
    ("cost",),
    ("training",),
    ("search",),
    ("exporting",),
    ("cli", "__main__", "__init__"),
]
# Where a function-local import of the package's own modules is allowed: the CLI imports the
# API of each command when that command runs, so `cubesearch --help` starts fast.
LAZY_IMPORTERS = ("cubesearch.cli",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit of a module: its top-level module or subpackage (`__init__`: the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports(tree: ast.Module, *, local: bool) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run: those at module level (and inside module-level `try` / `if` blocks,
    except `if TYPE_CHECKING:`), and with `local` those inside functions and classes too."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.If) and not is_type_checking(node):
            todo += node.body + node.orelse
        elif local and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                         ast.With, ast.For, ast.While)):
            todo += [s for s in ast.iter_child_nodes(node) if isinstance(s, ast.stmt)]
    return found


def targets(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> list[str]:
    """The cubesearch modules an import names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [n for n in names if n == "cubesearch" or n.startswith("cubesearch.")]


def parsed() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in PACKAGE.rglob("*.py")}


def import_graph(*, local: bool = False) -> dict[str, set[str]]:
    """Module → the cubesearch modules importing it runs (package `__init__`s included); with
    `local`, function-local imports count too (they run when the function does)."""
    modules = parsed()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, tree) in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in imports(tree, local=local):
            for target in targets(node, package, set(modules)):
                # importing a.b.c runs a.b's __init__ too, unless the importer is inside a.b
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, ...]]) -> list[str]:
    """`importer → imported` for every import of a higher layer than the importer's own."""
    level = {u: i for i, layer in enumerate(layers) for u in layer}
    return sorted(f"{m} → {dep}" for m, deps in graph.items() for dep in deps
                  if level[unit(dep)] > level[unit(m)])


def local_project_imports() -> list[str]:
    """`module:line` of every function-local import of cubesearch outside `LAZY_IMPORTERS`."""
    found = []
    for name, (path, tree) in parsed().items():
        if name.startswith(LAZY_IMPORTERS):
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        top = {id(n) for n in imports(tree, local=False)}
        for node in imports(tree, local=True):
            if id(node) not in top and targets(node, package, set()):
                found.append(f"{name}:{node.lineno}")
    return sorted(found)


def test_the_graph_sees_the_imports():
    graph = import_graph()
    assert "cubesearch.plan.sites" in graph["cubesearch.cost.pricing"]
    assert "cubesearch.search.context" in graph["cubesearch.search.driver"]
    lazy = import_graph(local=True)
    assert "cubesearch.exporting.export" in lazy["cubesearch.cli.export"]  # the CLI's lazy import
    assert "cubesearch.exporting.export" not in graph["cubesearch.cli.export"]


def test_no_import_cycle_among_cubesearch_modules():
    cycle = find_cycle(import_graph(local=True))
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_module_has_a_layer():
    placed = {u for layer in LAYERS for u in layer}
    units = {unit(m) for m in import_graph()}
    assert units <= placed, f"place {sorted(units - placed)} in LAYERS (and docs/design.md)"
    assert len(placed) == sum(len(layer) for layer in LAYERS), "a unit in two layers"


def test_no_module_imports_a_higher_layer():
    upward = upward_imports(import_graph(local=True), LAYERS)
    assert upward == [], "upward imports (see LAYERS):\n" + "\n".join(upward)


def test_an_upward_import_is_found():
    graph = {"cubesearch.training.trainer": {"cubesearch.search.context", "cubesearch.plan.plan"}}
    assert upward_imports(graph, LAYERS) == ["cubesearch.training.trainer → cubesearch.search.context"]


def test_no_function_local_import_of_the_package_outside_the_cli():
    found = local_project_imports()
    assert found == [], ("function-local cubesearch imports (put them at the top; only the CLI "
                         "imports lazily):\n" + "\n".join(found))


def test_a_function_local_import_is_found():
    tree = ast.parse("import os\n\ndef f():\n    from cubesearch.plan.plan import Plan\n    import json\n")
    top = {id(n) for n in imports(tree, local=False)}
    local = [n for n in imports(tree, local=True) if id(n) not in top]
    assert sorted(targets(n, "cubesearch", set()) for n in local) == [[], ["cubesearch.plan.plan"]]
