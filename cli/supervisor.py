"""`serve --workers N`: uvicorn's process supervisor, with a dead API process noticed at once.

uvicorn's supervisor checks each process every half second by sending a ping down a pipe and
waiting for the answer, up to `timeout_worker_healthcheck` (60 s here: a starting process on a
busy machine answers late). It waits on the pipe alone, and the parent holds the child's end of
that pipe too, so a process killed while a ping is out never closes it: the parent waited the
full 60 s before replacing it. Here the wait also ends when the process exits (its sentinel), so
a killed process is replaced within the next check, however busy it was.
"""

from __future__ import annotations

import pickle
from multiprocessing.connection import wait

import uvicorn
from uvicorn.supervisors import multiprocess


class _WatchedProcess(multiprocess.Process):
    def _healthcheck(self, timeout: float) -> bool | None:
        try:
            self.parent_conn.send(b"ping")
            ready = wait([self.parent_conn, self.process.sentinel], timeout)
            if self.parent_conn in ready:
                started: bool = self.parent_conn.recv()
                return started
            return None  # exited, or silent for `timeout`: replaced either way
        except (OSError, EOFError, pickle.UnpicklingError):
            return None


def run_processes(config: uvicorn.Config) -> None:
    """Serve `config` from `config.workers` processes sharing one socket, each replaced when it
    dies (as `uvicorn.run` does for workers > 1, with the check above)."""
    # The supervisor builds its processes from this module-level name; `serve`'s parent process
    # does nothing else, so the swap concerns it alone.
    multiprocess.Process = _WatchedProcess  # type: ignore[misc]
    socket = config.bind_socket()
    multiprocess.Multiprocess(config, sockets=[socket]).run()
