"""One logging configuration for every process: the CLI, each uvicorn worker process, the worker.

uvicorn applies `logging_config(...)` itself in each of its worker processes (it is handed over
as `log_config`), so `serve --workers N` logs the same lines, with timestamps and request ids, as
one process does. Plain text by default; one JSON object per line with LOG_FORMAT=json.
"""

from __future__ import annotations

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# The id of the HTTP request being handled, set by the request-id middleware.
request_id: ContextVar[str | None] = ContextVar("liteembed_request_id", default=None)

_PREFIX = "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s]: "
_TEXT_FORMAT = _PREFIX + "%(message)s"
_ACCESS_FORMAT = _PREFIX + '%(client_addr)s - "%(request_line)s" %(status_code)s'


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class AlembicStartupFilter(logging.Filter):
    """Keeps alembic's "Running upgrade ..." lines and drops the ones it prints at every start
    ("Context impl ...", "Will assume ... DDL")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or str(record.msg).startswith("Running ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, process, request_id,
    message, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid and rid != "-":
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def logging_config(level: str = "INFO", log_format: str = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary; also what uvicorn gets as `log_config`."""
    level = level.upper()
    if log_format == "json":
        formatters: dict[str, Any] = {
            "default": {"()": f"{__name__}.JsonFormatter"},
            "access": {"()": f"{__name__}.JsonFormatter"},
        }
    else:
        formatters = {
            "default": {"format": _TEXT_FORMAT},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": _ACCESS_FORMAT,
                "use_colors": False,
            },
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": f"{__name__}.RequestIdFilter"},
            "alembic_startup": {"()": f"{__name__}.AlembicStartupFilter"},
        },
        "formatters": formatters,
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            },
            "access": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "access",
                "filters": ["request_id"],
            },
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # uvicorn's own loggers go through the root handler, access lines through theirs.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
            # Printed at every start, for every process: plugin setup and migration context.
            "alembic.runtime.plugins": {"level": "WARNING"},
            "alembic.runtime.migration": {"filters": ["alembic_startup"]},
        },
    }


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    logging.config.dictConfig(logging_config(level, log_format))
