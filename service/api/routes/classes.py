"""Register, read, list, delete and export personalized classes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from liteembed.names import name_key, unknown_hints
from service import crud
from service.api.bodies import RegisterBodyDep, load_image
from service.api.deps import (
    TENANT_QUERY_DESCRIPTION,
    CallerDep,
    ClassifierDep,
    ClientDep,
    ProducerDep,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    TenantScopeDep,
    ThumbnailsDep,
    tenant_scope,
)
from service.api.errors import responses
from service.api.openapi import request_body
from service.api.schemas import (
    BodyRegisterClass,
    ClassList,
    ClassOut,
    EmbeddingOut,
    RegisterClassJson,
)
from service.api.uploads import error, request_budget, validate_name, validate_words
from service.core.config import Settings
from service.models import (
    DEFAULT_TENANT,
    TENANT_PATTERN,
    ClassImage,
    PersonalizedClass,
    Status,
)
from service.thumbnails import MASTER_SIDE as THUMBNAIL_SIDE
from service.webhooks.urls import callback_url_problem

router = APIRouter(prefix="/v1/classes", tags=["classes"])

# Offsets past this are refused (422) rather than passed to the database, where a 64-bit
# overflow would be a server error.
MAX_OFFSET = 1_000_000_000


# Query parameters as models that forbid unknown names: a misspelt `?stauts=ready` is a 422,
# not a silently unfiltered list.
class ClassPage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["queued", "training", "ready", "failed"] | None = None
    tenant: str | None = Field(None, pattern=TENANT_PATTERN, description="only this tenant's")
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class ThumbnailSize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(128, ge=16, le=512, description="longest side in pixels")
    tenant: str | None = Field(None, pattern=TENANT_PATTERN, description=TENANT_QUERY_DESCRIPTION)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ClassOut,
    dependencies=[ClientDep],
    summary="Register a class from a few images; training runs on a worker",
    description="Multipart. The same body as JSON (base64 images) is `register_class_json`; "
    "this path accepts it too.",
    responses=responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=request_body(BodyRegisterClass, "multipart/form-data"),
)
# The same handler as its own operation with a JSON body: generated clients get one typed body
# per operation (a second media type on one operation breaks openapi-python-client).
@router.post(
    ":json",
    name="register_class_json",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ClassOut,
    dependencies=[ClientDep],
    summary="`register_class` with a JSON body: images base64-encoded",
    responses=responses(400, 401, 403, 409, 413, 415, 422, 503),
    openapi_extra=request_body(RegisterClassJson, "application/json"),
)
def register_class(
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    runtime: RuntimeDep,
    classifier: ClassifierDep,
    producer: ProducerDep,
    thumbnails: ThumbnailsDep,
    scope: TenantScopeDep,
    body: RegisterBodyDep,
) -> ClassOut:
    # Everything is checked before anything is written: a bad upload changes nothing.
    fields = body.fields
    clean_name = validate_name(fields.name)
    clean_hints = validate_words(fields.hints, field="hints", limit=settings.max_hints)
    unknown = unknown_hints(clean_hints, runtime.vocabulary_words.__contains__)
    if unknown:
        raise error(
            422, f"hints not in the model's vocabulary: {', '.join(unknown)} (use common words)"
        )
    clean_confusers = validate_words(fields.confusers, field="confusers", limit=settings.max_hints)
    # Each image is checked and its decoded pixels dropped at once: only the bytes are kept,
    # and the first image's reduced copy for its thumbnail.
    budget = request_budget(settings)
    # The first image is decoded large enough for its thumbnail, kept once the class exists:
    # a thumbnail request then never decodes the upload in this process.
    first = load_image(body.images[0], settings, budget=budget, min_side=THUMBNAIL_SIDE)
    rest = [load_image(image, settings, budget=budget).data for image in body.images[1:]]
    stored = [first.data, *rest]
    negatives = [load_image(image, settings, budget=budget).data for image in body.negative_images]
    replace = fields.replace
    callback_url = checked_callback_url(fields.callback_url, settings)

    try:
        registered = crud.register_class(
            session=session,
            name=clean_name,
            name_key=name_key(clean_name),
            model_id=runtime.model_id,
            tenant=scope or DEFAULT_TENANT,
            images=stored,
            negative_images=negatives,
            hints=clean_hints,
            confusers=clean_confusers,
            replace=replace,
            max_classes=settings.tenant_max_classes,
            callback_url=callback_url,
        )
        session.commit()
    except crud.QuotaExceeded as exceeded:
        raise quota_error(exceeded) from None
    except crud.NameTaken as taken:
        if taken.class_id is None:
            raise error(409, f"a class named {taken.name!r} already exists") from None
        raise error(
            409,
            f"a class named {taken.name!r} already exists (id {taken.class_id}); "
            "send replace=true to replace it",
        ) from None
    row = registered.row
    if registered.replaced_ready:
        classifier.refresh_now()
    thumbnails.keep(row.id, first.image)
    producer.try_send_train(row.id)
    response.headers["Location"] = f"/v1/classes/{row.id}"
    return ClassOut.of(row)


def checked_callback_url(url: str | None, settings: Settings) -> str | None:
    """The callback URL if given and allowed; a 422 otherwise (before anything is written)."""
    if url is None:
        return None
    allowed = settings.webhook_allowed_hosts if settings.webhooks_enabled else []
    problem = callback_url_problem(url, allowed)
    if problem is not None:
        raise error(422, problem)
    return url


def quota_error(exceeded: crud.QuotaExceeded) -> HTTPException:
    return error(
        403,
        f"tenant {exceeded.tenant!r} holds its quota of {exceeded.quota} classes "
        "(TENANT_MAX_CLASSES); delete one before registering another",
    )


@router.get(
    "",
    response_model=ClassList,
    dependencies=[ClientDep],
    summary="List classes (a client key: its own tenant's)",
    responses=responses(401, 403, 422, 503),
)
def list_classes(
    session: SessionDep, caller: CallerDep, page: Annotated[ClassPage, Query()]
) -> ClassList:
    query = select(PersonalizedClass)
    count = select(func.count()).select_from(PersonalizedClass)
    scope = tenant_scope(caller, page.tenant)
    if scope is not None:
        query = query.where(PersonalizedClass.tenant == scope)
        count = count.where(PersonalizedClass.tenant == scope)
    if page.status is not None:
        query = query.where(PersonalizedClass.status == page.status)
        count = count.where(PersonalizedClass.status == page.status)
    rows = session.scalars(
        query.order_by(PersonalizedClass.created_at, PersonalizedClass.id)
        .limit(page.limit)
        .offset(page.offset)
    ).all()
    total = session.scalar(count) or 0
    return ClassList(items=[ClassOut.of(r, diagnostics=False) for r in rows], total=total)


def _get_or_404(session: SessionDep, class_id: str, scope: str | None) -> PersonalizedClass:
    """The class, if the caller's tenant may see it: another tenant's id is a 404 like an
    unknown one, so ids say nothing about who else uses the service."""
    row = session.get(PersonalizedClass, class_id)
    if row is None or (scope is not None and row.tenant != scope):
        raise error(404, f"no class with id {class_id}")
    return row


@router.get(
    "/{class_id}",
    response_model=ClassOut,
    dependencies=[ClientDep],
    summary="One class",
    responses=responses(401, 403, 404, 503),
)
def get_class(session: SessionDep, scope: TenantScopeDep, class_id: str) -> ClassOut:
    return ClassOut.of(_get_or_404(session, class_id, scope))


@router.delete(
    "/{class_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[ClientDep],
    summary="Delete a class (a client key: of its own tenant); a running job is abandoned",
    responses=responses(401, 403, 404, 503),
)
def delete_class(
    session: SessionDep, classifier: ClassifierDep, scope: TenantScopeDep, class_id: str
) -> Response:
    crud.remove_class(session=session, row=_get_or_404(session, class_id, scope))
    session.commit()
    # This process drops it from /classify before answering; every other at its next /classify.
    classifier.refresh_now()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{class_id}/embedding",
    response_model=EmbeddingOut,
    dependencies=[ClientDep],
    summary="Export the learned text feature and token embedding",
    responses=responses(401, 403, 404, 409, 503),
)
def export_embedding(session: SessionDep, scope: TenantScopeDep, class_id: str) -> EmbeddingOut:
    row = _get_or_404(session, class_id, scope)
    if row.status != Status.ready or row.embedding is None:
        raise error(409, f"class {class_id} is {row.status}, not ready")
    return EmbeddingOut.of(row)


@router.get(
    "/{class_id}/thumbnail",
    response_class=Response,
    dependencies=[ClientDep],
    summary="A small JPEG of the class's first image",
    responses={
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the thumbnail",
        },
        **responses(401, 403, 404, 422, 503),
    },
)
def thumbnail(
    session: SessionDep,
    settings: SettingsDep,
    thumbnails: ThumbnailsDep,
    caller: CallerDep,
    class_id: str,
    query: Annotated[ThumbnailSize, Query()],
) -> Response:
    row = _get_or_404(session, class_id, tenant_scope(caller, query.tenant))

    def first_image() -> bytes:
        first = session.scalars(
            select(ClassImage.data)
            .where(ClassImage.class_id == row.id)
            .order_by(ClassImage.position)
            .limit(1)
        ).first()
        if first is None:
            raise error(404, f"class {class_id} has no images")
        return first

    def decode(data: bytes, min_side: int) -> Image.Image:
        from liteembed.images import decode_image

        # The bytes passed the same checks at upload; reduced as decoded, never held full-size.
        return decode_image(data, max_pixels=settings.max_image_pixels, min_side=min_side)

    # A class's images never change (a replacement is a new id), so browsers may keep it.
    return Response(
        thumbnails.jpeg(row.id, query.size, first_image, decode),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=86400"},
    )
