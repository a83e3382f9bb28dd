"""The harness end to end on tiny settings: liteembed-tiny with random weights (the numbers mean
nothing; the plumbing, the outputs and the image-folder path are what is checked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from benchmarks import base_as_new, rare_classes, rare_classes_report
from benchmarks.data import VAL_GALLERY_SEED, VAL_SUPPORT_SEED, folder_task, world_task
from benchmarks.methods import Context, MethodSpec, evaluate, score_logits
from liteembed import ClipBackend, OptimizationConfig, Vocabulary, load_backend, load_vocabulary

COLOURS = {
    "green_apple": (20, 140, 40),
    "banana": (240, 220, 30),
    "plum": (220, 30, 220),
    "blueberry": (20, 30, 160),
}


@pytest.fixture(scope="module")
def backend() -> ClipBackend:
    return load_backend("liteembed-tiny", "random", device="cpu", seed=0)


@pytest.fixture(scope="module")
def vocabulary(backend: ClipBackend, tmp_path_factory: pytest.TempPathFactory) -> Vocabulary:
    return load_vocabulary(backend, tmp_path_factory.mktemp("vocab"), max_words=200)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fruit")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(7):
            pixels = np.clip(np.array(colour) + rng.normal(0, 12, (40, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("not a class")  # stray files are ignored
    return root


def test_folder_task_splits_support_and_test(backend: ClipBackend, image_folder: Path) -> None:
    task = folder_task(backend, image_folder, ["plum"], test_per_class=3, max_shots=2)
    assert task.heldout == ["plum"]
    assert task.base == ["banana", "blueberry", "green apple"]  # folder name -> class name
    assert task.max_shots == 2
    assert task.test_features.shape == (4 * 3, backend.embed_dim)
    assert int((~task.base_mask).sum()) == 3
    first, again, other = task.draw(0), task.draw(0), task.draw(1)
    assert first is again  # built once, shared by every method and K
    assert len(first.shots("plum", 2)) == 2
    assert set(first.images) == {"banana", "blueberry", "green apple", "plum"}
    assert other.features["plum"].shape == (2, backend.embed_dim)
    with pytest.raises(ValueError, match="not found"):
        folder_task(backend, image_folder, ["durian"])


def test_cli_on_an_image_folder_writes_json_markdown_and_plot(
    image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = rare_classes.main(
        [
            "--model", "liteembed-tiny", "--pretrained", "random", "--device", "cpu",
            "--folder", str(image_folder), "--heldout", "plum", "blueberry",
            "--shots", "1", "2", "4", "--seeds", "2", "--test-per-class", "3",
            "--max-words", "200", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out),
            "--methods", "zero-shot", "image-prototype", "tip-adapter", "linear-probe",
            "textual-inversion", "liteembed (full)",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "rare_classes.json").read_text())
    assert report["shots"] == [1, 2]  # 7 images per class: a support pool of 3 at most
    assert report["skipped_shots"] == [4]
    assert report["task"]["heldout"] == ["blueberry", "plum"]  # folder order
    summary = report["summary"]
    assert set(summary) == {
        "zero-shot", "image-prototype", "tip-adapter", "linear-probe", "textual-inversion",
        "liteembed (full)",
    }  # fmt: skip
    for method, per_k in summary.items():
        for k in ("1", "2"):
            row = per_k[k]
            assert 0.0 <= row["hm"][0] <= 1.0
            plug = method in ("zero-shot", "textual-inversion", "liteembed (full)")
            assert (row["map"] is not None) == plug  # no text feature, no retrieval
            if method != "textual-inversion":
                assert "delta_hm_vs_ti" in row
    assert len(report["results"]["textual-inversion"]["2"]) == 2  # one outcome per draw
    markdown = (out / "rare_classes.md").read_text()
    assert "## K = 1" in markdown and "**HM**" in markdown
    assert "n/a (no text feature)" in markdown
    assert (out / "rare_classes.png").stat().st_size > 1000


def test_synthetic_world_task_and_batched_learning(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    task = world_task(backend, "val_heldout", test_per_class=2, max_shots=2)
    assert len(task.base) == 72 and len(task.heldout) == 6
    assert all(task.hints[name] for name in task.heldout)  # category words as coarse hints
    ctx = Context.build(backend, task)
    config = OptimizationConfig(steps=3, step_rule="fixed", early_stopping=False)
    draws = [(0, task.draw(0)), (1, task.draw(1))]
    outcomes = evaluate(
        MethodSpec("ti", "liteembed", config, use_hints=True), ctx, backend, vocabulary, draws, 2
    )
    assert len(outcomes) == 2
    assert all(o.map is not None and set(o.per_class) == set(task.heldout) for o in outcomes)
    assert outcomes[0].extra["steps_run_mean"] == 3
    spec = MethodSpec("tip", "tip-adapter (held-out cache)")
    tip = evaluate(spec, ctx, backend, vocabulary, draws[:1], 2)[0]
    assert tip.map is None and tip.base_before == ctx.base_before


def test_lookalike_confusion_is_scored_and_reported(backend: ClipBackend) -> None:
    task = world_task(backend, "test_heldout", test_per_class=2, max_shots=1)
    assert task.lookalikes and set(task.lookalikes) <= set(task.heldout)
    assert all(set(bases) <= set(task.base) for bases in task.lookalikes.values())
    ctx = Context.build(backend, task)
    # Every held-out image predicted as its class's first look-alike (itself if it has none).
    index = {name: i for i, name in enumerate(task.classes)}
    predicted = task.test_labels.clone()
    for name, bases in task.lookalikes.items():
        predicted[task.test_labels == index[name]] = index[bases[0]]
    confused = score_logits(ctx, F.one_hot(predicted, len(task.classes)).float(), None, 0.0)
    assert confused.lookalike == {name: 1.0 for name in task.lookalikes}
    right = F.one_hot(task.test_labels, len(task.classes)).float()
    correct = score_logits(ctx, right, None, 0.0)
    assert set(correct.lookalike.values()) == {0.0} and correct.base_taken == {}
    # Base images predicted as a held-out class are counted per base class.
    first_base, first_new = index[task.base[0]], len(task.base)
    stolen = task.test_labels.clone()
    stolen[(task.test_labels == first_base).nonzero()[0]] = first_new
    taken = score_logits(ctx, F.one_hot(stolen, len(task.classes)).float(), None, 0.0)
    assert taken.base_taken == {task.base[0]: 0.5}  # one of its two test images
    assert taken.as_dict()["base_taken"] == taken.base_taken
    draws = {"results": {"liteembed": {"4": [taken.as_dict(), correct.as_dict()]}}}
    summary = rare_classes_report.summarise(draws)
    assert summary["liteembed"]["4"]["base_taken"] == {task.base[0]: 0.25}  # mean of 0.5 and 0
    lines = rare_classes_report.base_taken_lines(
        {"task": {"lookalikes": {"x": (task.base[0],)}}, "summary": summary}, 4
    )
    assert lines == [
        f"- liteembed: {task.base[0]} 25 %; 100 % of the loss on look-alike base classes"
    ]
    report = {
        "task": {"lookalikes": task.lookalikes},
        "results": {
            "textual-inversion": {"4": [confused.as_dict()]},
            "liteembed": {"4": [correct.as_dict()]},
        },
    }
    report["summary"] = rare_classes_report.summarise(report)
    row = report["summary"]["liteembed"]["4"]
    assert row["delta_lookalike_vs_ti"]["mean"] == pytest.approx(-1.0)
    assert row["delta_lookalike_vs_ti"]["lost"] == 1  # one draw, with fewer confusions
    table = rare_classes_report.lookalike_table(report, 4)
    assert table is not None and "| liteembed | 0.0 ± 0.0 | -100.0 ± " in table


def test_lookalike_validation_split_is_built_like_test_but_apart_from_it(
    backend: ClipBackend,
) -> None:
    """The look-alike validation classes each have base look-alikes (as the test classes do),
    none of them a test class's look-alike, and their galleries and supports are their own."""
    task = world_task(backend, "val_lookalike", test_per_class=2, max_shots=1)
    test = world_task(backend, "test_heldout", test_per_class=2, max_shots=1)
    assert len(task.heldout) == 8 and set(task.lookalikes) == set(task.heldout)
    assert all(set(bases) <= set(task.base) for bases in task.lookalikes.values())
    taken_by_test = {b for bases in test.lookalikes.values() for b in bases}
    assert not taken_by_test & {b for bases in task.lookalikes.values() for b in bases}
    assert not set(task.heldout) & set(test.heldout)
    galleries = {test.info["gallery_seed"], VAL_GALLERY_SEED, base_as_new.GALLERY_SEED}
    supports = {test.info["support_seed"], VAL_SUPPORT_SEED, base_as_new.SUPPORT_SEED}
    assert task.info["gallery_seed"] not in galleries
    assert task.info["support_seed"] not in supports
    with pytest.raises(ValueError, match="split must be one of"):
        world_task(backend, "train", test_per_class=2, max_shots=1)
