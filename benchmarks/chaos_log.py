"""What the chaos soak's clients saw and what it did to the service: the calls, the disruptions,
and the figures made from them."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

# After a disruption ends, answers may still fail for this long and count as inside its window
# (pooled connections found dead, the broker reconnecting).
GRACE_S = 3.0


@dataclass
class Call:
    kind: str  # register, classify
    start: float
    end: float
    status: int | None  # None: no answer (connection refused or reset)
    stale: bool = False


@dataclass
class Disruption:
    kind: str
    start: float
    end: float = 0.0  # when the disrupted part was back (restored, restarted, replaced)
    recovered_s: float | None = None  # from `end` until the service did the affected work again


@dataclass
class Log:
    calls: list[Call] = field(default_factory=list)
    disruptions: list[Disruption] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, item: Call) -> None:
        with self.lock:
            self.calls.append(item)


def soak_report(
    rows: list[tuple[str, str]],
    log: Log,
    options: dict[str, Any],
    elapsed: float,
    drained: float | None,
) -> dict[str, Any]:
    """The soak's figures from the class rows left (name, status) and what the clients saw."""
    by_name: dict[str, list[str]] = {}
    for name, status in rows:
        by_name.setdefault(name, []).append(status)
    finished = {n for n, statuses in by_name.items() if set(statuses) <= {"ready", "failed"}}
    windows = [(d.start, (d.end or d.start) + GRACE_S, d.kind) for d in log.disruptions]

    def inside(call: Call) -> bool:
        return any(call.start <= end and call.end >= start for start, end, _ in windows)

    errors = [c for c in log.calls if c.status is not None and c.status >= 500]
    unanswered = [c for c in log.calls if c.status is None]
    by_kind: dict[str, list[Disruption]] = {}
    for d in log.disruptions:
        by_kind.setdefault(d.kind, []).append(d)
    return {
        "options": options,
        "elapsed_s": round(elapsed, 1),
        "drained_s": None if drained is None else round(drained, 1),
        "accepted": len(log.accepted),
        "ready": sum(1 for s in by_name.values() if s == ["ready"]),
        "failed": sum(1 for s in by_name.values() if s == ["failed"]),
        "lost": sorted(n for n in log.accepted if n not in finished),
        "duplicated": sorted(n for n, statuses in by_name.items() if len(statuses) > 1),
        "stored_unacknowledged": sorted(set(by_name) - log.accepted),
        "requests": len(log.calls),
        "answered_2xx": sum(1 for c in log.calls if c.status is not None and c.status < 300),
        "stale_answers": sum(1 for c in log.calls if c.stale),
        "5xx_inside_windows": sum(1 for c in errors if inside(c)),
        "5xx_outside_windows": sum(1 for c in errors if not inside(c)),
        "5xx_inside_by_request": {
            kind: sum(1 for c in errors if inside(c) and c.kind == kind)
            for kind in ("register", "classify")
        },
        "5xx_outside_detail": [asdict(c) for c in errors if not inside(c)][:20],
        "unanswered_inside_windows": sum(1 for c in unanswered if inside(c)),
        "unanswered_outside_windows": sum(1 for c in unanswered if not inside(c)),
        "disruptions": [asdict(d) for d in log.disruptions],
        # back: from the disruption's start until the part was back (restored, restarted,
        # replaced); recovered: from then until the service did the affected work again.
        "recovery_s": {
            kind: {
                "count": len(items),
                "max_back": round(max(d.end - d.start for d in items), 2),
                "max_recovered": max(
                    (round(d.recovered_s, 2) for d in items if d.recovered_s is not None),
                    default=None,
                ),
                "not_recovered": sum(1 for d in items if d.recovered_s is None),
            }
            for kind, items in by_kind.items()
        },
    }


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("run (s)", report["elapsed_s"]),
        ("accepted", report["accepted"]),
        ("ready", report["ready"]),
        ("failed", report["failed"]),
        ("lost", len(report["lost"])),
        ("duplicated", len(report["duplicated"])),
        ("stored, never acknowledged", len(report["stored_unacknowledged"])),
        ("requests (2xx)", f"{report['requests']} ({report['answered_2xx']})"),
        ("stale answers (database away)", report["stale_answers"]),
        ("5xx inside disruption windows", report["5xx_inside_windows"]),
        ("5xx outside disruption windows", report["5xx_outside_windows"]),
        (
            "unanswered inside / outside",
            f"{report['unanswered_inside_windows']} / {report['unanswered_outside_windows']}",
        ),
    ]
    for kind, recovery in report["recovery_s"].items():
        worst = recovery["max_recovered"]
        shown = "never" if worst is None else f"{worst:.1f}"
        if recovery["not_recovered"]:
            shown += f" ({recovery['not_recovered']} never)"
        rows.append(
            (
                f"{kind} x{recovery['count']}: worst back / recovered (s)",
                f"{recovery['max_back']:.1f} / {shown}",
            )
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
