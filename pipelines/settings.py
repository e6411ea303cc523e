"""The one settings object of the stack (SPEC §3), read from the environment and `.env`.

Built lazily by :func:`get_settings` (cached), never at import time, so tests and
tools can set the environment first. A missing or malformed variable raises
:class:`SettingsError`, whose message is one line naming the variable.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _split_brokers(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str = Field(description="Postgres URL of the application database")
    redis_url: str = Field(description="Redis URL (streak counters, online segment copy)")
    kafka_broker: Annotated[list[str], NoDecode] = Field(
        description="Comma-separated host:port list of Kafka bootstrap servers"
    )
    kafka_topic: str = Field(default="topic_user_actions", min_length=1, max_length=249)
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret for API bearer tokens (required by the API)"
    )
    auth_disabled: bool = Field(default=False, description="Explicitly run the API without auth")
    data_lake_dir: Path = Field(default=Path(".local/lake"))
    rfm_start_date: dt.date = Field(default=dt.date(2026, 1, 1))
    # API (serving) tunables: every dependency call has a bound
    api_publish_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="POST /api/actions: max wait for the broker's ack"
    )
    api_db_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="API: max wait for a Postgres connection/query"
    )
    api_redis_timeout_s: float = Field(
        default=0.25, gt=0, le=10, description="API: max wait for a Redis streak read"
    )
    recommendation_policy_file: Path | None = Field(
        default=None, description="JSON file replacing the default recommendation policy table"
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("kafka_broker", mode="before")
    @classmethod
    def _brokers(cls, value: object) -> object:
        return _split_brokers(value)

    @field_validator("kafka_broker")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one host:port")
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{item!r} is not host:port")
        return value

    @property
    def psycopg_dsn(self) -> str:
        """The database URL in the form libpq/psycopg accept."""
        return libpq_url(self.database_url)

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL for SQLAlchemy/Alembic (psycopg 3 driver)."""
        return "postgresql+psycopg://" + self.psycopg_dsn.split("://", 1)[1]


def libpq_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix so libpq/psycopg accept the URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        if first["type"] == "missing":
            raise SettingsError(f"{name} is not set (see .env.example)") from None
        raise SettingsError(f"{name} is malformed: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
