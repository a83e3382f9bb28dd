"""Pretrain a ``liteembed-mini`` family CLIP on the synthetic world, on the CPU, for fixed steps.

    python -m testbed.pretrain --model liteembed-mini-v2 \\
        --out liteembed/checkpoints/liteembed-mini-v2.pt --steps 5500 --batch 256 --bf16

Recipe (from a feasibility run of a small CLIP on this synthetic world): open_clip
ModifiedResNet [1,1,1,1] with attention pool at 64x64 (width 16 for v1, 32 for v2), text 4
layers width 128, context 24, embed 128; AdamW lr 1e-3 betas (0.9, 0.98), weight decay 0.1 on
matrices only; fresh data every step; bf16 autocast (``--bf16``) on CPUs with AVX512-BF16, fp32
otherwise; token table re-initialised with std 0.002 (untrained rows stay small); soft targets
for duplicate captions; 3 % warm-up then cosine decay over ``--steps``. Batches are seeded by
(seed, step), so a run repeats exactly for a given seed, step count and thread count.

Label-aware targets (UniCL-style, ``--label-weight``): besides identical captions, a caption
that names class c is a partial positive of weight ``--label-weight`` for every image of class c
in the batch (captions that name only the category word do not count). ``--colour-caption-p``
keeps the colour word in only that fraction of the captions whose template has one, so that
colour stops being the cheapest way to tell a batch apart; the colour words stay in the
vocabulary.

The shipped ``liteembed/checkpoints/liteembed-mini.pt`` (v1) was made by an earlier,
time-budgeted version of this script with plain targets and every colour word kept: two cycles on
a shared 2-core CPU, 1831 steps of batch 128 in all. ``liteembed-mini-v2.pt`` is one run of this
script from scratch; its report records the exact command.

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
import re
import sys
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from testbed.world import EVAL_TEMPLATE, World, default_world, normalize

MODEL_NAME = "liteembed-mini"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
NCM_SHOTS = 16
NCM_SUPPORT_SEEDS = (101, 202, 303)
# What a mini CLIP that sees shape should reach (72-way base zero-shot, 16-shot NCM on image
# features); the report states how far a checkpoint is from them.
SHAPE_TARGETS = {"base_zero_shot": 0.75, "base_ncm_16shot": 0.70}


def config_path(model_name: str) -> Path:
    return CONFIG_DIR / f"{model_name}.json"


def register_config(model_name: str = MODEL_NAME) -> None:
    # open_clip registers a config under the JSON file's stem; the JSON must be flat.
    if model_name not in open_clip.list_models():
        open_clip.add_model_config(config_path(model_name))


def build_model(seed: int, model_name: str = MODEL_NAME) -> torch.nn.Module:
    register_config(model_name)
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name)
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
    """3 % linear warm-up, then cosine decay to 0 at progress 1."""
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


def names_own_class(captions: list[str], classes: torch.Tensor, world: World) -> torch.Tensor:
    """Bool [n]: caption i names the class of sample i (not just its category word)."""
    return torch.tensor(
        [
            world.classes[int(c)].name in re.findall(r"[a-z]+", cap)
            for cap, c in zip(captions, classes, strict=True)
        ]
    )


def pair_weights(
    captions: list[str],
    classes: torch.Tensor | None = None,
    names_class: torch.Tensor | None = None,
    label_weight: float = 0.0,
) -> torch.Tensor:
    """[n, n] positive weight of (image i, caption j).

    1 where the captions are identical (the pair's own caption included); ``label_weight``
    where caption j names class c and image i shows class c (UniCL-style label-aware targets);
    0 elsewhere.
    """
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions])
    weights = (cid[:, None] == cid[None, :]).float()
    if label_weight > 0.0 and classes is not None and names_class is not None:
        same_class = (classes[:, None] == classes[None, :]) & names_class[None, :]
        weights = torch.maximum(weights, label_weight * same_class.float())
    return weights


def clip_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss against soft targets: ``weights`` normalised per image (rows)
    for image->text and per caption (columns) for text->image."""
    logits = scale * img @ txt.t()
    to_text = weights / weights.sum(1, keepdim=True)
    to_image = weights.t() / weights.t().sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-to_text * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-to_image * F.log_softmax(logits.t(), 1), 1).mean()
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
def ncm_accuracy(
    model: torch.nn.Module,
    world: World,
    names: list[str],
    queries: torch.Tensor,
    labels: torch.Tensor,
    shots: int = NCM_SHOTS,
    support_seeds: tuple[int, ...] = NCM_SUPPORT_SEEDS,
) -> list[float]:
    """Nearest-class-mean accuracy on image features, one value per support draw.

    Each class's prototype is the normalised mean of ``shots`` image features rendered with a
    support seed (never the query seed); a query goes to the prototype of highest cosine.
    """
    out = []
    for s in support_seeds:
        support = image_features(model, world.render_tensor(names, shots, s))
        protos = F.normalize(support.view(len(names), shots, -1).mean(1), dim=-1)
        out.append(float(((queries @ protos.t()).argmax(1) == labels).float().mean()))
    return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    world: World,
    tokenizer: Any,
    per_class: int = 25,
    seed: int = 12345,
    ncm_support_seeds: tuple[int, ...] = NCM_SUPPORT_SEEDS,
) -> dict[str, Any]:
    """Zero-shot accuracies with the prompt "a photo of a {name}." and 16-shot nearest-class-mean
    accuracy on image features (fp32, eval mode)."""
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
    ncm = ncm_accuracy(
        model, world, base, feats["base"], labels["base"], support_seeds=ncm_support_seeds
    )
    res["base_ncm_16shot"] = sum(ncm) / len(ncm)
    res["base_ncm_16shot_draws"] = ncm
    # never-seen held-out classes (neither rendered nor named in pretraining), joint with base:
    # their names' token rows were never trained, so anything above ~0 would be a leak
    never = [c.name for c in world.never_classes]
    f_never = image_features(model, world.render_tensor(never, per_class, seed))
    y_never = torch.arange(len(never)).repeat_interleave(per_class)
    t_never = text_features(model, tokenizer, never)
    res["never_seen_classes"] = never
    res["never_seen_joint"] = acc(f_never, torch.cat([t_base, t_never]), y_never + len(base))
    res["never_seen_only"] = acc(f_never, t_never, y_never)
    res["never_seen_only_chance"] = 1 / len(never)
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
        f"  - {NCM_SHOTS}-shot nearest-class-mean on image features, same base images "
        f"({len(zs['base_per_class'])}-way, mean of {len(zs['base_ncm_16shot_draws'])} support "
        f"draws): **{pct(zs['base_ncm_16shot'])}** "
        f"({', '.join(pct(x) for x in zs['base_ncm_16shot_draws'])});",
        f"  - never-seen held-out classes ({len(zs['never_seen_classes'])}, never rendered nor "
        f"named in pretraining), joint with base: **{pct(zs['never_seen_joint'])}**; among "
        f"themselves: {pct(zs['never_seen_only'])} (chance {pct(zs['never_seen_only_chance'])});",
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
    ]
    recipe = report["recipe"]
    if "label_weight" in recipe:
        lines += [
            f"Objective: label-aware targets, weight {recipe['label_weight']} (a caption naming "
            "class c is a partial positive for every image of class c in the batch); colour word "
            f"kept in {recipe['colour_caption_p']:.0%} of the captions whose template has one; "
            f"{recipe['schedule']}, peak lr {recipe['lr']}, {recipe['threads']} torch thread(s)"
            + (f"; continued from `{recipe['init']['checkpoint']}`." if recipe["init"] else "."),
            "",
            "Targets for a model that sees shape, and where this checkpoint stands:",
            "",
        ]
        for key, goal in SHAPE_TARGETS.items():
            gap = 100 * (zs[key] - goal)
            verdict = "reached" if gap >= 0 else f"missed by {-gap:.1f} points"
            lines.append(f"- `{key}` >= {pct(goal)}: {pct(zs[key])}, {verdict};")
        lines += [
            f"- never-seen held-out classes near 0 % (no leak): {pct(zs['never_seen_joint'])}.",
            "",
        ]
    ref = report.get("reference_on_same_evaluation")
    if ref:
        keys = [
            ("base_zero_shot", "base zero-shot (72-way)"),
            ("base_ncm_16shot", "16-shot NCM on image features (72-way)"),
            ("base_category_zero_shot", "category words on base images (9-way)"),
            ("test_heldout_joint", "test held-out, joint zero-shot"),
            ("never_seen_joint", "never-seen held-out, joint zero-shot"),
        ]
        lines += [
            f"Side by side with `{ref['checkpoint']}` on the same evaluation (`{ref['command']}`):",
            "",
            f"| Measure | {report['checkpoint']} | {ref['checkpoint']} |",
            "|---|---|---|",
        ]
        lines += [f"| {label} | {pct(zs[k])} | {pct(ref['zero_shot'][k])} |" for k, label in keys]
        lines.append("")
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [
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


def quick_evaluation(
    model: torch.nn.Module, world: World, tokenizer: Any, step: int, seconds: float, ema: float
) -> dict[str, Any]:
    """A small monitoring evaluation (6 images per class, one NCM support draw)."""
    quick = evaluate(model, world, tokenizer, per_class=6, seed=999, ncm_support_seeds=(77,))
    entry: dict[str, Any] = {"step": step, "seconds": round(seconds), "loss_ema": ema}
    for k in (
        "base_zero_shot",
        "base_ncm_16shot",
        "never_seen_joint",
        "test_heldout_joint",
        "base_category_zero_shot",
    ):
        entry[k] = quick[k]
    return entry


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    world = default_world()
    model = build_model(args.seed, args.model)
    start_step = 0
    init_meta: dict[str, Any] | None = None
    if args.init:
        # continue from an earlier run (a new cosine cycle); its data stream is continued
        # rather than replayed by offsetting the batch seeds by its step count
        blob = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
        )
        init_meta = blob["meta"]
        start_step = int(init_meta.get("total_steps", init_meta["step"]))
    tokenizer = open_clip.get_tokenizer(args.model)
    tokens = TokenCache(tokenizer)
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {
        "model": args.model,
        "config": json.loads(config_path(args.model).read_text()),
        "seed": args.seed,
        "batch": args.batch,
        "lr": args.lr,
        "betas": [0.9, 0.98],
        "weight_decay": args.wd,
        "schedule": f"3% warm-up, cosine to 0 over {args.steps} steps",
        "fixed_steps": args.steps,
        "label_weight": args.label_weight,
        "colour_caption_p": args.colour_caption_p,
        "init": None
        if init_meta is None
        else {
            "checkpoint": Path(args.init).name,
            "steps": init_meta.get("total_steps", init_meta.get("step")),
            "train_seconds": init_meta.get("total_train_seconds", init_meta.get("train_seconds")),
            "recipe": init_meta.get("recipe"),
        },
        "data_step_offset": start_step,
        "autocast": "bf16" if args.bf16 else "none (fp32)",
        "token_table_init_std": 0.002,
        "data": "fresh batch per step: World.sample_batch(batch, seed*1000003 + offset + step, "
        "colour_caption_p)",
        "threads": args.threads,
        "torch": str(torch.__version__),
        "open_clip": str(open_clip.__version__),
        "machine": platform.processor() or platform.machine(),
    }
    log = []
    model.train()
    t0 = time.time()
    ema = 0.0
    for step in range(1, args.steps + 1):
        # the step's lr comes from its position in the fixed schedule, never from the clock
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor((step - 1) / args.steps)
        images, captions, classes = world.sample_batch(
            args.batch, args.seed * 1_000_003 + start_step + step - 1, args.colour_caption_p
        )
        weights = pair_weights(
            captions, classes, names_own_class(captions, classes, world), args.label_weight
        )
        toks = tokens(captions)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            img = F.normalize(model.encode_image(normalize(images)).float(), dim=-1)
            txt = F.normalize(model.encode_text(toks).float(), dim=-1)
        loss = clip_loss(img, txt, model.logit_scale.exp(), weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        lv = float(loss.detach())
        ema = lv if step == 1 else 0.95 * ema + 0.05 * lv
        if step % args.log_every == 0:
            el = time.time() - t0
            print(
                f"step {step} loss {ema:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                f"scale {model.logit_scale.exp().item():.1f} {el:.0f}s "
                f"{step * args.batch / el:.0f} img/s",
                flush=True,
            )
        if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
            entry = quick_evaluation(model, world, tokenizer, step, time.time() - t0, ema)
            log.append(entry)
            print("eval", json.dumps(entry), flush=True)
            # something usable exists if the run has to be stopped early
            save_checkpoint(model, out, world, {"partial": True, "step": step, "recipe": recipe})
    step = args.steps
    wall = time.time() - t0
    print(f"training done: {step} steps, {wall:.0f}s", flush=True)
    model.eval()
    # evaluate the weights as shipped (the checkpoint stores fp16), so that the report's numbers
    # are what the checkpoint gives
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
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
        "command": args.command,
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
        "command": args.command,
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
    ap.add_argument(
        "--model", default=MODEL_NAME, help="model config name (liteembed/model_configs/*.json)"
    )
    ap.add_argument(
        "--steps", type=int, required=True, help="step count; the lr schedule spans exactly it"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default="", help="continue from this checkpoint (a new cycle)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--label-weight",
        type=float,
        default=0.5,
        help="weight of a caption naming class c for the other images of class c (0: off)",
    )
    ap.add_argument(
        "--colour-caption-p",
        type=float,
        default=0.3,
        help="fraction of colour-slot captions that keep their colour word (1: all)",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast: ~2x faster on CPUs with AVX512-BF16, ~10x slower without",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--ckpt-every", type=int, default=250, help="checkpoint + quick eval period in steps"
    )
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-per-class", type=int, default=25)
    args = ap.parse_args(argv)
    args.command = "python -m testbed.pretrain " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    train(args)


if __name__ == "__main__":
    main()
