"""A synthetic captioned image world with real category structure, and its mini CLIP.

Pure torch/numpy/PIL (plus open_clip for pretraining); nothing here imports service code.

API::

    from testbed import World, default_world

    world = default_world()              # the world liteembed-mini was pretrained on
    world.classes                        # list[WorldClass]: index, name, category, split, rarity
    world.split("test_heldout")          # "base", "val_heldout", "test_heldout", "val_lookalike"
    world.categories                     # 9 category words ("polygon", "star", ...)
    imgs = world.render(["coin", "hexagon"], n=4, seed=0)    # 8 PIL 64x64 RGB, class-major
    x = world.render_tensor([0, 1], n=4, seed=0)             # float [8,3,64,64] in [0,1]
    x_in = normalize(x)                  # model input (open_clip OPENAI mean/std)
    world.caption_words()                # the model's vocabulary (words of its captions)
    images, captions, cls = world.sample_batch(256, seed=0)  # a pretraining batch

Rendering is deterministic for a given (classes, n, seed) and takes roughly 0.1-0.3 s per
256 images on one CPU core.

World design (details in ``world.py``): 9 categories x 10 classes (polygon, star, flower, cross,
arrow, ring, pattern, cluster, blob); in each, 8 base classes and 2 held-out ones. Held-out
classes: 12 for test and 6 for validation; ``rarity == 0`` ones are never rendered or named in
pretraining, ``rarity == RARE_RATE`` (0.1 % of samples each) ones are. Many held-out classes have
visually close base neighbours (7-gon vs 6/8-gon, 7-point vs 6/8-point star, 7 petals, 7 dots,
4 bars vs 3/5, 4 chevrons vs 3, ...). Captions put the category word in the class-name slot
20 % of the time ("a photo of a polygon.") and use colour, size, texture, position, background
and clutter words (``sample_batch(..., colour_caption_p=p)`` keeps the colour word in only a
fraction p of them). Pretraining: ``python -m testbed.pretrain --out PATH --steps N``;
``python -m testbed.evaluate CKPT`` evaluates a checkpoint like the report does.
"""

from testbed.world import (
    EVAL_TEMPLATE,
    RARE_RATE,
    World,
    WorldClass,
    default_world,
    normalize,
)

__all__ = ["EVAL_TEMPLATE", "RARE_RATE", "World", "WorldClass", "default_world", "normalize"]
