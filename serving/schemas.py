"""Request and response bodies of the API (pydantic), with the examples shown at /docs.

Request models are strict (JSON types as they come: ``"5"`` is not an integer, ``true`` is
not a number) and refuse unknown fields. ``POST /api/actions`` is then checked by the same
pure validator the ingestion uses (:mod:`pipelines.domain.events`), which has the last word.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pipelines.domain.events import MAX_ACTION_TYPE_LEN, MAX_USER_ID

UserId = Annotated[int, Field(ge=1, le=MAX_USER_ID, description="User id (bigint, >= 1)")]


def _printable(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


class ActionIn(BaseModel):
    """A user action (SPEC §4); ``action_timestamp`` defaults to the server's time."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": 42,
                    "action_type": "SPEND_CYBER_TOKENS",
                    "action_timestamp": "2026-05-01T12:00:00Z",
                    "metadata": {"spent_tokens": 150, "item": "skin_17"},
                },
                {"user_id": 42, "action_type": "LOGIN"},
            ]
        },
    )

    user_id: UserId
    action_type: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_ACTION_TYPE_LEN),
        Field(description="Non-empty, at most 64 characters"),
    ]
    action_timestamp: str | None = Field(
        default=None,
        max_length=64,
        description="ISO-8601 date-time (`2026-05-01T12:00:00Z`); without an offset it is "
        "UTC; at most 24 h ahead. Defaults to the server's time.",
        # no `format: date-time`: that is RFC 3339, which requires the offset SPEC §4 makes
        # optional; clients would then wrongly refuse valid timestamps
        json_schema_extra={"examples": ["2026-05-01T12:00:00Z", "2026-05-01T12:00:00"]},
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="JSON object (default {}); SPEND_CYBER_TOKENS needs "
        "`spent_tokens` >= 0, EARN_CYBER_TOKENS needs `earned_tokens` >= 0; "
        "nested at most 32 levels.",
    )


class ActionAccepted(BaseModel):
    """The broker stored the action: where it is."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"topic": "topic_user_actions", "partition": 3, "offset": 1207}]
        }
    )

    topic: str
    partition: int
    offset: int


class SiteVisitIn(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": 42, "source": "webapp_button"}]},
    )

    user_id: UserId
    source: Annotated[
        str,
        StringConstraints(min_length=1, max_length=64),
        Field(description="Where the visit came from; non-empty, at most 64 characters"),
    ]

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return _printable(value)


class SiteVisitOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "user_id": 42,
                    "source": "webapp_button",
                    "visit_timestamp": "2026-05-01T12:00:00.123456Z",
                }
            ]
        }
    )

    id: int
    user_id: int
    source: str
    visit_timestamp: datetime = Field(description="Server time of the visit (UTC)")


class RecommendationOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": 42,
                    "rfm_group": "Whale",
                    "risk_profile": "High-Risk",
                    "streak_count": 3,
                    "recommended_reward_probability": 0.78,
                    "recommended_time_window": "next 2 hours",
                }
            ]
        }
    )

    user_id: int
    rfm_group: str = Field(description='The published segment, "Low" when not set')
    risk_profile: str = Field(description='The risk profile, "Unknown" when not set')
    streak_count: int = Field(ge=0, description="Live from Redis; 0 when missing or unreadable")
    recommended_reward_probability: float = Field(ge=0, le=1)
    recommended_time_window: str


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "healthy"}]})

    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {"postgres": "ok", "redis": "ok", "kafka": "ok", "segments": "ok"},
                }
            ]
        }
    )

    status: str
    checks: dict[str, str]
