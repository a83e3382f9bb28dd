"""Classes that leave their deployment: export a class as a versioned JSON bundle, import one.

Same model: the learned word is stored as is, ready at once and scored at once. Another model
(a word is only meaningful to the model it was learned on): the class is queued and learned
again from the bundle's images, like a registration.
"""

from __future__ import annotations

import base64
import math
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from liteembed.names import name_key
from service import crud
from service.api.bodies import ImportBodyDep, load_image
from service.api.deps import (
    TENANT_QUERY_DESCRIPTION,
    CallerDep,
    ClassifierDep,
    ClientDep,
    ProducerDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    tenant_scope,
)
from service.api.errors import responses
from service.api.openapi import request_body
from service.api.routes.classes import quota_error
from service.api.schemas import ClassBundle, ClassOut
from service.api.uploads import error, request_budget, validate_name, validate_words
from service.models import (
    DEFAULT_TENANT,
    TENANT_PATTERN,
    ClassImage,
    NegativeImage,
    PersonalizedClass,
    Status,
    utcnow,
)
from service.runtime import Runtime

router = APIRouter(prefix="/v1/classes", tags=["classes"])


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: bool = Field(True, description="include the images (base64); false: the word only")
    tenant: str | None = Field(None, pattern=TENANT_PATTERN, description=TENANT_QUERY_DESCRIPTION)


class ImportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replace: bool = Field(False, description="replace a class of the same name")
    tenant: str | None = Field(None, pattern=TENANT_PATTERN, description=TENANT_QUERY_DESCRIPTION)


@router.get(
    "/{class_id}/export",
    response_model=ClassBundle,
    response_model_exclude_none=True,
    dependencies=[ClientDep],
    summary="The class as a portable bundle: its learned word, hints and images",
    responses=responses(401, 403, 404, 422, 503),
)
def export_class(
    session: SessionDep,
    caller: CallerDep,
    class_id: str,
    query: Annotated[ExportQuery, Query()],
) -> ClassBundle:
    scope = tenant_scope(caller, query.tenant)
    row = session.get(PersonalizedClass, class_id)
    if row is None or (scope is not None and row.tenant != scope):
        raise error(404, f"no class with id {class_id}")
    ready = row.status == Status.ready and row.embedding is not None
    return ClassBundle(
        name=row.name,
        model=row.model_id,
        hints=list(row.hints or []),
        confusers=list(row.confusers or []),
        threshold=row.threshold if ready else None,
        templates=list(row.templates or []) if ready else None,
        dim=row.dim if ready else None,
        text_feature=_floats(row.embedding) if ready else None,
        token_embedding=_floats(row.token_embedding) if ready else None,
        images=_encoded(session, ClassImage, row.id) if query.images else [],
        negative_images=_encoded(session, NegativeImage, row.id) if query.images else [],
        exported_at=utcnow(),
    )


@router.post(
    ":import",
    name="import_class",
    status_code=status.HTTP_201_CREATED,
    response_model=ClassOut,
    dependencies=[ClientDep],
    summary="Import an exported class: ready at once on the same model (201), else learned "
    "again from its images (202)",
    responses=responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=request_body(ClassBundle, "application/json"),
)
def import_class(
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    runtime: RuntimeDep,
    classifier: ClassifierDep,
    producer: ProducerDep,
    caller: CallerDep,
    query: Annotated[ImportQuery, Query()],
    body: ImportBodyDep,
) -> ClassOut:
    bundle = body.bundle
    clean_name = validate_name(bundle.name)
    hints = validate_words(bundle.hints, field="hints", limit=settings.max_hints)
    confusers = validate_words(bundle.confusers, field="confusers", limit=settings.max_hints)
    word = _learned_word(bundle, runtime)
    if word is None:
        if not body.images:
            raise error(
                422,
                f"the bundle's class was learned on {bundle.model!r} (or not at all), not on "
                f"this service's {runtime.model_id!r}, and it carries no images to learn it "
                "again from (export it with images=true)",
            )
        # Hints guide learning on the model that knows them; another model's unknown ones go.
        hints = [h for h in hints if h.casefold() in runtime.vocabulary_words]
    budget = request_budget(settings)
    images = [load_image(image, settings, budget=budget).data for image in body.images]
    negatives = [load_image(image, settings, budget=budget).data for image in body.negative_images]
    # A client's own tenant; an admin's ?tenant=, else the default one.
    tenant = tenant_scope(caller, query.tenant) or DEFAULT_TENANT
    try:
        registered = crud.register_class(
            session=session,
            name=clean_name,
            name_key=name_key(clean_name),
            model_id=runtime.model_id,
            tenant=tenant,
            images=images,
            negative_images=negatives,
            hints=hints,
            confusers=confusers,
            replace=query.replace,
            max_classes=settings.tenant_max_classes,
        )
        if word is not None:
            feature, token = word
            crud.mark_imported_ready(
                session=session,
                row=registered.row,
                text_feature=feature,
                token_embedding=token,
                templates=bundle.templates or [],
                threshold=bundle.threshold,
            )
        session.commit()
    except crud.QuotaExceeded as exceeded:
        raise quota_error(exceeded) from None
    except crud.NameTaken as taken:
        raise error(
            409,
            f"a class named {taken.name!r} already exists"
            + (
                f" (id {taken.class_id}); import with ?replace=true to replace it"
                if taken.class_id
                else ""
            ),
        ) from None
    row = registered.row
    response.headers["Location"] = f"/v1/classes/{row.id}"
    if word is not None or registered.replaced_ready:
        # This process scores it before answering; every other at its next /classify.
        classifier.refresh_now()
    if word is None:
        producer.try_send_train(row.id)
        response.status_code = status.HTTP_202_ACCEPTED
    return ClassOut.of(row)


def _learned_word(bundle: ClassBundle, runtime: Runtime) -> tuple[np.ndarray, np.ndarray] | None:
    """The bundle's learned word when it is usable as is here: learned on this very model, of
    its widths, finite. None: the class must be learned again."""
    if bundle.model != runtime.model_id or bundle.text_feature is None:
        return None
    if bundle.token_embedding is None:
        raise error(422, "the bundle has a text_feature but no token_embedding")
    feature = np.asarray(bundle.text_feature, dtype=np.float32)
    token = np.asarray(bundle.token_embedding, dtype=np.float32)
    widths = {
        "text_feature": (feature, int(runtime.backend.embed_dim)),
        "token_embedding": (token, int(runtime.backend.token_dim)),
    }
    for field, (vector, width) in widths.items():
        if vector.shape != (width,):
            raise error(422, f"{field} has {vector.size} values; the model's width is {width}")
        if not np.isfinite(vector).all():
            raise error(422, f"{field} holds values that are not finite numbers")
    if bundle.threshold is not None and not math.isfinite(bundle.threshold):
        raise error(422, "threshold is not a finite number")
    return feature, token


def _floats(data: bytes | None) -> list[float] | None:
    return None if data is None else np.frombuffer(data, dtype=np.float32).tolist()


def _encoded(
    session: Session, table: type[ClassImage] | type[NegativeImage], class_id: str
) -> list[str]:
    rows = session.scalars(
        select(table.data).where(table.class_id == class_id).order_by(table.position)
    ).all()
    return [base64.b64encode(data).decode("ascii") for data in rows]
