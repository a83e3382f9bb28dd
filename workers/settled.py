"""The tenant's ready classes as a train job sees them: their learned text features and their
exemplars' image features (what a new word is trained not to take, and what is re-scored after
it is learned), and, for a class to be re-learned, its stored request.

Classes stored before exemplar features were kept have none: they are encoded from the stored
images once, here, and written back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.db import session_scope
from service.models import ClassImage, NegativeImage, PersonalizedClass, Status

log = logging.getLogger(__name__)


@dataclass
class SettledClass:
    """A ready class of the tenant, as read at the start of the job."""

    class_id: str
    name: str
    feature: np.ndarray  # (E,) float32 text feature
    exemplars: np.ndarray | None  # (K, E) float32 exemplar image features; None: not yet known
    updated_at: datetime  # as read: a re-learned class is written back only if unchanged since


def load_settled(
    session: Session, *, model_id: str, tenants: set[str], exclude: set[str], dim: int
) -> list[SettledClass]:
    """The ready classes of `model_id` in `tenants` (not `exclude`), in a stable order (a
    retried job sees its negatives in the same order)."""
    cls = PersonalizedClass
    rows = session.execute(
        select(cls.id, cls.name, cls.embedding, cls.exemplar_features, cls.updated_at)
        .where(
            cls.model_id == model_id,
            cls.status == Status.ready,
            cls.tenant.in_(tenants),
            cls.id.not_in(exclude),
        )
        .order_by(cls.created_at, cls.id)
    ).all()
    settled = []
    for row in rows:
        if row.embedding is None or len(row.embedding) != 4 * dim:
            continue
        exemplars = None
        blob = row.exemplar_features
        if blob is not None and len(blob) % (4 * dim) == 0:
            exemplars = np.frombuffer(blob, dtype=np.float32).reshape(-1, dim).copy()
        feature = np.frombuffer(row.embedding, dtype=np.float32).copy()
        settled.append(SettledClass(row.id, row.name, feature, exemplars, row.updated_at))
    return settled


def fill_exemplar_features(
    sessions: sessionmaker[Session], backend: Any, settled: list[SettledClass]
) -> None:
    """Encode the exemplars of the classes that have no stored features, and store them."""
    from liteembed.augment import as_rgb

    for one in settled:
        if one.exemplars is not None:
            continue
        with sessions() as session:
            blobs = stored_images(session, ClassImage, one.class_id)
        if not blobs:
            one.exemplars = np.zeros((0, len(one.feature)), dtype=np.float32)
            continue
        # One image decoded at a time, reduced to what the model needs.
        images = [as_rgb(blob, backend.decode_side) for blob in blobs]
        features = backend.encode_images(images).float().cpu().numpy().astype(np.float32)
        one.exemplars = features
        with session_scope(sessions) as session:
            crud.store_exemplar_features(session=session, class_id=one.class_id, features=features)
        log.info(
            "class %s: exemplar features computed from its %d images", one.class_id, len(blobs)
        )


def stored_request(session: Session, class_id: str) -> Any | None:
    """The class's request as registered (name, images, hints, confusers, negative images), to
    learn it again; None when the class is gone."""
    from liteembed import ClassRequest

    row = session.get(PersonalizedClass, class_id)
    if row is None:
        return None
    return ClassRequest(
        row.name,
        stored_images(session, ClassImage, class_id),
        hints=list(row.hints or []),
        confusers=list(row.confusers or []),
        negative_images=stored_images(session, NegativeImage, class_id),
    )


def stored_images(session: Session, table: Any, class_id: str) -> list[bytes]:
    """A class's images of `table` (exemplars or negatives), as uploaded, in order."""
    return list(
        session.scalars(
            select(table.data).where(table.class_id == class_id).order_by(table.position)
        ).all()
    )
