"""Every setting of the service and the workers, read from the environment or `.env`.

This is the only module that reads the environment: everything else receives a `Settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

QUEUE_NAME = "liteembed-train"
TRAIN_ACTOR_NAME = "train_class"

# API keys: long enough not to be guessed, and not a value copied from an example.
MIN_KEY_LENGTH = 16
MAKE_KEY_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
_PLACEHOLDER_PREFIXES = ("change-me", "changeme", "change_me", "replace-me", "your-", "<")
_PLACEHOLDER_WORDS = ("example", "placeholder", "secret", "password")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LITEEMBED_",
        env_file=".env",
        extra="ignore",
        protected_namespaces=(),
        # A rejected value may be a key or a URL with a password: errors never repeat it.
        hide_input_in_errors=True,
    )

    # Storage and queue.
    database_url: str = "sqlite:///./liteembed.db"
    redis_url: str | None = None
    redis_namespace: str = "liteembed"

    # Model.
    model: str = "liteembed-mini-v2"
    pretrained: str = "default"
    device: str = "auto"
    precision: str = "auto"
    cache_dir: Path = Path("./.liteembed-cache")
    # torch's CPU threads in this process (unset: torch's default, one per core). On a CPU shared
    # with other busy processes, 1 can be many times faster: a wide OpenMP team spin-waits for
    # cores that another process holds (benchmarks/perf measures both).
    torch_threads: int | None = Field(default=None, ge=1)
    seed: int = 0
    # A fixed step budget (unset: the engine picks the step count by held-out accuracy).
    train_steps: int | None = None
    # Any other OptimizationConfig field, as JSON: '{"early_stopping": false, "lr": 0.05}'.
    train_options: dict[str, Any] = Field(default_factory=dict)

    # Known concepts as competitors (liteembed.background): a prediction of a registered class is
    # not accepted when one of the reference bank's words is nearer to the image, in raw cosine,
    # by more than BACKGROUND_MARGIN. Unset: the model's margin chosen on validation (a model
    # without one: no rule). BACKGROUND_COMPETITORS=false turns the rule off whatever the margin.
    background_competitors: bool = True
    background_margin: float | None = Field(default=None, ge=-1.0, le=2.0)

    # Auth: comma-separated lists of keys of at least MIN_KEY_LENGTH characters, none of them a
    # placeholder. None at all means the service runs open, on 127.0.0.1 unless ALLOW_OPEN.
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    client_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Lets `serve` without keys bind a non-loopback address (a container's 0.0.0.0): anyone who
    # reaches the port may register and delete classes. For local experiments only.
    allow_open: bool = False
    # Keys issued through /v1/keys are looked up in the database and remembered this long by
    # each API process: a revocation takes effect everywhere within this time.
    key_cache_seconds: float = Field(default=0.5, ge=0, le=1.0)
    # Optional secret mixed into the stored hashes of issued keys (a stolen database alone then
    # cannot even test guesses). Changing it invalidates every issued key.
    key_hash_secret: SecretStr | None = None

    # Upload limits (checked before anything is written).
    max_images: int = 32
    max_image_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 36_000_000
    # All images of one request together, as decoded (JPEG at its reduced decoding scale, other
    # formats at full size): four images at the per-image cap. Bounds a request's decoding work.
    max_request_pixels: int = Field(default=144_000_000, ge=1)
    max_hints: int = 16
    max_labels: int = 256
    # Images one /v1/classify or /v1/embeddings call may carry; each goes through the
    # micro-batcher, so a full call is one or two model batches.
    max_classify_images: int = Field(default=32, ge=1)
    # Each API process keeps the thumbnails it made (a reduced copy of each class's first image
    # and the JPEGs it answered) within this many bytes, least recently used out first.
    thumbnail_cache_bytes: int = Field(default=32 * 1024 * 1024, ge=0)

    # Jobs.
    # A worker trains up to this many queued classes of its model together, in one batch.
    train_batch_max: int = Field(default=8, ge=1)
    max_attempts: int = 3
    job_time_limit_seconds: int = 3600
    job_max_retries: int = 2
    heartbeat_seconds: float = 2.0
    stale_after_seconds: float = 120.0
    queued_resend_seconds: float = 300.0
    reconcile_interval_seconds: float = 30.0
    # How long deleted classes stay in the removal log that API processes follow. A process whose
    # class matrix is older than the log rebuilds it in full (slow at 10^5 classes, but correct).
    removal_log_retention_seconds: float = Field(default=3600.0, gt=0)
    # Standalone queue workers write a heartbeat to Redis this often; one silent for longer than
    # WORKER_ABSENT_AFTER_SECONDS counts as gone (/readyz warns, /metrics, worker healthcheck).
    worker_heartbeat_seconds: float = Field(default=10.0, gt=0)
    worker_absent_after_seconds: float = Field(default=60.0, gt=0)
    broker_heartbeat_timeout_ms: int = 60_000
    broker_maintenance_chance: int = 1000

    # API.
    classifier_refresh_seconds: float = 1.0
    # The class matrix in memory: float32, or float16 for half the memory (scores change in the
    # fourth decimal).
    classifier_dtype: Literal["float32", "float16"] = "float32"
    # Each /classify reads the class generation first and, when this process's class matrix is
    # behind, brings it up to date before scoring: a class any API process answered `ready` for
    # (or deleted) is scored accordingly. Off: classes show up within CLASSIFIER_REFRESH_SECONDS.
    classify_checks_generation: bool = True
    # When that read fails because the database is unreachable, /classify (and `{name}` in
    # /v1/embeddings) answer from the class matrix this process holds, marked
    # `X-LiteEmbed-Stale: true`; false: they answer 503 like the routes that write.
    classify_during_database_outage: bool = True
    # /classify micro-batching: one model thread encodes up to this many images at once...
    classify_max_batch: int = Field(default=32, ge=1)
    # ...waiting at most this long for more requests, and only while more are on their way.
    classify_max_wait_ms: float = Field(default=5.0, ge=0)
    # Threads decoding and preprocessing /classify images before they reach the model thread.
    classify_preprocess_threads: int = Field(default=2, ge=1)
    log_level: str = "INFO"
    # text: one line per record; json: one JSON object per line (time, level, logger, process,
    # request_id, message). The same in every process, uvicorn's workers included.
    log_format: Literal["text", "json"] = "text"
    # Where `serve` keeps Prometheus' per-process metric files, so every API process reports the
    # same totals; unset: a fresh temporary directory per `serve`, removed at exit.
    metrics_dir: Path | None = None
    # With a key, /metrics answers only a scrape that sends it (or an ADMIN_KEYS key) as a
    # Bearer token. Without one it is open, and shows what the tenants stored (classes by
    # status) only to an admin key, or to everyone when the service runs without keys.
    metrics_key: SecretStr | None = None

    # Browser apps on these origins may call the API (CORS; comma-separated, e.g.
    # "https://app.example.com"; "*" allows any origin). Empty: no cross-origin access.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Requests each API key may make, in the `limits` library's notation ("100/minute",
    # "10/second;500/hour"); kept in Redis when REDIS_URL is set, so the limit holds across API
    # processes. Unset: no limit.
    rate_limit: str | None = None
    # Classes one tenant may hold (every status, every model). Unset: no quota.
    tenant_max_classes: int | None = Field(default=None, ge=1)

    # Webhooks: `callback_url` at registration is allowed only for these hosts ("host" or
    # "host:port", comma-separated); empty: refused, so the service never sends requests to
    # addresses its callers choose.
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Signs every delivery (Standard Webhooks), in the `whsec_<base64>` form.
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # A failed delivery is tried again after 1, 2, 4... times this, up to WEBHOOK_RETRY_MAX_SECONDS
    # between tries, WEBHOOK_MAX_ATTEMPTS times in all.
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_max_attempts: int = Field(default=12, ge=1)
    # How often each API process looks for deliveries that are due.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)

    # The reference bank grown from traffic (service/bank/): for these tenants (comma-separated
    # ids, "*" for every tenant; empty: nobody, the default), each /v1/classify image whose top
    # label is a plain vocabulary word answered with a softmax score of at least BANK_MIN_SCORE
    # and accepted by the plain-word threshold has its feature (never the image) kept under that
    # word, at most BANK_PER_WORD per model, tenant and word (the newest), and training draws
    # the images of a new class's nearest words from it.
    bank_from_traffic_tenants: Annotated[list[str], NoDecode] = Field(default_factory=list)
    bank_min_score: float = Field(default=0.9, ge=0, le=1)
    bank_per_word: int = Field(default=16, ge=1, le=1024)

    @field_validator(
        "cors_origins", "webhook_allowed_hosts", "bank_from_traffic_tenants", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("bank_from_traffic_tenants")
    @classmethod
    def _valid_bank_tenants(cls, tenants: list[str]) -> list[str]:
        import re

        from service.models import TENANT_PATTERN

        for tenant in tenants:
            if tenant != "*" and not re.fullmatch(TENANT_PATTERN, tenant):
                raise ValueError(
                    f"LITEEMBED_BANK_FROM_TRAFFIC_TENANTS: {tenant!r} is not a tenant id "
                    "(lower-case letters, digits, '-' and '_') nor '*'"
                )
        return tenants

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: list[str]) -> list[str]:
        return [host.lower() for host in hosts]

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _empty_rate_limit(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    f"LITEEMBED_RATE_LIMIT {value!r} is not a rate limit such as '100/minute'"
                ) from None
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _valid_webhook_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and webhook_secret_bytes(secret.get_secret_value()) is None:
            raise ValueError(
                "LITEEMBED_WEBHOOK_SECRET must be 'whsec_' and the base64 of at least 24 random "
                'bytes; make one with: python -c "import base64, secrets; '
                "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
            )
        return secret

    @field_validator("admin_keys", "client_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("admin_keys", "client_keys")
    @classmethod
    def _real_keys(cls, keys: list[str], info: ValidationInfo) -> list[str]:
        # The message names the setting and the key's position, never the key itself.
        setting = f"LITEEMBED_{(info.field_name or '').upper()}"
        for position, key in enumerate(keys, start=1):
            problem = key_problem(key)
            if problem:
                raise ValueError(
                    f"{setting}: key {position} {problem}. Make a key with: {MAKE_KEY_COMMAND}"
                )
        return keys

    @field_validator("metrics_key")
    @classmethod
    def _real_metrics_key(cls, key: SecretStr | None) -> SecretStr | None:
        problem = key_problem(key.get_secret_value()) if key is not None else None
        if problem:
            raise ValueError(
                f"LITEEMBED_METRICS_KEY {problem}. Make a key with: {MAKE_KEY_COMMAND}"
            )
        return key

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty LITEEMBED_REDIS_URL= in a compose file means "no Redis", not an invalid URL.
        return None if value == "" else value

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> Settings:
        if self.webhook_allowed_hosts and self.webhook_secret is None:
            raise ValueError(
                "LITEEMBED_WEBHOOK_ALLOWED_HOSTS is set but LITEEMBED_WEBHOOK_SECRET is not: "
                "every delivery is signed"
            )
        return self

    def bank_records(self, tenant: str) -> bool:
        """Whether `tenant`'s /v1/classify traffic grows the reference bank."""
        tenants = self.bank_from_traffic_tenants
        return "*" in tenants or tenant in tenants

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self.webhook_allowed_hosts) and self.webhook_secret is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.admin_keys or self.client_keys)

    @property
    def embedded_worker(self) -> bool:
        return self.redis_url is None


def webhook_secret_bytes(secret: str) -> bytes | None:
    """The key of a `whsec_<base64>` webhook secret (None: not one)."""
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        return None
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= 24 else None


def key_problem(key: str) -> str | None:
    """Why `key` must not be an API key (None: it may)."""
    folded = key.casefold()
    if folded.startswith(_PLACEHOLDER_PREFIXES) or any(w in folded for w in _PLACEHOLDER_WORDS):
        return "is a placeholder, not a key"
    if len(key) < MIN_KEY_LENGTH:
        return f"is shorter than {MIN_KEY_LENGTH} characters"
    if len(set(key)) < 4:  # "aaaaaaaaaaaaaaaa", "0000000000000000"
        return "repeats too few characters to be a key"
    return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
