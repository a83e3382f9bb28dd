"""One registry of few-shot methods, by name.

A method registers a factory under a unique name (`@register_method("name", ...)`); callers list
the names (`list_methods()`) and build a method with `create_method(name, **options)`. The engine
registers the methods that turn one class's images into a class feature (`liteembed.baselines`,
imported by the `liteembed` facade before any registry name is handed out, so the engine's
methods are always listed first); a caller may register its own (the benchmark adds classifiers
that need shots of every class).
Every factory must work with no options, so that anything registered can be built and checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Factory = TypeVar("Factory", bound=Callable[..., Any])


@dataclass(frozen=True)
class RegisteredMethod:
    name: str
    factory: Callable[..., Any]
    plug_and_play: bool  # True: yields a text feature usable wherever CLIP's own is
    description: str = ""


_METHODS: dict[str, RegisteredMethod] = {}


def register_method(
    name: str, *, plug_and_play: bool, description: str = ""
) -> Callable[[Factory], Factory]:
    """Decorator: register `factory` under `name` (names are unique; registering again under
    the same name from the same factory is a no-op, e.g. when a module is reloaded)."""

    def decorate(factory: Factory) -> Factory:
        existing = _METHODS.get(name)
        if existing is not None and existing.factory.__qualname__ != factory.__qualname__:
            raise ValueError(f"a method named {name!r} is already registered")
        _METHODS[name] = RegisteredMethod(name, factory, plug_and_play, description)
        return factory

    return decorate


def list_methods() -> list[str]:
    """Registered method names, in registration order (the engine's first)."""
    return list(_METHODS)


def method_entry(name: str) -> RegisteredMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(_METHODS)}") from None


def create_method(name: str, **options: Any) -> Any:
    """Build the method registered as `name` with the given options."""
    return method_entry(name).factory(**options)


__all__ = [
    "RegisteredMethod",
    "create_method",
    "list_methods",
    "method_entry",
    "register_method",
]
