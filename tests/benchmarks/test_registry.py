"""Every registered method (the engine's and the benchmark's) is built with no options and run
on the tiny random model: a new registration is checked without writing a test for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import benchmarks.methods  # noqa: F401 - registers the benchmark's joint methods
from benchmarks.data import Task, support_from_lists
from benchmarks.methods import Context, MethodSpec, evaluate
from benchmarks.rare_classes import build_methods, load_chosen
from liteembed import (
    ClipBackend,
    Vocabulary,
    create_method,
    list_methods,
    load_backend,
    load_vocabulary,
    method_entry,
    register_method,
)

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 40)}


@pytest.fixture(scope="module")
def backend() -> ClipBackend:
    return load_backend("liteembed-tiny", "random", device="cpu", seed=0)


@pytest.fixture(scope="module")
def vocabulary(backend: ClipBackend, tmp_path_factory: pytest.TempPathFactory) -> Vocabulary:
    return load_vocabulary(backend, tmp_path_factory.mktemp("vocab"), max_words=200)


def _images(colour: tuple[int, int, int], count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(
            np.clip(np.array(colour) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def ctx(backend: ClipBackend) -> Context:
    names = list(COLOURS)
    test_images = [img for i, n in enumerate(names) for img in _images(COLOURS[n], 3, 100 + i)]
    test_features = backend.encode_images(test_images).float().cpu()

    def make_draw(index: int):  # noqa: ANN202 - the Task's draw factory
        return support_from_lists(
            backend, {n: _images(COLOURS[n], 2, 10 * index + i) for i, n in enumerate(names)}
        )

    task = Task(
        name="colours",
        base=names[:2],
        heldout=names[2:],
        test_features=torch.nn.functional.normalize(test_features, dim=-1),
        test_labels=torch.arange(3).repeat_interleave(3),
        make_draw=make_draw,
        max_shots=2,
    )
    return Context.build(backend, task)


def test_the_registry_holds_the_engine_and_benchmark_methods() -> None:
    names = list_methods()
    assert names[:4] == ["zero-shot", "image-prototype", "textual-inversion", "liteembed"]
    assert {"tip-adapter", "tip-adapter (held-out cache)", "linear-probe"} <= set(names)
    assert method_entry("liteembed").plug_and_play
    assert not method_entry("linear-probe").plug_and_play
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        create_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method("liteembed", plug_and_play=True)(lambda: None)


def test_the_benchmark_has_a_row_for_every_registered_method() -> None:
    rows = build_methods(load_chosen(None))
    assert {row.method for row in rows} == set(list_methods())


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_runs_on_the_tiny_model(
    name: str, backend: ClipBackend, vocabulary: Vocabulary, ctx: Context
) -> None:
    config = None
    if name in ("liteembed", "textual-inversion"):
        config = create_method(name).config.with_(steps=2, step_rule="fixed")  # shorter
    spec = MethodSpec(name, name, config)
    draws = [(0, ctx.task.draw(0)), (1, ctx.task.draw(1))]
    outcomes = evaluate(spec, ctx, backend, vocabulary, draws, 2)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert 0.0 <= outcome.hm <= 1.0 and 0.0 <= outcome.heldout <= 1.0
        assert set(outcome.per_class) == {"green"}
        # Only a text feature can rank the gallery.
        assert (outcome.map is not None) == method_entry(name).plug_and_play
