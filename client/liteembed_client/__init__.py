"""Python client of the LiteEmbed service (httpx; sync `Client` and asyncio `AsyncClient`).

    from liteembed_client import Client

    with Client("http://127.0.0.1:8000", key="...") as client:
        info = client.register_class("zorb", ["zorb1.png", "zorb2.png"], hints=["star"])
        client.wait_ready(info.id)
        print(client.classify("test.png").top)
        for result in client.classify_many(["a.png", "b.png"]):  # one request
            print(result.top)
        features = client.embed(images=["a.png"], texts=["a sketch of a {zorb}"])

It imports neither torch nor the service: a client machine needs only httpx and pydantic.
"""

from liteembed_client._calls import ImageSource
from liteembed_client.aio import AsyncClient
from liteembed_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    LiteEmbedClientError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    TooManyRequests,
    TrainingFailed,
    Unauthorized,
    UnsupportedMediaType,
    WaitTimeout,
)
from liteembed_client.models import (
    Classification,
    ClassInfo,
    ClassPage,
    Embedding,
    Embeddings,
    Impact,
    Prediction,
    Vocabulary,
)
from liteembed_client.retry import RetryPolicy
from liteembed_client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "ClassInfo",
    "ClassPage",
    "Classification",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Embedding",
    "Embeddings",
    "Forbidden",
    "ImageSource",
    "Impact",
    "InvalidRequest",
    "LiteEmbedClientError",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "TooManyRequests",
    "TrainingFailed",
    "Unauthorized",
    "UnsupportedMediaType",
    "Vocabulary",
    "WaitTimeout",
]
