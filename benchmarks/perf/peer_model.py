"""A Hugging Face-format CLIP directory with random weights, for the peer server to load.

Run by the peer environment's interpreter (`.venv-peer/bin/python`, which has transformers;
the project's environment does not), from `benchmarks/perf/peer.py`:

    .venv-peer/bin/python benchmarks/perf/peer_model.py --config CONFIG.json --bpe BPE.gz --out DIR

CONFIG.json is `peer.matched_clip_config`'s answer (the shapes of the model measured on our
side). The tokenizer's files are rebuilt from open_clip's BPE merges the way open_clip's
`SimpleTokenizer` builds its table (49,408 tokens, the same ids as OpenAI CLIP's), so nothing is
fetched from a hub. Only what the image path reads matters for speed; the text side is there
because the peer loads a whole CLIP.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

# How many merges open_clip's SimpleTokenizer keeps from its BPE file.
_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's / CLIP's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters), strict=True))


def tokenizer_files(bpe_gz: Path, out: Path) -> None:
    """vocab.json and merges.txt as Hugging Face's CLIPTokenizer reads them."""
    with gzip.open(bpe_gz) as packed:
        lines = packed.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    merge_lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (out / "merges.txt").write_text("\n".join(merge_lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bpe", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    matched = json.loads(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    CLIPModel(CLIPConfig(**matched["clip"])).save_pretrained(args.out)
    tokenizer_files(args.bpe, args.out)
    side = matched["image_size"]
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=CLIPTokenizer(str(args.out / "vocab.json"), str(args.out / "merges.txt")),
    )
    processor.save_pretrained(args.out)
    print(f"peer model written: {args.out}")


if __name__ == "__main__":
    main()
