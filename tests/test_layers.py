"""The rules the layout depends on, checked on the source.

- Layers: liteembed <- service <- workers <- cli; a package imports only from its own layer or
  the ones below (the engine stands alone, the service never reaches for a worker). The client
  (`liteembed_client`) imports none of the others; the test-bed (`testbed`) only the engine.
- No import cycle between modules, lazy imports inside functions included.
- The queue library is known to two modules only, so changing the backend changes those two.
- Routes take every resource as a dependency (`service/api/deps.py`), never from `app.state`;
  the writes in `service/crud/` take keyword arguments only.
- Private names (`_x`) and private modules (`pkg._mod`) are not imported from outside.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each package's source lives: the engine and the client are distributions of their own.
PACKAGE_DIRS = {
    "liteembed": ROOT / "engine" / "liteembed",
    "liteembed_client": ROOT / "client" / "liteembed_client",
    "testbed": ROOT / "testbed",
    "service": ROOT / "service",
    "workers": ROOT / "workers",
    "cli": ROOT / "cli",
    "benchmarks": ROOT / "benchmarks",
    "tests": ROOT / "tests",
}
LAYERS = {"liteembed": 0, "service": 1, "workers": 2, "cli": 3}
# Packages outside the layers, and the packages of this repository each may import.
STANDALONE = {"liteembed_client": set(), "testbed": {"liteembed"}}
QUEUE_LIBRARY = "dramatiq"
QUEUE_MODULES = {"service/queue.py", "workers/_broker.py"}
# Packages whose modules must not import private names from elsewhere.
PRIVACY_CHECKED = tuple(PACKAGE_DIRS)


def package_dir(package: str) -> Path:
    top, _, rest = package.partition("/")
    return PACKAGE_DIRS[top] / rest if rest else PACKAGE_DIRS[top]


def python_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in package_dir(package).rglob("*.py"))


def module_name(path: Path) -> str:
    for package, directory in PACKAGE_DIRS.items():
        if path.is_relative_to(directory):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            break
    else:
        raise ValueError(f"{path} is in no known package")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_path(module: str) -> Path | None:
    """The file of a module of this repository (a package's `__init__.py`), or None."""
    top, *rest = module.split(".")
    if top not in PACKAGE_DIRS:
        return None
    base = PACKAGE_DIRS[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("package", list(LAYERS))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    upward = [
        f"{relative(path)}:{line} imports {module}"
        for path in python_files(package)
        for module, _, line in imports(path)
        if LAYERS.get(module.split(".")[0], -1) > LAYERS[package]
    ]
    assert upward == []


@pytest.mark.parametrize("package", list(STANDALONE))
def test_standalone_packages_import_only_what_they_may(package: str) -> None:
    allowed = STANDALONE[package] | {package}
    ours = set(PACKAGE_DIRS)
    reaching = [
        f"{relative(path)}:{line} imports {module}"
        for path in python_files(package)
        for module, _, line in imports(path)
        if module.split(".")[0] in ours and module.split(".")[0] not in allowed
    ]
    assert reaching == []


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in python_files("liteembed", "liteembed_client", "testbed", *list(LAYERS)[1:]):
        edges = graph.setdefault(module_name(path), set())
        for module, names, _ in imports(path):
            if module_path(module) is None:
                continue
            # `from pkg import submodule` depends on the submodule, not on the package's facade.
            submodules = [f"{module}.{n}" for n in names if module_path(f"{module}.{n}")]
            edges.update(submodules or [module])
            if len(submodules) < len(names):
                edges.add(module)
    for name, edges in graph.items():
        edges.discard(name)
        # A package's own modules may be imported by its facade, which lists them.
        if name in PACKAGE_DIRS or module_path(name) and module_path(name).name == "__init__.py":
            edges -= {e for e in edges if e.startswith(f"{name}.")}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_only_the_two_queue_modules_import_the_queue_library() -> None:
    users = {
        relative(path)
        for path in python_files(*LAYERS)
        for module, _, _ in imports(path)
        if module.split(".")[0] == QUEUE_LIBRARY
    }
    assert users == QUEUE_MODULES


def test_routes_take_resources_only_as_dependencies() -> None:
    routes = python_files("service/api/routes")
    assert routes
    reaching = [
        f"{relative(path)}:{number} reads app.state"
        for path in routes
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "app.state" in line
    ]
    # Without the request object a route has no way to app.state at all.
    reaching += [
        f"{relative(path)}:{line} imports the request object"
        for path in routes
        for module, names, line in imports(path)
        if module.split(".")[0] in ("fastapi", "starlette") and "Request" in names
    ]
    assert reaching == []


def test_crud_functions_take_keyword_arguments_only() -> None:
    import inspect

    from service.crud import classes, leases

    functions = [
        f
        for module in (classes, leases)
        for name, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("_")
    ]
    assert functions
    positional = [
        f"{f.__name__}({p.name})"
        for f in functions
        for p in inspect.signature(f).parameters.values()
        if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert positional == []


def test_no_private_name_or_module_is_imported_from_outside() -> None:
    found = []
    for path in python_files(*PRIVACY_CHECKED):
        own_package = module_name(path).rpartition(".")[0]
        if path.name == "__init__.py":
            own_package = module_name(path)
        for module, names, line in imports(path):
            parts = module.split(".")
            for i, part in enumerate(parts):
                # `pkg._mod` may be imported by the modules of `pkg` (a facade over it) only.
                private = part.startswith("_") and not part.startswith("__")
                if private and own_package != ".".join(parts[:i]):
                    found.append(f"{relative(path)}:{line} imports {module}")
            if module == own_package:
                continue  # a package's modules may use its private modules and names
            found += [
                f"{relative(path)}:{line} imports {name} from {module}"
                for name in names
                if name.startswith("_") and not name.startswith("__")
            ]
    assert found == []
