"""pipelines.settings (SPEC §3): required variables, one-line errors naming them, `.env`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.settings import SettingsError, get_settings, libpq_url, load_settings

VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BROKER",
    "KAFKA_TOPIC",
    "JWT_SECRET",
    "AUTH_DISABLED",
    "DATA_LAKE_DIR",
    "RFM_START_DATE",
)
VALID = {
    "DATABASE_URL": "postgresql://app:pw@db.example:5432/cc",
    "REDIS_URL": "redis://cache.example:6379/0",
    "KAFKA_BROKER": "k1.example:9092",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No inherited settings, and a working directory without a `.env` file."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _set(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "KAFKA_BROKER"])
def test_missing_required_variable_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    _set(monkeypatch, {k: v for k, v in VALID.items() if k != missing})
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{missing} is not set")
    assert "\n" not in message
    for other in set(VALID) - {missing}:
        assert other not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KAFKA_BROKER", "localhost"),
        ("KAFKA_BROKER", "k1:9092,k2"),
        ("KAFKA_BROKER", "k1:port"),
        ("KAFKA_BROKER", " , "),
        ("DATABASE_URL", "mysql://app@db/cc"),
        ("DATABASE_URL", "db.example:5432/cc"),
        ("REDIS_URL", "http://cache.example:6379"),
        ("RFM_START_DATE", "2026-13-01"),
        ("AUTH_DISABLED", "maybe"),
    ],
)
def test_malformed_variable_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    _set(monkeypatch, {**VALID, name: value})
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{name} is malformed")
    assert "\n" not in message


def test_defaults_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {**VALID, "KAFKA_BROKER": "k1.example:9092, k2.example:9093"})
    settings = load_settings()
    assert settings.kafka_topic == "topic_user_actions"
    assert settings.kafka_broker == ["k1.example:9092", "k2.example:9093"]
    assert settings.data_lake_dir == Path(".local/lake")
    assert settings.rfm_start_date == dt.date(2026, 1, 1)
    assert settings.jwt_secret is None
    assert settings.auth_disabled is False


def test_explicit_values_and_secret_is_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        {
            **VALID,
            "KAFKA_TOPIC": "other_topic",
            "JWT_SECRET": "s3cr3t-value",
            "RFM_START_DATE": "2025-06-30",
            "DATA_LAKE_DIR": "/srv/lake",
        },
    )
    settings = load_settings()
    assert settings.kafka_topic == "other_topic"
    assert settings.rfm_start_date == dt.date(2025, 6, 30)
    assert settings.data_lake_dir == Path("/srv/lake")
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings)


def test_dot_env_file_in_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# local settings\n"
        "DATABASE_URL=postgresql://from-dotenv@127.0.0.1:5432/cc\n"
        "REDIS_URL=redis://127.0.0.1:6379/1\n"
        "KAFKA_BROKER=127.0.0.1:19092\n"
        "KAFKA_TOPIC=dotenv_topic\n"
    )
    settings = load_settings()
    assert settings.database_url == "postgresql://from-dotenv@127.0.0.1:5432/cc"
    assert settings.redis_url == "redis://127.0.0.1:6379/1"
    assert settings.kafka_broker == ["127.0.0.1:19092"]
    assert settings.kafka_topic == "dotenv_topic"

    # the process environment wins over .env
    monkeypatch.setenv("KAFKA_TOPIC", "env_topic")
    assert load_settings().kafka_topic == "env_topic"


def test_malformed_value_in_dot_env_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://a@b/c\nREDIS_URL=redis://r\nKAFKA_BROKER=no-port-here\n"
    )
    with pytest.raises(SettingsError, match=r"^KAFKA_BROKER is malformed"):
        load_settings()


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, VALID)
    first = get_settings()
    monkeypatch.setenv("KAFKA_TOPIC", "changed")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().kafka_topic == "changed"


def test_database_url_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {**VALID, "DATABASE_URL": "postgresql+psycopg://u:p@h:5432/d"})
    settings = load_settings()
    assert settings.psycopg_dsn == "postgresql://u:p@h:5432/d"
    assert settings.sqlalchemy_url == "postgresql+psycopg://u:p@h:5432/d"
    assert libpq_url("postgres://u@h/d") == "postgresql://u@h/d"
