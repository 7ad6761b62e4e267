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
    ("models.fields", 0),  # the declarative checks of every config (models, training, specs, options)
    ("studies.write_faults", 0),  # imports nothing of the project; every layer that writes files uses it
    ("studies.results_location", 0),  # where results go; the engine, the report and the bench use it
    ("studies.interrupt_line", 0),  # the one line and exit code of an interrupted command (CLI and bench)
    ("models", 1),
    ("studies.arguments", 1),  # argument types checked by the config fields; the CLI and the bench use them
    ("studies.data", 2),
    ("studies.training", 3),
    ("studies.spec", 4),
    ("studies.run_options", 4),
    ("studies.store", 5),  # the one module that speaks to Optuna's storages, and what trials record
    ("studies.errors", 5),  # the exception types of bad input, from every layer below
    ("bench", 6),
    ("studies.engine", 7),  # its throughput study runs the bench
    ("studies.report", 8),
    ("studies.cli", 9),
    ("studies.__main__", 9),
    ("studies", 9),  # the package's own docstring module
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


def test_bench_reaches_neither_the_engine_nor_the_command_line():
    """The bench sits below the engine (whose throughput study runs it), so it may not climb back."""
    for name in GRAPH:
        if name == "bench" or name.startswith("bench."):
            climbing = sorted(o for o in GRAPH[name] if o.startswith(("studies.engine", "studies.cli")))
            assert not climbing, f"{name} imports {climbing}"


def test_optuna_storage_calls_live_in_one_adapter():
    """Trials are never built by hand, and only the storage adapter calls Optuna's storage interface."""
    adapter = ROOT / "studies" / "store" / "storage.py"
    internals = ("optuna.storages", "optuna.trial." + "Trial(", ".set_trial_state_values(", ".set_trial_user_attr(",
                 ".get_all_trials(", ".record_heartbeat(", ".get_study_user_attrs(", "fail_stale_trials(")
    for path in modules().values():
        if path != adapter:
            found = [word for word in internals if word in path.read_text()]
            assert not found, f"{path.relative_to(ROOT)} uses Optuna's storage interface: {found}"


def test_no_two_names_differ_by_a_letter_or_a_suffix():
    """`spec` beside `specs`, `run` beside `runner`: names a reader confuses."""
    names = {p.stem for package in PACKAGES for p in (ROOT / package).rglob("*") if p.suffix in ("", ".py")
             and p.name not in ("__init__.py", "__main__.py", "__pycache__") and "__pycache__" not in p.parts
             and "csrc" not in p.parts}
    for name in names:
        for other in names:
            if name != other and other.startswith(name) and len(other) - len(name) <= 3 and "_" not in other[len(name):]:
                raise AssertionError(f"{name!r} and {other!r} differ by a suffix")


def test_no_file_cites_a_document_the_repository_lacks():
    for path in ROOT.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".md", ".toml", ".txt", ".cfg") and not any(
                part in (".venv", ".git", "data", "node_modules") for part in path.relative_to(ROOT).parts):
            assert "REFERENCES" + ".md" not in path.read_text(errors="ignore"), path
