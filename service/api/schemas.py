"""Response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from service.models import PersonalizedClass, as_utc


class ImpactOut(BaseModel):
    """One of the tenant's classes that this class took exemplars of when it became ready, or
    that took exemplars of this class (`direction`)."""

    class_id: str
    name: str
    direction: Literal["took", "taken_by"] = Field(
        "took",
        description="took: this class took the other's exemplars; taken_by: the other took "
        "this class's",
    )
    taken: int = Field(description="exemplars taken, before any re-learn")
    of: int = Field(description="exemplars scored of the class they belong to")
    relearned: bool = Field(description="the other class was re-learned together with this one")
    remaining: int | None = Field(None, description="exemplars still taken after the re-learn")


class ClassOut(BaseModel):
    id: str
    name: str
    tenant: str
    model: str
    status: str
    progress: float
    attempts: int
    error: str | None
    hints: list[str]
    confusers: list[str]
    dim: int | None
    created_at: datetime
    updated_at: datetime
    threshold: float | None = Field(
        None,
        description="raw cosine at or above which a prediction of this class is `accepted` "
        "(null until ready, or for a class learned before thresholds: the model's plain-word "
        "threshold applies)",
    )
    impact: list[ImpactOut] = Field(
        default_factory=list,
        description="the tenant's classes whose exemplars this class took when it became ready",
    )
    diagnostics: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: PersonalizedClass, *, diagnostics: bool = True) -> ClassOut:
        return cls(
            id=row.id,
            name=row.name,
            tenant=row.tenant,
            model=row.model_id,
            status=row.status,
            progress=round(float(row.progress or 0.0), 4),
            attempts=row.attempts,
            error=row.error,
            hints=list(row.hints or []),
            confusers=list(row.confusers or []),
            dim=row.dim,
            created_at=as_utc(row.created_at),  # type: ignore[arg-type]
            updated_at=as_utc(row.updated_at),  # type: ignore[arg-type]
            threshold=row.threshold,
            impact=[ImpactOut.model_validate(item) for item in row.impact or []],
            diagnostics=row.diagnostics if diagnostics else None,
        )


class ClassList(BaseModel):
    items: list[ClassOut]
    total: int


class EmbeddingOut(BaseModel):
    model: str
    dim: int
    templates: list[str]
    text_feature: list[float]
    token_embedding: list[float]
    threshold: float | None = Field(
        None, description="the class's acceptance threshold on raw cosine with `text_feature`"
    )

    @classmethod
    def of(cls, row: PersonalizedClass) -> EmbeddingOut:
        assert row.embedding is not None and row.token_embedding is not None
        return cls(
            model=row.model_id,
            threshold=row.threshold,
            dim=int(row.dim or 0),
            templates=list(row.templates or []),
            text_feature=np.frombuffer(row.embedding, dtype=np.float32).tolist(),
            token_embedding=np.frombuffer(row.token_embedding, dtype=np.float32).tolist(),
        )


class Prediction(BaseModel):
    label: str
    score: float = Field(
        description="softmax probability among the labels scored (the tenant's classes, or the "
        "given `labels`): how this label ranks against the others, not whether it matches"
    )
    class_id: str | None
    similarity: float = Field(description="raw cosine of the image and the label's text feature")
    accepted: bool = Field(
        description="`similarity` is at or above the label's acceptance threshold (a registered "
        "class's own, the model's plain-word threshold otherwise) and, for a registered class, "
        "no concept the model knows is nearer (`nearer_known`): the image is taken to be this"
    )
    nearer_known: str | None = Field(
        None,
        description="for a registered class: a word of the model's reference bank (a concept "
        "the model knows) nearer to the image than this class by more than the background "
        "margin; the prediction is then not `accepted`. Null otherwise, for plain words, and "
        "where the service runs without the rule",
    )


class ClassifyOut(BaseModel):
    model: str
    predictions: list[Prediction]


class ImagePredictions(BaseModel):
    predictions: list[Prediction]


class ClassifyBatchOut(BaseModel):
    """The answer to `images`: one prediction list per image, in the order sent."""

    model: str
    results: list[ImagePredictions]


class EmbeddingsOut(BaseModel):
    model: str
    dim: int
    images: list[list[float]] = Field(description="one L2-normalised feature per image, in order")
    texts: list[list[float]] = Field(description="one L2-normalised feature per text, in order")


class ModelOut(BaseModel):
    """A model as OpenAI's `GET /v1/models` lists one."""

    id: str
    object: str = "model"
    created: int = Field(description="Unix time the serving process started")
    owned_by: str = "liteembed"
    dim: int = Field(description="width of its embeddings")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelOut]


class OpenAIEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="the L2-normalised feature; with `encoding_format=base64`, its float32 "
        "little-endian bytes, base64-encoded"
    )


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsOut(BaseModel):
    """The answer to an OpenAI-shaped request (`input`), in OpenAI's shape."""

    object: str = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class VocabularyOut(BaseModel):
    model: str
    words: list[str] = Field(description="words the model knows, usable as `hints`, sorted")
    total: int = Field(description="words matching the prefix, of which `words` is the first page")


# --- request bodies ---------------------------------------------------------------------------
# The routes read their bodies themselves (service/api/bodies.py), as multipart or JSON; these
# models are what the OpenAPI document declares for each (service/api/openapi.py adds them) and
# validate the fields that are not images.

# A multipart file part, typed the way client generators read as a file upload.
Upload = Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary"})]
# An image inside a JSON body: its bytes, base64-encoded (standard alphabet, padded; a
# `data:image/...;base64,` prefix is allowed). URLs are refused: the service fetches nothing.
Base64Image = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "description": "the image file's bytes, base64-encoded (no URLs)",
        }
    ),
]


class RegisterFields(BaseModel):
    name: str = Field(description="the class name (unique per model and tenant)")
    hints: list[str] | None = Field(None, description="coarse category words")
    confusers: list[str] | None = Field(None, description="look-alike classes")
    replace: bool = Field(False, description="replace a class of the same name")
    callback_url: str | None = Field(
        None,
        description="where `class.ready` / `class.failed` are delivered (signed webhooks); "
        "only hosts in the service's WEBHOOK_ALLOWED_HOSTS",
    )


class BodyRegisterClass(RegisterFields):
    model_config = ConfigDict(title="Body_register_class")
    images: list[Upload] = Field(description="1..MAX_IMAGES example images")
    negative_images: list[Upload] | None = Field(
        None,
        description="0..MAX_IMAGES images that are not this class (look-alikes): the class is "
        "learned not to take them",
    )


class RegisterClassJson(RegisterFields):
    model_config = ConfigDict(title="RegisterClassJson", extra="forbid")
    images: list[Base64Image] = Field(description="1..MAX_IMAGES example images, base64")
    negative_images: list[Base64Image] | None = Field(
        None, description="0..MAX_IMAGES images that are not this class, base64"
    )


class ClassifyFields(BaseModel):
    labels: list[str] | None = Field(
        None, description="candidate labels: registered class names or plain words"
    )
    top_k: int = Field(5, ge=1, le=1000)
    abstain: bool = Field(
        False,
        description="leave out predictions that are not `accepted` (after the top-k): an image "
        "of none of the labels gets an empty list",
    )


class BodyClassify(ClassifyFields):
    model_config = ConfigDict(title="Body_classify")
    image: Upload | None = Field(None, description="one image; the answer is `ClassifyOut`")
    images: list[Upload] | None = Field(
        None,
        description="1..MAX_CLASSIFY_IMAGES images (instead of `image`); the answer is "
        "`ClassifyBatchOut`, one prediction list per image in order",
    )


class ClassifyJson(ClassifyFields):
    model_config = ConfigDict(title="ClassifyJson", extra="forbid")
    image: Base64Image | None = Field(None, description="one image; the answer is `ClassifyOut`")
    images: list[Base64Image] | None = Field(
        None,
        description="1..MAX_CLASSIFY_IMAGES images (instead of `image`); the answer is "
        "`ClassifyBatchOut`",
    )


class EmbeddingsJson(BaseModel):
    model_config = ConfigDict(title="EmbeddingsJson", extra="forbid")
    images: list[Base64Image] = Field(
        default_factory=list, description="0..MAX_CLASSIFY_IMAGES images, base64"
    )
    texts: list[str] = Field(
        default_factory=list,
        description="0..MAX_LABELS texts; `{name}` puts the learned word of the registered "
        "class `name` into the prompt, `{{` and `}}` are literal braces",
    )


class OpenAIEmbeddingsJson(BaseModel):
    """OpenAI's embeddings request, as its clients send it to `POST /v1/embeddings`."""

    model_config = ConfigDict(title="OpenAIEmbeddingsJson", extra="forbid")
    input: str | list[str] = Field(
        description="a text or a list of them; `{name}` is a registered class's learned word, "
        "and an item that is a `data:image/...;base64,` URI is embedded as an image"
    )
    model: str | None = Field(None, description="the served model's id (`GET /v1/models`)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="only the model's own width is served")
    user: str | None = Field(None, description="accepted and ignored")


BUNDLE_FORMAT = "liteembed.class"
BUNDLE_VERSION = 1


class ClassBundle(BaseModel):
    """A class that can leave its deployment: `GET /v1/classes/{id}/export` writes it,
    `POST /v1/classes:import` reads it. The learned word is used as is on the same model; on
    another, the class is learned again from `images`."""

    model_config = ConfigDict(title="ClassBundle", extra="forbid")
    format: Literal["liteembed.class"] = BUNDLE_FORMAT
    version: int = Field(BUNDLE_VERSION, description="bumped on incompatible changes")
    name: str
    model: str = Field(description="the id of the model the word was learned on")
    hints: list[str] = Field(default_factory=list)
    confusers: list[str] = Field(default_factory=list)
    threshold: float | None = Field(None, description="its acceptance threshold (raw cosine)")
    templates: list[str] | None = None
    dim: int | None = Field(None, description="width of `text_feature`")
    text_feature: list[float] | None = Field(None, description="null: exported before ready")
    token_embedding: list[float] | None = None
    images: list[Base64Image] = Field(
        default_factory=list, description="its example images (empty: exported images=false)"
    )
    negative_images: list[Base64Image] = Field(default_factory=list)
    exported_at: datetime | None = None

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != BUNDLE_VERSION:
            raise ValueError(
                f"bundle version {version} is not supported (this service reads {BUNDLE_VERSION})"
            )
        return version


# Every request body the document declares, as components named by their titles.
REQUEST_BODIES: tuple[type[BaseModel], ...] = (
    BodyRegisterClass,
    RegisterClassJson,
    BodyClassify,
    ClassifyJson,
    EmbeddingsJson,
    ClassBundle,
)
