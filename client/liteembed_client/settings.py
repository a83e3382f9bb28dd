"""What the client's command-line verbs read from the environment or `.env`: where the service is
and the key they send. Flags override them. The library classes take these as arguments."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """What the `liteembed` client commands (add, classify, classes, delete, export) read: where
    the service is and the key they send. Flags override them."""

    model_config = SettingsConfigDict(env_prefix="LITEEMBED_", env_file=".env", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    key: SecretStr | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
