"""Validation that sees base stealing: base classes learned as if they were new.

The validation held-out classes have no base look-alikes, so a setting that lets a new word take
its neighbours' images looks as good there as one that does not. Here base classes that do have a
base look-alike are removed from the base set in turn (a fold at a time), learned from K images
under a fresh name (their own word hidden from the negatives and from the reference bank), and
scored jointly with the remaining base classes: a word that takes its neighbour's images costs
base accuracy, as on the test classes.

Which base classes: each base class's nearest base class by the mean of its reference-bank image
features; greedily, most similar pair first, a class whose neighbour is not a look-alike of a test
class (those are the test classes' victims: kept out of tuning) and is not itself chosen, so the
neighbour stays in the base set. The chosen classes are dealt to the folds in turn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.data import WORLD_LOOKALIKES, Task, encode, world_draws
from liteembed import ClipBackend, ReferenceBank

# Disjoint from every other gallery and support seed of the benchmark (benchmarks.data).
GALLERY_SEED = 8_501
SUPPORT_SEED = 25_000
FOLDS = 2
PER_FOLD = 6


def pseudo_new_classes(bank: ReferenceBank, count: int) -> list[tuple[str, str]]:
    """(class, its nearest base class) for the `count` chosen classes, in the order chosen."""
    victims = {b for bases in WORLD_LOOKALIKES.values() for b in bases}
    centres = torch.stack([F.normalize(bank.images_of(w).mean(dim=0), dim=-1) for w in bank.words])
    similarity = centres @ centres.T
    similarity.fill_diagonal_(-2.0)
    nearest = similarity.argmax(dim=1)
    order = torch.argsort(similarity.max(dim=1).values, descending=True).tolist()
    chosen: list[tuple[str, str]] = []
    blocked: set[str] = set()
    for index in order:
        word, neighbour = bank.words[index], bank.words[int(nearest[index])]
        if word in victims or word in blocked or neighbour in {c for c, _ in chosen}:
            continue
        chosen.append((word, neighbour))
        blocked.add(neighbour)
        if len(chosen) == count:
            break
    return chosen


def base_as_new_task(
    backend: ClipBackend,
    bank: ReferenceBank,
    fold: int,
    *,
    folds: int = FOLDS,
    per_fold: int = PER_FOLD,
    test_per_class: int = 50,
    max_shots: int = 16,
) -> Task:
    """Fold `fold` of `folds`: its pseudo-new classes held out, every other base class base."""
    from testbed import default_world

    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}")
    world = default_world()
    chosen = pseudo_new_classes(bank, folds * per_fold)
    heldout = [name for i, (name, _) in enumerate(chosen) if i % folds == fold]
    neighbours = {name: (n,) for i, (name, n) in enumerate(chosen) if i % folds == fold}
    base = [c.name for c in world.split("base") if c.name not in heldout]
    classes = base + heldout
    images = world.render(classes, n=test_per_class, seed=GALLERY_SEED)
    labels = torch.arange(len(classes)).repeat_interleave(test_per_class)

    return Task(
        name=f"base-as-new-{fold}",
        base=base,
        heldout=heldout,
        test_features=encode(backend, images),
        test_labels=labels,
        make_draw=world_draws(backend, world, classes, max_shots, SUPPORT_SEED + 97 * fold),
        max_shots=max_shots,
        hints={name: (world[name].category,) for name in heldout},
        lookalikes=neighbours,
        aliases={name: f"newclass{i}" for i, name in enumerate(heldout)},
        info={
            "source": "benchmarks.base_as_new",
            "fold": fold,
            "folds": folds,
            "gallery_seed": GALLERY_SEED,
            "support_seed": SUPPORT_SEED + 97 * fold,
            "neighbours": {name: n for name, (n,) in neighbours.items()},
        },
    )


def without_words(bank: ReferenceBank, words: list[str]) -> ReferenceBank:
    """The bank less the images of `words` (the classes a fold learns as new)."""
    keep_words = [w for w in bank.words if w not in set(words)]
    old_index = {w: i for i, w in enumerate(bank.words)}
    mask = torch.zeros(len(bank.labels), dtype=torch.bool)
    relabel = torch.full((len(bank.words),), -1, dtype=torch.long)
    for new, word in enumerate(keep_words):
        relabel[old_index[word]] = new
        mask |= bank.labels == old_index[word]
    return ReferenceBank(
        model_id=bank.model_id,
        words=keep_words,
        features=bank.features[mask],
        labels=relabel[bank.labels[mask]],
        word_threshold=bank.word_threshold,
    )


__all__ = ["base_as_new_task", "pseudo_new_classes", "without_words"]
