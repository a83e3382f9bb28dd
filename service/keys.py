"""API keys issued through the admin API: made, stored as a hash, looked up, revoked.

Keys set in the environment (`ADMIN_KEYS`, `CLIENT_KEYS`) are checked in `service/api/deps.py`
and never stored; they stay the bootstrap admin keys and the default tenant's client keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.db import session_scope
from service.models import ApiKey, utcnow

KEY_MARK = "le_"
# Shown in lists: the mark and the first 8 characters of the secret.
PREFIX_CHARS = len(KEY_MARK) + 8
# `last_used_at` is written at most this often per key: a write per request would make every
# /classify a database write.
LAST_USED_EVERY = timedelta(minutes=1)


def new_secret() -> str:
    """256 random bits, URL-safe."""
    return KEY_MARK + secrets.token_urlsafe(32)


def key_hash(key: str, secret: bytes = b"") -> str:
    """The stored form of a key: HMAC-SHA256 (hex), keyed with `KEY_HASH_SECRET` if set.

    A fast hash is the right tool here, unlike for passwords: issued keys carry 256 random bits,
    so there is no dictionary to try and no guess a slow hash would make costlier, and a slow
    hash would cost every request milliseconds. The optional secret (`KEY_HASH_SECRET`) means
    a copy of the database alone cannot even check a guessed key.
    """
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def hash_secret(settings: Settings) -> bytes:
    secret = settings.key_hash_secret
    return secret.get_secret_value().encode() if secret is not None else b""


@dataclass(frozen=True)
class IssuedKey:
    row: ApiKey
    secret: str  # shown once, never stored


def issue_key(
    *, session: Session, tenant: str | None, role: str, hash_secret: bytes = b""
) -> IssuedKey:
    secret = new_secret()
    row = ApiKey(
        prefix=secret[:PREFIX_CHARS],
        key_hash=key_hash(secret, hash_secret),
        tenant=tenant,
        role=role,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return IssuedKey(row=row, secret=secret)


def revoke_key(*, session: Session, row: ApiKey) -> None:
    if row.revoked_at is None:
        row.revoked_at = utcnow()


@dataclass(frozen=True)
class KeyHolder:
    """Who a valid issued key belongs to."""

    key_id: str
    role: str
    tenant: str | None


class KeyLookup:
    """Issued keys by hash, each answer (found or not) remembered for `ttl` seconds.

    Bounded (least recently used answers go first), so random tokens from a hostile client
    cannot grow it; short-lived, so a revocation on any process reaches this one within `ttl`.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        ttl: float,
        hash_secret: bytes = b"",
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._secret = hash_secret
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, tuple[float, KeyHolder | None]] = OrderedDict()
        self._used_written: dict[str, float] = {}

    def cached(self, token: str) -> tuple[bool, KeyHolder | None]:
        """(True, answer) when a fresh answer is remembered, else (False, None); never touches
        the database, so the event loop may call it (`find` is the blocking lookup)."""
        return self._remembered(key_hash(token, self._secret))

    def find(self, token: str) -> KeyHolder | None:
        digest = key_hash(token, self._secret)
        known, holder = self._remembered(digest)
        if known:
            return holder
        now = self._clock()
        holder = self._read(digest)
        with self._lock:
            self._answers[digest] = (now, holder)
            self._answers.move_to_end(digest)
            while len(self._answers) > self._capacity:
                self._answers.popitem(last=False)
        return holder

    def _remembered(self, digest: str) -> tuple[bool, KeyHolder | None]:
        with self._lock:
            cached = self._answers.get(digest)
            if cached is not None and self._clock() - cached[0] < self._ttl:
                self._answers.move_to_end(digest)
                return True, cached[1]
        return False, None

    def _read(self, digest: str) -> KeyHolder | None:
        with session_scope(self._sessions) as session:
            row = session.scalars(
                select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            ).first()
            if row is None:
                return None
            if self._due_for_last_used(row.id):
                session.execute(
                    update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=utcnow())
                )
            return KeyHolder(key_id=row.id, role=row.role, tenant=row.tenant)

    def _due_for_last_used(self, key_id: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._used_written.get(key_id)
            if last is not None and now - last < LAST_USED_EVERY.total_seconds():
                return False
            if len(self._used_written) >= self._capacity:
                self._used_written.clear()
            self._used_written[key_id] = now
            return True
