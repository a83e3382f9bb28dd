"""`liteembed`: serve the API, run a queue worker, apply migrations, run the demo; and, as a
client of a running service: add, classify, classes, delete, export."""

from __future__ import annotations

import argparse
import logging
import sys

from cli.remote import COMMANDS as REMOTE_COMMANDS
from cli.remote import add_remote_commands, run_remote_command
from service.core.config import Settings, get_settings
from service.db import migrate

log = logging.getLogger("liteembed")

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liteembed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (and, without Redis, the worker)")
    serve.add_argument("--host", default=None, help="default 0.0.0.0 with keys, else 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="API processes (Redis mode only)")
    commands.add_parser("worker", help="run one queue worker process (needs LITEEMBED_REDIS_URL)")
    commands.add_parser("migrate", help="bring the database schema up to date")
    demo = commands.add_parser(
        "demo", help="start the service with the mini CLIP and personalise three unseen classes"
    )
    demo.add_argument("--classes", nargs="+", default=None, help="held-out classes of the world")
    demo.add_argument("--shots", type=int, default=5, help="images uploaded per class")
    demo.add_argument("--no-hints", action="store_true", help="register without category hints")
    add_remote_commands(commands)
    args = parser.parse_args(argv)
    if args.command in REMOTE_COMMANDS:
        return run_remote_command(args)
    if args.command == "demo":
        # The demo starts its own `liteembed serve` subprocess with its own settings.
        from cli.demo import DEFAULT_CLASSES, run_demo

        return run_demo(
            classes=args.classes or DEFAULT_CLASSES, shots=args.shots, use_hints=not args.no_hints
        )

    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        return serve_command(settings, args.host, args.port, args.workers)
    if args.command == "worker":
        return worker_command(settings)
    migrate(settings)
    return 0


def serve_command(settings: Settings, host: str | None, port: int, workers: int) -> int:
    import uvicorn

    if not settings.auth_enabled:
        if host is not None and host not in _LOOPBACK:
            log.warning("no API keys configured: refusing to bind %s, binding 127.0.0.1", host)
        host = "127.0.0.1"
        log.warning(
            "!!! NO API KEYS CONFIGURED: the service is OPEN to anyone who can reach it. It binds "
            "127.0.0.1 only. Set LITEEMBED_ADMIN_KEYS / LITEEMBED_CLIENT_KEYS to expose it. !!!"
        )
    host = host or "0.0.0.0"
    if settings.embedded_worker and workers != 1:
        log.warning("the embedded worker needs one API process; ignoring --workers %d", workers)
        workers = 1
    if settings.database_url.startswith("sqlite"):
        # The one-command start: the SQLite file is created and migrated here. A shared
        # PostgreSQL is migrated once by `liteembed migrate`, not by every API process.
        migrate(settings)
    uvicorn.run(
        "workers:create_app_with_worker",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
    )
    return 0


def worker_command(settings: Settings) -> int:
    from workers import run_worker_process

    return run_worker_process(settings)


if __name__ == "__main__":
    sys.exit(main())
