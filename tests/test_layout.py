"""The package layout: modules import only their own layer or the layers below, and never in a
circle. Read from the source (every import statement, also those inside functions and under
TYPE_CHECKING), so the test sees what a reader sees."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "studies", "bench")
# Bottom to top, following the data flow spec -> data -> model -> training -> engine -> report.
# A module may import its own layer or lower ones; the first matching prefix names its layer.
LAYERS = [
    ("models.compile_barrier", 0),  # imports nothing of the project; the routing and the DFT use it
    ("models.cpu", 0),
    ("studies.write_faults", 0),  # imports nothing of the project; every layer that writes files uses it
    ("models", 1),
    ("studies.data", 2),
    ("studies.training", 3),
    ("bench.__main__", 7),
    ("bench", 4),
    ("studies.spec", 4),
    ("studies.engine", 5),
    ("studies.report", 6),
    ("studies.errors", 7),
    ("studies.cli", 7),
    ("studies.__main__", 7),
    ("studies", 7),  # the package's own docstring module
]


def layer(module: str) -> int:
    for prefix, number in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return number
    raise AssertionError(f"{module} has no layer in tests/test_layout.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (a `from a.b import c` names a.b.c when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


GRAPH = {name: imports(path, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    upward = sorted(other for other in GRAPH[module] if layer(other) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_no_import_circle():
    # Tarjan's strongly connected components; a component of two or more modules is a circle.
    # A package's __init__ importing its own submodules is not a circle of code, so skip those edges.
    edges = {m: {o for o in targets if not (m == o or o.startswith(m + "."))} for m, targets in GRAPH.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_every_package_says_what_it_owns():
    for name, path in modules().items():
        if path.name == "__init__.py":
            docstring = ast.get_docstring(ast.parse(path.read_text()))
            assert docstring and len(docstring) > 40, f"{name} has no docstring saying what it owns"


def test_test_only_routing_lives_under_tests():
    for path in (ROOT / "models").rglob("*.py"):
        text = path.read_text()
        assert "_RouteVotes" not in text and "def dynamic_routing" not in text, path
