"""`liteembed` commands as child processes: `serve` started on a free port, waited for until
/readyz answers 200, and stopped with SIGTERM, then SIGKILL if it does not stop in time.

The demo, the benchmarks and the end-to-end tests all run the real server this way, so a change
to how the server starts or stops is made here once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL_CHARS = 4000


def command(*args: str) -> list[str]:
    """The argv of `liteembed ARGS...` run by this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "cli.main", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(settings: Mapping[str, str], *, keep_settings: bool = False) -> dict[str, str]:
    """This process's environment with `settings` on top and this checkout's packages on
    PYTHONPATH, whatever the child's working directory.

    The caller's own LITEEMBED_ variables are dropped unless `keep_settings`: a test or a
    benchmark must be configured by its `settings`, not by the shell it happens to run in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if keep_settings or not key.startswith("LITEEMBED_")
    }
    env.update(settings)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class Child(subprocess.Popen[bytes]):
    """A `liteembed` command's process (another program's with `program`: its argv before
    `args`); its output (stdout and stderr) is appended to `log_path`."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        program: Sequence[str] | None = None,
    ) -> None:
        self.log_path = log_path
        argv = command(*args) if program is None else [*program, *args]
        with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
            super().__init__(
                argv,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd or REPO,
            )

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class NotReady(RuntimeError):
    """The server exited or did not answer its readiness path with 200 in time; the message ends
    with the tail of its log."""


def stop(*children: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM to every child still running (uvicorn and the worker shut down cleanly on it),
    then SIGKILL to any that has not exited `grace_s` seconds later. All are signalled first,
    so they stop side by side."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_ready(
    child: Child, url: str, *, timeout: float, poll_s: float = 0.2, path: str = "/readyz"
) -> None:
    """Until `url` + `path` answers 200; raises NotReady when the child exits or `timeout`
    passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise NotReady(
                f"the server exited with code {child.returncode}; {child.log_path}:\n"
                f"{child.log_tail()}"
            )
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(poll_s)
    raise NotReady(
        f"the server was not ready within {timeout:g} s; {child.log_path}:\n{child.log_tail()}"
    )


@contextmanager
def running(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
    grace_s: float = 20.0,
) -> Iterator[Child]:
    """`liteembed ARGS...` for the duration of the block, stopped on the way out."""
    child = Child(args, env=env, log_path=log_path, cwd=cwd)
    try:
        yield child
    finally:
        stop(child, grace_s=grace_s)


@dataclass(frozen=True)
class Server:
    """A running `liteembed serve`, ready when handed out."""

    url: str
    port: int
    process: Child

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.process.log_tail(chars)


@contextmanager
def serving(
    *,
    env: Mapping[str, str],
    log_path: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    serve_args: Sequence[str] = (),
    cwd: Path | None = None,
    ready_timeout: float = 180.0,
    grace_s: float = 20.0,
) -> Iterator[Server]:
    """`liteembed serve` on `port` (default: a free one), yielded once /readyz says 200 and
    stopped when the block ends (also when it never became ready)."""
    port = port or free_port()
    args = ["serve", "--host", host, "--port", str(port), *serve_args]
    with running(args, env=env, log_path=log_path, cwd=cwd, grace_s=grace_s) as child:
        server = Server(url=f"http://{host}:{port}", port=port, process=child)
        wait_ready(child, server.url, timeout=ready_timeout)
        yield server
