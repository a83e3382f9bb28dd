"""The rules the layout depends on, checked on the source.

- Layers: liteembed <- service <- workers <- cli; a package imports only from its own layer or
  the ones below (the engine stands alone, the service never reaches for a worker).
- The queue library is known to two modules only, so changing the backend changes those two.
- Routes take every resource as a dependency (`service/api/deps.py`), never from `app.state`;
  the writes in `service/crud.py` take keyword arguments only.
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


def python_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


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
    reaching = [
        f"{relative(path)}:{number}"
        for path in python_files("service/api/routes")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "app.state" in line or "Request" in line
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
