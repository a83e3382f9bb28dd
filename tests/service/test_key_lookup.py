"""Issued keys looked up by hash: answers remembered for the TTL (found or not), bounded, and a
remembered answer served without the database."""

from __future__ import annotations

from service.db import make_engine, make_session_factory, session_scope
from service.keys import KeyLookup, issue_key, revoke_key
from service.models import ApiKey


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_answers_are_remembered_for_the_ttl_then_read_again(sqlite_url: str) -> None:
    sessions = make_session_factory(make_engine(sqlite_url))
    with session_scope(sessions) as session:
        issued = issue_key(session=session, tenant="acme", role="client")
    clock = Clock()
    lookup = KeyLookup(sessions, ttl=0.5, clock=clock, capacity=2)

    assert lookup.cached(issued.secret) == (False, None)  # nothing remembered yet
    holder = lookup.find(issued.secret)
    assert holder is not None and (holder.tenant, holder.role) == ("acme", "client")
    assert lookup.cached(issued.secret) == (True, holder)  # no database needed now

    with session_scope(sessions) as session:
        revoke_key(session=session, row=session.get(ApiKey, issued.row.id))  # type: ignore[arg-type]
    assert lookup.find(issued.secret) == holder  # within the TTL: the remembered answer
    clock.now = 0.6
    assert lookup.cached(issued.secret) == (False, None)
    assert lookup.find(issued.secret) is None  # read again: revoked
    assert lookup.cached(issued.secret) == (True, None)  # "no such key" is remembered too

    # Bounded: random tokens push the oldest answers out.
    for i in range(3):
        assert lookup.find(f"le_not-a-key-{i}") is None
    assert lookup.cached(issued.secret) == (False, None)
