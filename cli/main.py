"""`liteembed`: serve the API, run a queue worker, apply migrations, preload the model, queue
an old model's classes under the current one, check health, run the demo; and, as a client of a
running service: add, classify, classes, delete, export, import."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from liteembed_client.cli import COMMANDS as REMOTE_COMMANDS
from liteembed_client.cli import add_remote_commands, run_remote_command
from service.core.config import MAKE_KEY_COMMAND, Settings, get_settings
from service.core.log_config import configure_logging, logging_config
from service.db import migrate

log = logging.getLogger("liteembed")

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liteembed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (and, without Redis, the worker)")
    serve.add_argument(
        "--host",
        default=None,
        help="default 0.0.0.0 with keys, else 127.0.0.1 (another needs keys or ALLOW_OPEN)",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="API processes (Redis mode only)")
    commands.add_parser("worker", help="run one queue worker process (needs LITEEMBED_REDIS_URL)")
    commands.add_parser("migrate", help="bring the database schema up to date")
    commands.add_parser(
        "preload", help="load the model and build its vocabulary cache in CACHE_DIR, then exit"
    )
    bank = commands.add_parser(
        "bank",
        help="build the model's reference bank from a folder of images (one subfolder per word)",
    )
    bank.add_argument("folder", type=Path, help="subfolders named by vocabulary words")
    bank.add_argument("--per-word", type=int, default=16, help="images kept per word")
    retrain = commands.add_parser(
        "retrain",
        help="queue the classes of an old model to be learned again under the current MODEL",
    )
    retrain.add_argument(
        "--from-model",
        required=True,
        metavar="OLD",
        help="the old model: an id as GET /v1/classes shows it, or a name (all its checkpoints)",
    )
    health = commands.add_parser(
        "healthcheck",
        help="exit 0 when healthy: the API's /readyz, or with --worker this host's worker",
    )
    health.add_argument("--worker", action="store_true", help="a queue worker runs on this host")
    health.add_argument("--port", type=int, default=8000, help="the API's port on 127.0.0.1")
    demo = commands.add_parser(
        "demo", help="start the service with the mini CLIP and personalise three unseen classes"
    )
    demo.add_argument("--classes", nargs="+", default=None, help="held-out classes of the world")
    demo.add_argument("--shots", type=int, default=5, help="images uploaded per class")
    demo.add_argument("--no-hints", action="store_true", help="register without category hints")
    demo.add_argument(
        "--model",
        default="liteembed-mini-v2",
        choices=["liteembed-mini-v2", "liteembed-mini"],
        help="the shipped mini CLIP to run on",
    )
    add_remote_commands(commands)
    args = parser.parse_args(argv)
    if args.command in REMOTE_COMMANDS:
        return run_remote_command(args)
    if args.command == "demo":
        # The demo starts its own `liteembed serve` subprocess with its own settings.
        from cli.demo import DEFAULT_CLASSES, run_demo

        return run_demo(
            classes=args.classes or DEFAULT_CLASSES,
            shots=args.shots,
            use_hints=not args.no_hints,
            model=args.model,
        )

    try:
        settings = get_settings()
    except ValidationError as exc:
        print(settings_error(exc), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        return serve_command(settings, args.host, args.port, args.workers)
    if args.command == "worker":
        return worker_command(settings)
    if args.command == "preload":
        return preload_command(settings)
    if args.command == "bank":
        return bank_command(settings, args.folder, args.per_word)
    if args.command == "retrain":
        return retrain_command(settings, args.from_model)
    if args.command == "healthcheck":
        return healthcheck_command(settings, worker=args.worker, port=args.port)
    migrate(settings)
    return 0


def settings_error(exc: ValidationError) -> str:
    """A rejected setting, said plainly (pydantic's report is for developers)."""
    lines = ["liteembed: invalid settings (environment or .env):"]
    for error in exc.errors():
        setting = "LITEEMBED_" + ".".join(str(part) for part in error["loc"]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"  {message}" if message.startswith(setting) else f"  {setting}: {message}")
    return "\n".join(lines)


def serve_host(settings: Settings, host: str | None) -> str:
    """The address to bind; SystemExit when an open service would be reachable by accident.

    With keys: `host`, default 0.0.0.0. Without: 127.0.0.1 by default; a non-loopback `host`
    (a container's 0.0.0.0) is an error unless ALLOW_OPEN, rather than a quiet bind to
    127.0.0.1 that leaves the published port unanswered."""
    if settings.auth_enabled:
        return host or "0.0.0.0"
    host = host or "127.0.0.1"
    if host not in _LOOPBACK and not settings.allow_open:
        # In a container, binding 127.0.0.1 would leave the published port unanswered: leaving
        # out --host is no way out there.
        way_out = (
            "serves it open anyway (docker run -e LITEEMBED_ALLOW_OPEN=true ...)."
            if in_container()
            else "serves it open anyway, or leave out --host to bind 127.0.0.1."
        )
        keys = (
            "docker run -e LITEEMBED_ADMIN_KEYS=<key> ..., or in .env for compose"
            if in_container()
            else "and LITEEMBED_CLIENT_KEYS"
        )
        raise SystemExit(
            f"liteembed: no API keys configured, so serving on {host} would let anyone who "
            f"reaches it register and delete classes. Set LITEEMBED_ADMIN_KEYS ({keys}); make "
            f"each key with: {MAKE_KEY_COMMAND}\n"
            f"For a local experiment, LITEEMBED_ALLOW_OPEN=true {way_out}"
        )
    where = "127.0.0.1 only" if host in _LOOPBACK else f"{host}, as LITEEMBED_ALLOW_OPEN asks"
    log.warning(
        "!!! NO API KEYS CONFIGURED: the service is OPEN to anyone who can reach it. It binds "
        "%s. Set LITEEMBED_ADMIN_KEYS / LITEEMBED_CLIENT_KEYS to protect it. !!!",
        where,
    )
    return host


# Files container runtimes create in every container (Docker; Podman).
CONTAINER_MARKERS = (Path("/.dockerenv"), Path("/run/.containerenv"))


def in_container() -> bool:
    return any(marker.exists() for marker in CONTAINER_MARKERS)


def serve_command(settings: Settings, host: str | None, port: int, workers: int) -> int:
    import uvicorn

    host = serve_host(settings, host)
    if settings.embedded_worker and workers != 1:
        log.warning("the embedded worker needs one API process; ignoring --workers %d", workers)
        workers = 1
    if settings.database_url.startswith("sqlite"):
        # The one-command start: the SQLite file is created and migrated here. A shared
        # PostgreSQL is migrated once by `liteembed migrate`, not by every API process.
        migrate(settings)
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        # Applied by uvicorn in each of its worker processes too.
        "log_config": logging_config(settings.log_level, settings.log_format),
        "log_level": settings.log_level.lower(),
        # A starting process imports torch and the model code before it answers the
        # supervisor's ping: uvicorn's 5 s default kills and restarts it on a busy machine.
        "timeout_worker_healthcheck": 60,
    }
    with shared_metrics_dir(settings):
        if workers > 1:
            from cli.supervisor import run_processes

            run_processes(uvicorn.Config("workers:create_app_with_worker", **options))
        else:
            uvicorn.run("workers:create_app_with_worker", **options)
    return 0


@contextmanager
def shared_metrics_dir(settings: Settings) -> Iterator[Path]:
    """prometheus_client's multiprocess mode for every API process of this `serve`: one
    directory of metric files, empty at start (stale files would add old counts). The processes
    inherit it through the environment, read before prometheus_client is first imported."""
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client was imported before the metrics directory was set")
    temporary = settings.metrics_dir is None
    path = (
        Path(tempfile.mkdtemp(prefix="liteembed-metrics-")) if temporary else settings.metrics_dir
    )
    assert path is not None
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    os.environ["LITEEMBED_METRICS_DIR"] = str(path)
    get_settings.cache_clear()  # an app created in this process (--workers 1) sees it too
    try:
        yield path
    finally:
        if temporary:
            shutil.rmtree(path, ignore_errors=True)


def preload_command(settings: Settings) -> int:
    """Load the model and build (or check) its vocabulary cache, so that the API and the workers
    that start after it find a warm cache."""
    from service.runtime import load_runtime

    try:
        runtime = load_runtime(settings)
    except Exception:
        log.exception("preload failed")
        return 1
    log.info("preload done: model %s, vocabulary cache in %s", runtime.model_id, settings.cache_dir)
    return 0


def bank_command(settings: Settings, folder: Path, per_word: int) -> int:
    """Encode up to `per_word` images of each subfolder (named by a vocabulary word: "_" reads
    as a space) into the model's reference bank in CACHE_DIR/banks/, which training then uses
    (features only: the images are not kept). Workers load it when they start."""
    from liteembed.bank import bank_cache_path, build_bank
    from liteembed.errors import LiteEmbedError
    from service.runtime import load_runtime

    suffixes = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    if not folder.is_dir():
        print(f"liteembed bank: {folder} is not a folder", file=sys.stderr)
        return 2
    images = {
        sub.name.replace("_", " "): [
            p.read_bytes() for p in sorted(sub.iterdir()) if p.suffix.lower() in suffixes
        ][:per_word]
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and not sub.name.startswith(".")
    }
    images = {word: found for word, found in images.items() if found}
    if not images:
        print(f"liteembed bank: no images in the subfolders of {folder}", file=sys.stderr)
        return 2
    runtime = load_runtime(settings)
    try:
        bank = build_bank(runtime.backend, runtime.vocabulary, images, per_word=per_word)
    except (LiteEmbedError, ValueError) as exc:
        print(f"liteembed bank: {exc}", file=sys.stderr)
        return 2
    path = bank_cache_path(settings.cache_dir, runtime.model_id)
    bank.save(path)
    print(
        f"{path}: {len(bank.words)} words, {len(bank.features)} images; plain-word threshold "
        f"{bank.word_threshold:.4f}"
    )
    return 0


def retrain_command(settings: Settings, from_model: str) -> int:
    """Move the classes of `from_model` to the current model, queued: each keeps its id and
    is learned again from its stored images by the running service's workers (with Redis at
    once; with the embedded worker at its reconciler's next pass)."""
    from liteembed.backend import load_backend
    from service import crud
    from service.db import make_engine, make_session_factory, session_scope
    from service.queue import make_producer

    # The current model's id names its checkpoint: only loading it tells.
    backend = load_backend(
        settings.model,
        settings.pretrained,
        device="cpu",
        precision="fp32",
        seed=settings.seed,
    )
    to_model = str(backend.model_id)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            requeued = crud.requeue_for_model(
                session=session, from_model=from_model, to_model=to_model
            )
    finally:
        engine.dispose()
    if settings.redis_url:
        producer = make_producer(settings)
        for class_id in requeued.moved:
            producer.try_send_train(class_id)
    for class_id in requeued.kept:
        print(f"{class_id}  kept: its name is taken under {to_model}", file=sys.stderr)
    print(f"{len(requeued.moved)} classes of {from_model} queued under {to_model}")
    return 0


def healthcheck_command(settings: Settings, *, worker: bool, port: int) -> int:
    """For container healthchecks: 0 healthy, 1 not (the reason on stderr)."""
    if worker:
        import socket

        from service.worker_presence import WorkerPresence

        if settings.redis_url is None:
            print("healthcheck --worker needs LITEEMBED_REDIS_URL", file=sys.stderr)
            return 1
        try:
            seen = WorkerPresence(settings).read()
        except Exception as exc:
            print(f"cannot read worker heartbeats: {exc}", file=sys.stderr)
            return 1
        if seen.alive_on(socket.gethostname()):
            return 0
        print(f"no fresh heartbeat from a worker on {socket.gethostname()}", file=sys.stderr)
        return 1
    import httpx

    try:
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=4)
    except httpx.HTTPError as exc:
        print(f"/readyz unreachable: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"/readyz {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    return 0


def worker_command(settings: Settings) -> int:
    from workers import run_worker_process

    return run_worker_process(settings)


if __name__ == "__main__":
    sys.exit(main())
