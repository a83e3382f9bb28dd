"""Evaluate a mini CLIP checkpoint with the pretraining report's evaluation; prints JSON.

    python -m testbed.evaluate --model liteembed-mini \\
        liteembed/checkpoints/liteembed-mini.pt

Same images, prompts and support draws as the ``zero_shot`` block of a ``.report.json``, so
checkpoints can be compared side by side. ``--into-report R.report.json`` records the result in
that report as its reference (``reference_on_same_evaluation``) and rewrites its ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import open_clip
import torch

from testbed.pretrain import build_model, evaluate, markdown_report
from testbed.world import default_world


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint")
    ap.add_argument("--model", default="liteembed-mini", help="model config name")
    ap.add_argument("--per-class", type=int, default=25, help="query images per class")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--into-report", default="", help="record as this report's reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model(0, args.model)
    blob = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    )
    res = evaluate(
        model, default_world(), open_clip.get_tokenizer(args.model), per_class=args.per_class
    )
    summary = {k: v for k, v in res.items() if not k.endswith("per_class")}
    print(json.dumps(summary, indent=1))
    if args.into_report:
        path = Path(args.into_report)
        report = json.loads(path.read_text())
        report["reference_on_same_evaluation"] = {
            "checkpoint": Path(args.checkpoint).name,
            "command": "python -m testbed.evaluate "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "zero_shot": summary,
        }
        path.write_text(json.dumps(report, indent=1))
        path.with_suffix(".md").write_text(markdown_report(report))


if __name__ == "__main__":
    main()
