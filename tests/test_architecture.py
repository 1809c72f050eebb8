"""The layer order of DESIGN.md holds: no module imports from a layer above its own, and there is no
import cycle between modules (function-level imports included). Module sizes stay reviewable.

Layers, lowest first: errors/units < data < nn < electrostatics < models < training < bands < config
< calculators (and the test toolkit ``testing``) < commands/cli.
"""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlpot"
LAYERS = {
    "errors": 0, "units": 0,
    "data": 1,
    "nn": 2,
    "electrostatics": 3,
    "models": 4,
    "training": 5,
    "bands": 6,
    "config": 7,
    "calculators": 8, "testing": 8,
    "commands": 9, "cli": 9,
    "": 0,  # mlpot/__init__.py: the version string, no imports
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, path: Path):
    """(imported module, line) of every ``import mlpot...`` / ``from mlpot... import ...`` in the file,
    at any depth (function-level imports count); ``from pkg import submodule`` names the submodule."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mlpot"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlpot"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield (candidate if candidate in MODULES else node.module), node.lineno


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


GRAPH = {module: sorted({target for target, _ in _imports(module, path) if target in MODULES and target != module})
         for module, path in MODULES.items()}


def test_every_top_level_module_has_a_layer():
    assert {(m.split(".") + [""])[1] for m in MODULES} <= set(LAYERS)


def test_no_import_goes_up_the_layer_order():
    upward = []
    for module, path in MODULES.items():
        for target, line in _imports(module, path):
            if target in MODULES and _layer(target) > _layer(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}")
    assert not upward, "imports up the layer order of DESIGN.md:\n" + "\n".join(upward)


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_module_and_function_sizes():
    sizes = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    assert statistics.median(sizes.values()) <= 200
    large = {m: n for m, n in sizes.items() if n > 450}
    assert not large, f"modules over 450 lines: {large}"
    long_functions = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_functions, f"functions over 80 lines: {long_functions}"


@pytest.mark.parametrize("package", ["training"])
def test_the_engine_names_no_model_family(package):
    """The engine calls family hooks; no DeePMD (or other family) names inside it."""
    offenders = []
    for module, path in MODULES.items():
        if module.startswith(f"mlpot.{package}"):
            for target, line in _imports(module, path):
                if any(target.startswith(f"mlpot.models.{family}") for family in ("deepmd", "equivariant", "fixed_point")):
                    offenders.append(f"{module}:{line} imports {target}")
            text = path.read_text()
            for word in ("descriptor", "fitting", "resolve_auto_sel", "sel_auto", "type_embedding"):
                if word in text:
                    offenders.append(f"{module} mentions {word!r}")
    assert not offenders, "\n".join(offenders)
