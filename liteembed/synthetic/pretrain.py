"""Pretrain the ``liteembed-mini`` CLIP on the synthetic world, on the CPU, within a time budget.

    python -m liteembed.synthetic.pretrain --out liteembed/checkpoints/liteembed-mini.pt \\
        --minutes 35 --seed 0

Recipe (from the feasibility experiment on this machine, docs/reference/mini-clip-feasibility.md,
adapted to a CPU without AVX512-BF16 that other jobs share): open_clip ModifiedResNet [1,1,1,1]
width 16 with attention pool at 64x64, text 4 layers width 128, context 24, embed 128; AdamW
lr 1e-3 betas (0.9, 0.98), weight decay 0.1 on matrices only; batch 128 of fresh data every
step; fp32 (bf16 autocast, --bf16, only pays on AVX512-BF16 CPUs); token table re-initialised
with std 0.002 (untrained rows stay small); soft targets for duplicate captions; 3 % warm-up
then cosine decay over the wall-clock budget (or over ``--steps`` when given, which makes a run
exactly reproducible); 1 torch thread.

The shipped ``liteembed/checkpoints/liteembed-mini.pt`` is two cycles on the shared 2-core CPU
(nice 10): ``--minutes 36 --seed 0`` (1354 steps), then ``--init <that checkpoint> --minutes 17
--lr 5e-4 --seed 0`` (477 steps); 53 min and 1831 steps of batch 128 in all. Step counts under a
time budget depend on machine load; ``--steps`` gives an exactly repeatable run.

Output: ``{"state_dict": fp16 state dict, "vocabulary": caption words, "meta": {...}}`` and a
``<stem>.report.json`` with the recipe, steps, wall time, zero-shot accuracies and the
tokenization of held-out names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from liteembed.synthetic.world import EVAL_TEMPLATE, World, default_world, normalize

MODEL_NAME = "liteembed-mini"
CONFIG_PATH = Path(__file__).resolve().parents[1] / "model_configs" / f"{MODEL_NAME}.json"


def register_config() -> None:
    # open_clip registers a config under the JSON file's stem; the JSON must be flat.
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def build_model(seed: int) -> torch.nn.Module:
    register_config()
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL_NAME)
    # Small init for the 49408-row token table: rows no caption uses stay ~10x smaller than
    # trained ones, which keeps them out of the way of the engine's vocabulary statistics.
    torch.nn.init.normal_(model.token_embedding.weight, std=0.002)
    return model


def param_groups(model: torch.nn.Module, wd: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # weight decay on weight matrices only: not on embeddings, biases, norms, logit scale
        if p.ndim >= 2 and "embedding" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(progress: float, warmup: float = 0.03) -> float:
    if progress < warmup:
        return progress / warmup
    p = min(1.0, (progress - warmup) / (1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * p))


class TokenCache:
    """Tokenizes each distinct caption once (templates repeat a lot)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, row in zip(missing, self.tok(missing), strict=True):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in texts])


def clip_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: list[str]
) -> torch.Tensor:
    logits = scale * img @ txt.t()
    # identical captions in a batch are positives of each other (soft targets)
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions])
    same = (cid[:, None] == cid[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean()
    )


@torch.no_grad()
def text_features(model: torch.nn.Module, tokenizer: Any, names: list[str]) -> torch.Tensor:
    toks = tokenizer([EVAL_TEMPLATE.format(n) for n in names])
    return F.normalize(model.encode_text(toks).float(), dim=-1)


@torch.no_grad()
def image_features(model: torch.nn.Module, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    out = [
        model.encode_image(normalize(images[i : i + chunk])).float()
        for i in range(0, len(images), chunk)
    ]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, world: World, tokenizer: Any, per_class: int = 25, seed: int = 12345
) -> dict[str, Any]:
    """Zero-shot accuracies with the prompt "a photo of a {name}." (fp32, eval mode)."""
    was_training = model.training
    model.eval()
    base = [c.name for c in world.base_classes]
    test = [c.name for c in world.split("test_heldout")]
    val = [c.name for c in world.split("val_heldout")]
    feats = {}
    for group, names in (("base", base), ("test", test), ("val", val)):
        feats[group] = image_features(model, world.render_tensor(names, per_class, seed))
    labels = {
        g: torch.arange(len(n)).repeat_interleave(per_class)
        for g, n in (("base", base), ("test", test), ("val", val))
    }
    t_base = text_features(model, tokenizer, base)
    t_test = text_features(model, tokenizer, test)
    t_val = text_features(model, tokenizer, val)
    t_cat = text_features(model, tokenizer, world.categories)

    def acc(f: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> float:
        return float(((f @ t.t()).argmax(1) == y).float().mean())

    res: dict[str, Any] = {"images_per_class": per_class, "prompt": EVAL_TEMPLATE}
    res["base_zero_shot"] = acc(feats["base"], t_base, labels["base"])
    res["base_chance"] = 1 / len(base)
    joint_t = torch.cat([t_base, t_test])
    res["test_heldout_joint"] = acc(feats["test"], joint_t, labels["test"] + len(base))
    res["base_joint_with_test"] = acc(feats["base"], joint_t, labels["base"])
    res["test_heldout_only"] = acc(feats["test"], t_test, labels["test"])
    res["test_heldout_only_chance"] = 1 / len(test)
    joint_v = torch.cat([t_base, t_val])
    res["val_heldout_joint"] = acc(feats["val"], joint_v, labels["val"] + len(base))
    res["val_heldout_only"] = acc(feats["val"], t_val, labels["val"])
    cat_of = torch.tensor([world.categories.index(world[n].category) for n in base])
    res["base_category_zero_shot"] = acc(feats["base"], t_cat, cat_of[labels["base"]])
    cat_test = torch.tensor([world.categories.index(world[n].category) for n in test])
    res["test_heldout_category_zero_shot"] = acc(feats["test"], t_cat, cat_test[labels["test"]])
    pred = (feats["base"] @ t_base.t()).argmax(1)
    res["base_per_class"] = {
        n: float((pred[labels["base"] == i] == i).float().mean()) for i, n in enumerate(base)
    }
    pj = (feats["test"] @ joint_t.t()).argmax(1)
    all_names = base + test
    res["test_heldout_joint_per_class"] = {}
    for i, n in enumerate(test):
        p = pj[labels["test"] == i]
        top = torch.bincount(p, minlength=len(all_names)).topk(2)
        res["test_heldout_joint_per_class"][n] = {
            "acc": float((p == i + len(base)).float().mean()),
            "top_predictions": [all_names[int(j)] for j in top.indices],
        }
    model.train(was_training)
    return res


def tokenization_report(world: World) -> dict[str, Any]:
    """How each held-out name tokenizes, and which of its word pieces captions also use."""
    register_config()
    tok = open_clip.get_tokenizer(MODEL_NAME)
    enc, dec = tok.encode, tok.decoder
    caption_tokens: set[int] = set()
    never_seen = {c.name for c in world.never_classes}
    for w in world.caption_words():
        caption_tokens.update(enc(w))
    out = {}
    for c in world.classes:
        if c.split == "base":
            continue
        ids = enc(c.name)
        # rare names are in the captions by design; only a piece used by another word leaks
        other_tokens: set[int] = set()
        for w in world.caption_words():
            if w != c.name:
                other_tokens.update(enc(w))
        shared = [dec[i] for i in ids if i in other_tokens]
        out[c.name] = {
            "split": c.split,
            "rarity": c.rarity,
            "pieces": [dec[i] for i in ids],
            "single_token": len(ids) == 1,
            "pieces_shared_with_other_caption_words": shared,
            "named_in_captions": c.name not in never_seen,
        }
    return out


def markdown_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of a ``.report.json``."""
    zs = report["zero_shot"]
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    lines = [
        f"# {report['recipe']['model']}: pretraining report",
        "",
        f"- Steps: {report['steps']} x batch {report['recipe']['batch']} "
        f"({report['images_seen']} images), {report['train_seconds'] / 60:.1f} min of training, "
        f"seed {report['recipe']['seed']}, final loss (EMA) {report['final_loss_ema']:.3f}; "
        f"over all cycles: {report.get('total_steps', report['steps'])} steps, "
        f"{report.get('total_train_seconds', report['train_seconds']) / 60:.1f} min.",
        f"- Checkpoint: `{report['checkpoint']}`, {report['checkpoint_bytes'] / 2**20:.1f} MiB "
        f"(fp16 state dict + vocabulary of {report['vocabulary_size']} words).",
        f"- Zero-shot, prompt `{zs['prompt']}`, {zs['images_per_class']} images per class:",
        f"  - base classes ({len(zs['base_per_class'])}-way): **{pct(zs['base_zero_shot'])}** "
        f"(chance {pct(zs['base_chance'])});",
        f"  - category words on base images (9-way): {pct(zs['base_category_zero_shot'])};",
        f"  - test held-out, joint with base: **{pct(zs['test_heldout_joint'])}**; "
        f"base in that joint classifier: {pct(zs['base_joint_with_test'])};",
        f"  - test held-out among themselves: {pct(zs['test_heldout_only'])} "
        f"(chance {pct(zs['test_heldout_only_chance'])});",
        f"  - validation held-out, joint: {pct(zs['val_heldout_joint'])}; among themselves: "
        f"{pct(zs['val_heldout_only'])};",
        f"  - category words on test held-out images: "
        f"{pct(zs['test_heldout_category_zero_shot'])}.",
        "",
        "| Test held-out class | Rarity | Joint zero-shot | Most frequent predictions |",
        "|---|---|---|---|",
    ]
    tok = report["heldout_tokenization"]
    for name, r in zs["test_heldout_joint_per_class"].items():
        rar = "never seen" if tok[name]["rarity"] == 0 else f"rare ({tok[name]['rarity']:.1%})"
        lines.append(f"| {name} | {rar} | {pct(r['acc'])} | {', '.join(r['top_predictions'])} |")
    worst = sorted(zs["base_per_class"].items(), key=lambda kv: kv[1])[:10]
    lines += [
        "",
        "Weakest base classes: " + ", ".join(f"{n} {pct(a)}" for n, a in worst) + ".",
        "",
        "Held-out names and their BPE pieces (a piece shared with another caption word would leak",
        "meaning into the zero-shot baseline):",
        "",
    ]
    for name, r in tok.items():
        shared = ", ".join(r["pieces_shared_with_other_caption_words"]) or "none"
        lines.append(f"- {name} ({r['split']}): {' + '.join(r['pieces'])}; shared: {shared}")
    return "\n".join(lines) + "\n"


def save_checkpoint(model: torch.nn.Module, path: Path, world: World, meta: dict[str, Any]) -> None:
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    # meta goes through JSON so it holds plain types only (torch.__version__ is a TorchVersion
    # object, which torch.load(weights_only=True) refuses to unpickle)
    blob = {
        "state_dict": sd,
        "vocabulary": world.caption_words(),
        "meta": json.loads(json.dumps(meta)),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written checkpoint


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    world = default_world()
    model = build_model(args.seed)
    start_step = 0
    init_meta: dict[str, Any] | None = None
    if args.init:
        # continue from an earlier run (a second cosine cycle); its data stream is continued
        # rather than replayed by offsetting the batch seeds by its step count
        blob = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
        )
        init_meta = blob["meta"]
        start_step = int(init_meta.get("total_steps", init_meta["step"]))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    tokens = TokenCache(tokenizer)
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60.0
    recipe = {
        "model": MODEL_NAME,
        "config": json.loads(CONFIG_PATH.read_text()),
        "seed": args.seed,
        "batch": args.batch,
        "lr": args.lr,
        "betas": [0.9, 0.98],
        "weight_decay": args.wd,
        "schedule": "3% warm-up, cosine to 0 over the budget",
        "budget_minutes": args.minutes,
        "fixed_steps": args.steps,
        "init": None
        if init_meta is None
        else {
            "checkpoint": str(args.init),
            "steps": init_meta.get("step"),
            "train_seconds": init_meta.get("train_seconds"),
            "recipe": init_meta.get("recipe"),
        },
        "data_step_offset": start_step,
        "autocast": "bf16" if args.bf16 else "none (fp32)",
        "token_table_init_std": 0.002,
        "data": "fresh batch per step: World.sample_batch(batch, seed*1000003 + step)",
        "threads": args.threads,
        "torch": str(torch.__version__),
        "open_clip": str(open_clip.__version__),
        "machine": platform.processor() or platform.machine(),
    }
    log = []
    model.train()
    t0 = time.time()
    last_ckpt = t0
    step = 0
    ema = None
    while True:
        elapsed = time.time() - t0
        progress = step / args.steps if args.steps else elapsed / budget
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(progress)
        images, captions, _ = world.sample_batch(
            args.batch, args.seed * 1_000_003 + start_step + step
        )
        toks = tokens(captions)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            img = F.normalize(model.encode_image(normalize(images)).float(), dim=-1)
            txt = F.normalize(model.encode_text(toks).float(), dim=-1)
        loss = clip_loss(img, txt, model.logit_scale.exp(), captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % args.log_every == 0:
            el = time.time() - t0
            print(
                f"step {step} loss {ema:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                f"scale {model.logit_scale.exp().item():.1f} {el:.0f}s "
                f"{step * args.batch / el:.0f} img/s",
                flush=True,
            )
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            quick = evaluate(model, world, tokenizer, per_class=6, seed=999)
            entry = {"step": step, "seconds": round(time.time() - t0), "loss_ema": ema}
            entry.update(
                {
                    k: quick[k]
                    for k in ("base_zero_shot", "test_heldout_joint", "base_category_zero_shot")
                }
            )
            log.append(entry)
            print("eval", json.dumps(entry), flush=True)
            save_checkpoint(model, out, world, {"partial": True, "step": step, "recipe": recipe})
            last_ckpt = time.time()
    wall = time.time() - t0
    print(f"training done: {step} steps, {wall:.0f}s", flush=True)
    model.eval()
    t1 = time.time()
    final = evaluate(model, world, tokenizer, per_class=args.eval_per_class)
    print(
        "final",
        json.dumps({k: v for k, v in final.items() if not k.endswith("per_class")}),
        flush=True,
    )
    meta = {
        "partial": False,
        "step": step,
        "train_seconds": round(wall, 1),
        # over all cycles when continuing from --init
        "total_steps": start_step + step,
        "total_train_seconds": round(
            wall
            + float(
                (init_meta or {}).get(
                    "total_train_seconds", (init_meta or {}).get("train_seconds", 0)
                )
            ),
            1,
        ),
        "images_seen": step * args.batch,
        "recipe": recipe,
        "eval_template": EVAL_TEMPLATE,
        "classes": [
            {"name": c.name, "category": c.category, "split": c.split, "rarity": c.rarity}
            for c in world.classes
        ],
        "categories": world.categories,
        "rare_words": [c.name for c in world.rare_classes],
    }
    save_checkpoint(model, out, world, meta)
    report = {
        "checkpoint": out.name,
        "checkpoint_bytes": out.stat().st_size,
        "steps": step,
        "train_seconds": round(wall, 1),
        "total_steps": meta["total_steps"],
        "total_train_seconds": meta["total_train_seconds"],
        "eval_seconds": round(time.time() - t1, 1),
        "images_seen": step * args.batch,
        "final_loss_ema": ema,
        "recipe": recipe,
        "zero_shot": final,
        "monitoring": log,
        "heldout_tokenization": tokenization_report(world),
        "vocabulary_size": len(world.caption_words()),
        "world": {
            "categories": world.categories,
            "classes": meta["classes"],
        },
    }
    report_path(out).write_text(json.dumps(report, indent=1))
    report_path(out).with_suffix(".md").write_text(markdown_report(report))
    print("wrote", out, report_path(out), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="checkpoint path (.pt)")
    ap.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    ap.add_argument(
        "--steps", type=int, default=0, help="fixed step count instead of the time budget"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="", help="continue from this checkpoint (second cycle)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast: ~2x faster on CPUs with AVX512-BF16, ~10x slower without",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    # 1 thread: on the shared 2-core machine, 2 OpenMP threads competing with other processes
    # were ~5x slower per step than 1 (oversubscribed threads spin at every barrier)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--ckpt-minutes", type=float, default=5.0, help="checkpoint + quick eval period"
    )
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-per-class", type=int, default=25)
    train(ap.parse_args(argv))


if __name__ == "__main__":
    main()
