"""`add | classify | embed | classes | delete | export | import`: a running service's HTTP API
from a shell, through `liteembed_client`. `--url` / `--key` override LITEEMBED_URL / LITEEMBED_KEY.

The same verbs are `liteembed-client VERB` on a machine with only this distribution, and
`liteembed VERB` where the server is installed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from liteembed_client import ClassInfo, Client, LiteEmbedClientError, Prediction
from liteembed_client.settings import ClientSettings

# What `add` picks up from a folder (the service decides what it accepts).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
STATUSES = ("queued", "training", "ready", "failed")
COMMANDS = ("add", "classify", "embed", "classes", "delete", "export", "import")
# Images per /v1/classify request: the service's default MAX_CLASSIFY_IMAGES.
CLASSIFY_BATCH = 32


def add_remote_commands(commands: Any) -> None:
    """Register the client verbs on the `liteembed` parser's subcommands."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help="the service (default: LITEEMBED_URL or 127.0.0.1:8000)")
    connection.add_argument("--key", help="the API key (default: LITEEMBED_KEY)")

    add = commands.add_parser(
        "add", parents=[connection], help="register a class from images (files or folders)"
    )
    add.add_argument("name", help="the class name")
    add.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    add.add_argument(
        "--hint", action="append", default=[], dest="hints", metavar="WORD", help="repeatable"
    )
    add.add_argument(
        "--confuser",
        action="append",
        default=[],
        dest="confusers",
        metavar="NAME",
        help="a look-alike class, repeatable",
    )
    add.add_argument(
        "--negative",
        action="append",
        default=[],
        dest="negatives",
        metavar="IMAGE_OR_DIR",
        help="images that are not this class (look-alikes), repeatable",
    )
    add.add_argument("--replace", action="store_true", help="replace a class of the same name")
    add.add_argument(
        "--callback-url",
        default=None,
        metavar="URL",
        help="a webhook for class.ready / class.failed (a host the service allows)",
    )
    add.add_argument("--wait", action="store_true", help="wait for training, showing progress")
    add.add_argument("--timeout", type=float, default=None, help="seconds --wait waits at most")

    classify = commands.add_parser("classify", parents=[connection], help="classify images")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument(
        "--labels", nargs="+", default=None, help="registered names and plain words to choose from"
    )
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument(
        "--abstain",
        action="store_true",
        help="leave out predictions below their class's acceptance threshold (an image of none "
        "of the classes gets none)",
    )
    classify.add_argument("--json", action="store_true", help="one JSON object per image")
    classify.add_argument(
        "--batch-size",
        type=int,
        default=CLASSIFY_BATCH,
        help=f"images per request (default {CLASSIFY_BATCH}, the service's MAX_CLASSIFY_IMAGES)",
    )

    embed = commands.add_parser(
        "embed",
        parents=[connection],
        help="image and text features as JSON lines; {name} in a text is a class's learned word",
    )
    embed.add_argument("images", nargs="*", metavar="IMAGE")
    embed.add_argument(
        "--text", action="append", default=[], dest="texts", metavar="TEXT", help="repeatable"
    )

    classes = commands.add_parser(
        "classes", parents=[connection], help="list classes (a client key: its tenant's)"
    )
    classes.add_argument("--status", choices=STATUSES, default=None)
    classes.add_argument("--json", action="store_true", help="one JSON object per class")

    delete = commands.add_parser("delete", parents=[connection], help="delete classes")
    delete.add_argument("ids", nargs="+", metavar="ID")

    export = commands.add_parser(
        "export",
        parents=[connection],
        help="save a ready class's learned feature as .npy, or (--bundle) the whole class as a "
        "JSON bundle for `import`",
    )
    export.add_argument("id", metavar="ID")
    export.add_argument(
        "-o", "--output", required=True, type=Path, help="the .npy file (--bundle: .json)"
    )
    export.add_argument(
        "--token",
        action="store_true",
        help="the token embedding (the new word) instead of the text feature",
    )
    export.add_argument(
        "--bundle",
        action="store_true",
        help="the class as a portable JSON bundle: name, learned word, hints, images",
    )
    export.add_argument(
        "--no-images", action="store_true", help="with --bundle: leave the images out"
    )

    import_ = commands.add_parser(
        "import",
        parents=[connection],
        help="import classes from bundles (`export --bundle`): ready at once on the same "
        "model, else learned again from their images",
    )
    import_.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE")
    import_.add_argument("--replace", action="store_true", help="replace classes of the same names")


def run_remote_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    settings = ClientSettings()
    key = args.key or (settings.key.get_secret_value() if settings.key else None)
    handler = _HANDLERS[args.command]
    try:
        with Client(args.url or settings.url, key, timeout=settings.timeout_seconds) as client:
            return handler(client, args, out)
    except LiteEmbedClientError as exc:
        print(f"liteembed {args.command}: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"liteembed {args.command}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """`liteembed-client`: the verbs alone, for a machine without the server."""
    parser = argparse.ArgumentParser(prog="liteembed-client", description=__doc__)
    add_remote_commands(parser.add_subparsers(dest="command", required=True))
    return run_remote_command(parser.parse_args(argv))


class UsageError(Exception):
    pass


def image_paths(arguments: Iterable[str]) -> list[Path]:
    """Files as given; folders expanded to their image files, sorted (not recursive)."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise UsageError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    return paths


def _add(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    info = client.register_class(
        args.name,
        image_paths(args.images),
        hints=args.hints,
        confusers=args.confusers,
        replace=args.replace,
        negative_images=image_paths(args.negatives),
        callback_url=args.callback_url,
    )
    print(f"{info.id}\t{info.name}\t{info.status}", file=out)
    if not args.wait:
        return 0
    info = _wait_with_progress(client, info, args.timeout)
    print(f"{info.id}\t{info.name}\t{info.status}", file=out)
    return 0


def _wait_with_progress(client: Client, info: ClassInfo, timeout: float | None) -> ClassInfo:
    from tqdm import tqdm

    # On stderr, so stdout stays the class's id line for scripts.
    with tqdm(total=100, desc=info.name, unit="%", file=sys.stderr, leave=True) as bar:

        def show(update: ClassInfo) -> None:
            bar.n = round(update.progress * 100)
            bar.set_postfix_str(update.status, refresh=False)
            bar.refresh()

        return client.wait_ready(info.id, timeout=timeout, on_update=show)


def _classify(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    paths = image_paths(args.images)
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        # One request per chunk: the service encodes its images as one model batch.
        results = client.classify_many(
            chunk, labels=args.labels, top_k=args.top_k, abstain=args.abstain
        )
        for path, result in zip(chunk, results, strict=True):
            if args.json:
                print(json.dumps({"image": str(path), **result.model_dump(mode="json")}), file=out)
                continue
            ranked = ", ".join(_prediction_text(p) for p in result.predictions)
            nothing = "(none of these)" if args.abstain else "(no classes)"
            print(f"{path}\t{ranked or nothing}", file=out)
    return 0


def _prediction_text(prediction: Prediction) -> str:
    """`label score`, with `?` after the score of a prediction that is not accepted (below its
    acceptance threshold, or a known concept is nearer: the image is probably not that class,
    however it ranks)."""
    doubt = "?" if prediction.accepted is False else ""
    return f"{prediction.label} {prediction.score:.3f}{doubt}"


def _embed(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if not args.images and not args.texts:
        raise UsageError("give images, --text, or both")
    paths = image_paths(args.images)
    result = client.embed(images=paths, texts=args.texts)
    for path, feature in zip(paths, result.images, strict=True):
        print(json.dumps({"image": str(path), "model": result.model, "feature": feature}), file=out)
    for text, feature in zip(args.texts, result.texts, strict=True):
        print(json.dumps({"text": text, "model": result.model, "feature": feature}), file=out)
    return 0


def _classes(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    rows = list(client.iter_classes(status=args.status))
    if args.json:
        for info in rows:
            print(info.model_dump_json(), file=out)
        return 0
    table = [("ID", "NAME", "STATUS", "PROGRESS", "HINTS", "CREATED", "MODEL")]
    for info in rows:
        table.append(
            (
                info.id,
                info.name,
                info.status,
                f"{info.progress:.0%}",
                ",".join(info.hints) or "-",
                info.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                info.model,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    return 0


def _delete(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    for class_id in args.ids:
        client.delete_class(class_id)
        print(f"deleted {class_id}", file=out)
    return 0


def _export(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    import numpy as np

    if args.bundle:
        bundle = client.export_class(args.id, images=not args.no_images)
        args.output.write_text(json.dumps(bundle))
        images = len(bundle.get("images", []))
        print(
            f"{args.output}\tbundle\t{bundle['name']}\t{images} images\t{bundle['model']}", file=out
        )
        return 0
    embedding = client.get_embedding(args.id)
    values = embedding.token_embedding if args.token else embedding.text_feature
    vector = np.asarray(values, dtype=np.float32)
    with open(args.output, "wb") as file:  # np.save would add .npy to any other name
        np.save(file, vector)
    what = "token embedding" if args.token else "text feature"
    print(f"{args.output}\t{what}\t{vector.shape[0]} floats\t{embedding.model}", file=out)
    return 0


def _import(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    bundles = []
    for path in args.bundles:
        try:
            bundles.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable JSON bundle ({exc})") from None
    for bundle in bundles:
        info = client.import_class(bundle, replace=args.replace)
        print(f"{info.id}\t{info.name}\t{info.status}", file=out)
    return 0


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace, TextIO], int]] = {
    "add": _add,
    "classify": _classify,
    "embed": _embed,
    "classes": _classes,
    "delete": _delete,
    "export": _export,
    "import": _import,
}
