"""The rules the layout depends on, checked on the source.

- Layers: liteembed <- service <- workers <- cli; a package imports only from its own layer or
  the ones below (the engine stands alone, the service never reaches for a worker).
- The queue library is known to two modules only, so changing the backend changes those two.
- Routes take every resource as a dependency (`service/api/deps.py`), never from `app.state`;
  the writes in `service/crud.py` take keyword arguments only.
- Private names (`_x`) and private modules (`pkg._mod`) are not imported from outside.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"liteembed": 0, "service": 1, "workers": 2, "cli": 3}
QUEUE_LIBRARY = "dramatiq"
QUEUE_MODULES = {"service/queue.py", "workers/_broker.py"}
# Packages whose modules must not import private names from elsewhere.
PRIVACY_CHECKED = ("liteembed", "service", "workers", "cli", "benchmarks", "tests")


def python_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
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


@pytest.mark.parametrize("package", list(LAYERS))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    upward = [
        f"{relative(path)}:{line} imports {module}"
        for path in python_files(package)
        for module, _, line in imports(path)
        if LAYERS.get(module.split(".")[0], -1) > LAYERS[package]
    ]
    assert upward == []


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

    from service import crud

    functions = [
        f
        for name, f in vars(crud).items()
        if inspect.isfunction(f) and f.__module__ == crud.__name__ and not name.startswith("_")
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
