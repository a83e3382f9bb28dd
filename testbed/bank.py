"""Build the reference bank shipped beside a mini CLIP checkpoint (`liteembed.bank`): images of
every base class of the world, labelled by the class's word, rendered from seeds no benchmark
gallery or support draw uses.

    python -m testbed.bank --model liteembed-mini-v2

writes `engine/liteembed/checkpoints/liteembed-mini-v2.bank.pt`. Held-out classes are never in
the bank: they are the classes a user would register.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from liteembed import build_bank, load_backend, load_vocabulary
from liteembed.bank import shipped_bank_path
from testbed.world import default_world

# Far from the benchmark's gallery (7_001, 8_001) and support (10_000+, 20_000+) seeds.
BANK_SEED = 90_000
PER_WORD = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="liteembed-mini-v2")
    parser.add_argument("--per-word", type=int, default=PER_WORD)
    parser.add_argument("--seed", type=int, default=BANK_SEED)
    parser.add_argument(
        "--beta", type=float, default=0.5, help="threshold rule (liteembed.threshold)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    backend = load_backend(args.model, "default", device="cpu")
    with tempfile.TemporaryDirectory() as cache:
        vocabulary = load_vocabulary(backend, Path(cache))
    world = default_world()
    base = [c.name for c in world.split("base") if vocabulary.index(c.name) is not None]
    images = world.render(base, n=args.per_word, seed=args.seed)
    by_word = {
        name: images[i * args.per_word : (i + 1) * args.per_word] for i, name in enumerate(base)
    }
    bank = build_bank(backend, vocabulary, by_word, per_word=args.per_word, beta=args.beta)
    out = args.out or shipped_bank_path(args.model)
    bank.save(out)
    print(f"{out}: {len(bank.words)} words, {len(bank.features)} images, word threshold "
          f"{bank.word_threshold:.4f} ({bank.model_id})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
