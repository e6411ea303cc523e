"""The user-action event contract (SPEC §4): pure validation, shared by ingestion and the API.

A Kafka record value is UTF-8 JSON::

    {"user_id": 42, "action_type": "SPEND_CYBER_TOKENS",
     "action_timestamp": "2026-05-01T12:00:00+00:00", "metadata": {"spent_tokens": 150}}

Rules:

- ``user_id``: a JSON integer >= 1 that fits a Postgres ``bigint`` (``true``, ``5.0`` and
  ``"5"`` are not integers).
- ``action_type``: a non-blank string of at most 64 characters.
- ``action_timestamp``: an ISO-8601 string; without an offset it is UTC; more than
  24 hours ahead of ``now`` (ingestion time) is invalid. Stored converted to UTC.
- ``metadata``: a JSON object, optional (missing or ``null`` means ``{}``), nested at most
  :data:`MAX_METADATA_DEPTH` levels. ``SPEND_CYBER_TOKENS`` needs
  ``metadata.spent_tokens`` and ``EARN_CYBER_TOKENS`` needs ``metadata.earned_tokens``:
  a finite, non-negative JSON number.
- Unknown top-level fields are rejected (they would otherwise be silently lost).
- The whole record is at most :data:`MAX_EVENT_BYTES` bytes.

Anything a valid event holds is storable as-is by Postgres: strings that Postgres text and
``jsonb`` refuse (the NUL character) are rejected here, so a valid record can never make
the ingestion batch fail and block its partition.

The module is pure (stdlib + orjson): no I/O, no clock; callers pass ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

__all__ = [
    "EARN_CYBER_TOKENS",
    "FUTURE_TOLERANCE",
    "MAX_ACTION_TYPE_LEN",
    "MAX_EVENT_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_USER_ID",
    "SPEND_CYBER_TOKENS",
    "EventFields",
    "EventValidationError",
    "ValidEvent",
    "check_event",
    "decode_event",
    "orjson_checker",
    "parse_event",
    "validate_event_obj",
]

MAX_ACTION_TYPE_LEN: Final = 64
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_METADATA_DEPTH: Final = 32
MAX_TIMESTAMP_LEN: Final = 64
MAX_USER_ID: Final = 2**63 - 1  # Postgres bigint
FUTURE_TOLERANCE: Final = timedelta(hours=24)

SPEND_CYBER_TOKENS: Final = "SPEND_CYBER_TOKENS"
EARN_CYBER_TOKENS: Final = "EARN_CYBER_TOKENS"

#: action types whose metadata must carry a non-negative token amount, and its key
REQUIRED_AMOUNTS: Final[dict[str, str]] = {
    SPEND_CYBER_TOKENS: "spent_tokens",
    EARN_CYBER_TOKENS: "earned_tokens",
}

_FIELDS: Final = frozenset({"user_id", "action_type", "action_timestamp", "metadata"})
_REASON_VALUE_CHARS: Final = 40
_EMPTY: Final[dict[str, Any]] = {}
# JSON text deeper than MAX_METADATA_DEPTH needs more than that many "{"/"[" and as many
# closing brackets, so shorter text cannot be too deep
_DEPTH_PROOF_LEN: Final = 2 * MAX_METADATA_DEPTH + 1


class EventValidationError(ValueError):
    """A record breaks the event contract.

    ``field`` names the offending field (``"user_id"``, ``"metadata.spent_tokens"``, or
    ``"$"`` for the record as a whole); ``reason`` says what is wrong. ``str(exc)`` is one
    line: ``"<field>: <reason>"`` (just the reason for ``"$"``).
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(reason if field == "$" else f"{field}: {reason}")


@dataclass(frozen=True, slots=True)
class ValidEvent:
    """A record that satisfies the contract; ``action_timestamp`` is tz-aware UTC."""

    user_id: int
    action_type: str
    action_timestamp: datetime
    metadata: dict[str, Any]

    def metadata_json(self) -> str:
        """The metadata as compact JSON text (what goes into the ``jsonb`` column)."""
        return orjson.dumps(self.metadata).decode()


def _show(value: object) -> str:
    """A short, single-line rendering of an offending value for error reasons."""
    text = repr(value)
    if len(text) > _REASON_VALUE_CHARS:
        text = text[: _REASON_VALUE_CHARS - 3] + "..."
    return text


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_json_value(value: object, path: str, depth: int) -> None:
    """Exact (slow-path) check of a metadata value: depth bound, no NUL, JSON types only."""
    if isinstance(value, str):
        if "\x00" in value:
            raise EventValidationError(path, "contains a NUL character (\\u0000)")
    elif isinstance(value, dict):
        if depth > MAX_METADATA_DEPTH:
            raise EventValidationError(path, f"nested deeper than {MAX_METADATA_DEPTH} levels")
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventValidationError(path, f"object key {_show(key)} is not a string")
            if "\x00" in key:
                raise EventValidationError(path, "object key contains a NUL character (\\u0000)")
            _check_json_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        if depth > MAX_METADATA_DEPTH:
            raise EventValidationError(path, f"nested deeper than {MAX_METADATA_DEPTH} levels")
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise EventValidationError(path, "is not a finite number")
    elif value is not None and not isinstance(value, int):  # bool is an int
        raise EventValidationError(path, f"{_type_name(value)} is not a JSON value")


def _metadata_json(metadata: dict[str, Any], *, from_orjson: bool) -> bytes:
    """Serialize metadata, proving it is storable as ``jsonb`` (fast path first).

    ``from_orjson``: the value was decoded by ``orjson.loads``, so it holds only JSON types
    and finite floats; otherwise (e.g. a body decoded by ``json.loads``, which accepts
    ``NaN``) every value is walked, since ``orjson.dumps`` would silently write NaN as null.
    """
    if not from_orjson:
        _check_json_value(metadata, "metadata", 1)
    try:
        text = orjson.dumps(metadata)
    except (TypeError, orjson.JSONEncodeError):
        # non-str keys, non-JSON values, too deep for orjson: let the exact walk name it
        _check_json_value(metadata, "metadata", 1)
        raise EventValidationError("metadata", "is not serializable as JSON") from None
    # Fast path: fewer brackets than the depth bound proves the bound; no escaped NUL
    # proves no NUL. Otherwise walk exactly (brackets or "\u0000" may sit inside strings).
    if b"\\u0000" in text or text.count(b"{") + text.count(b"[") > MAX_METADATA_DEPTH:
        _check_json_value(metadata, "metadata", 1)
    return text


def _check_amount(metadata: dict[str, Any], key: str) -> None:
    field = f"metadata.{key}"
    if key not in metadata:
        raise EventValidationError(field, "is required")
    amount = metadata[key]
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise EventValidationError(field, f"must be a number, got {_type_name(amount)}")
    if isinstance(amount, float) and not math.isfinite(amount):
        raise EventValidationError(field, "must be a finite number")
    if amount < 0:
        raise EventValidationError(field, f"must be >= 0, got {_show(amount)}")


def _parse_timestamp(value: object, now: datetime) -> datetime:
    if not isinstance(value, str):
        raise EventValidationError(
            "action_timestamp", f"must be an ISO-8601 string, got {_type_name(value)}"
        )
    if len(value) > MAX_TIMESTAMP_LEN:
        raise EventValidationError("action_timestamp", "is too long for an ISO-8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EventValidationError(
            "action_timestamp", f"is not an ISO-8601 timestamp: {_show(value)}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    else:
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            raise EventValidationError(
                "action_timestamp", f"is out of range: {_show(value)}"
            ) from None
    if parsed > now + FUTURE_TOLERANCE:
        raise EventValidationError(
            "action_timestamp",
            f"is more than {FUTURE_TOLERANCE} in the future: {_show(value)}",
        )
    return parsed


EventFields = tuple[int, str, datetime, bytes]
"""``(user_id, action_type, action_timestamp in UTC, metadata as compact JSON bytes)``."""


def check_event(obj: object, now: datetime, *, from_orjson: bool = False) -> EventFields:
    """Validate a decoded JSON value; return its :data:`EventFields`.

    The allocation-light core of :func:`validate_event_obj` (``metadata_json`` is the
    compact JSON to store as ``jsonb``). Pass ``from_orjson=True`` only for values straight
    from ``orjson.loads``: it enables the fast path of :func:`orjson_checker`.
    """
    if from_orjson:
        return orjson_checker(now)(obj)
    return _check_exact(obj, now, from_orjson=False)


def orjson_checker(now: datetime) -> Callable[[object], EventFields]:
    """A checker of values decoded by ``orjson.loads``, for the ingestion hot path.

    A conservative fast path accepts the common well-formed record (every test it makes is
    one the exact rules make too, and ``orjson`` guarantees str keys and finite floats);
    anything it is not sure about goes through :func:`_check_exact`, the rule set written
    out field by field, which either accepts it as well or raises the precise error.
    Constants are bound once per checker (one per batch), not looked up per record.
    """
    latest = now + FUTURE_TOLERANCE
    is_known_fields = _FIELDS.issuperset
    amount_key_of = REQUIRED_AMOUNTS.get
    parse_time = datetime.fromisoformat
    dumps = orjson.dumps
    utc = UTC
    empty = _EMPTY
    max_user_id, max_type_len, max_stamp_len = MAX_USER_ID, MAX_ACTION_TYPE_LEN, MAX_TIMESTAMP_LEN
    depth_proof_len, max_depth = _DEPTH_PROOF_LEN, MAX_METADATA_DEPTH
    exact = _check_exact

    def check(obj: object) -> EventFields:
        if type(obj) is dict and len(obj) <= 4 and is_known_fields(obj):
            user_id = obj.get("user_id")
            action_type = obj.get("action_type")
            stamp = obj.get("action_timestamp")
            metadata = obj.get("metadata", empty)
            if (
                type(user_id) is int
                and 1 <= user_id <= max_user_id
                and type(action_type) is str
                and 0 < len(action_type) <= max_type_len
                and type(stamp) is str
                and len(stamp) <= max_stamp_len
                and type(metadata) is dict
                and not action_type.isspace()
                and "\x00" not in action_type
            ):
                amount_key = amount_key_of(action_type)
                amount = metadata.get(amount_key, -1) if amount_key is not None else 0
                if (type(amount) is int or type(amount) is float) and amount >= 0:
                    try:
                        timestamp = parse_time(stamp)
                    except ValueError:
                        pass
                    else:
                        tzinfo = timestamp.tzinfo
                        if tzinfo is utc or tzinfo is None:
                            if tzinfo is None:
                                timestamp = timestamp.replace(tzinfo=utc)
                            if timestamp <= latest:
                                text = dumps(metadata)
                                if b"\\u0000" not in text and (
                                    len(text) <= depth_proof_len
                                    or text.count(b"{") + text.count(b"[") <= max_depth
                                ):
                                    return user_id, action_type, timestamp, text
        return exact(obj, now, from_orjson=True)

    return check


def _check_exact(obj: object, now: datetime, *, from_orjson: bool) -> EventFields:
    """The contract, field by field: returns the checked fields or raises the first error."""
    if not isinstance(obj, dict):
        raise EventValidationError("$", f"record must be a JSON object, got {_type_name(obj)}")
    if obj.keys() - _FIELDS:
        unknown = sorted(str(key) for key in obj.keys() - _FIELDS)
        raise EventValidationError(unknown[0], "unknown field")

    user_id = obj.get("user_id")
    if type(user_id) is not int:  # bool and float are refused; an int subclass is not JSON
        if user_id is None and "user_id" not in obj:
            raise EventValidationError("user_id", "is required")
        raise EventValidationError("user_id", f"must be an integer, got {_type_name(user_id)}")
    if user_id < 1:
        raise EventValidationError("user_id", f"must be >= 1, got {user_id}")
    if user_id > MAX_USER_ID:
        raise EventValidationError("user_id", f"must be <= {MAX_USER_ID} (bigint)")

    action_type = obj.get("action_type")
    if type(action_type) is not str:
        if action_type is None and "action_type" not in obj:
            raise EventValidationError("action_type", "is required")
        raise EventValidationError(
            "action_type", f"must be a string, got {_type_name(action_type)}"
        )
    if not action_type or action_type.isspace():
        raise EventValidationError("action_type", "must be a non-empty string")
    if len(action_type) > MAX_ACTION_TYPE_LEN:
        raise EventValidationError(
            "action_type",
            f"must be at most {MAX_ACTION_TYPE_LEN} characters, got {len(action_type)}",
        )
    if "\x00" in action_type:
        raise EventValidationError("action_type", "contains a NUL character (\\u0000)")

    if "action_timestamp" not in obj:
        raise EventValidationError("action_timestamp", "is required")
    timestamp = _parse_timestamp(obj["action_timestamp"], now)

    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict:
        raise EventValidationError("metadata", f"must be a JSON object, got {_type_name(metadata)}")
    amount_key = REQUIRED_AMOUNTS.get(action_type)
    if amount_key is not None:
        _check_amount(metadata, amount_key)
    return user_id, action_type, timestamp, _metadata_json(metadata, from_orjson=from_orjson)


def validate_event_obj(obj: object, *, now: datetime) -> ValidEvent:
    """Validate an already-decoded JSON value (e.g. an API request body).

    ``now`` must be tz-aware (ingestion or request time). Raises
    :class:`EventValidationError`.
    """
    return _validate(obj, now, from_orjson=False)


def _validate(obj: object, now: datetime, *, from_orjson: bool) -> ValidEvent:
    user_id, action_type, timestamp, _ = check_event(obj, now, from_orjson=from_orjson)
    assert isinstance(obj, dict)  # proven by check_event
    metadata = obj.get("metadata") or {}
    return ValidEvent(user_id, action_type, timestamp, metadata)


def decode_event(raw: bytes | None) -> object:
    """Bytes -> decoded JSON value, with the record-level checks (size, UTF-8 JSON)."""
    if raw is None:
        raise EventValidationError("$", "record has no value (null/tombstone)")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventValidationError(
            "$", f"record is {len(raw)} bytes, more than the {MAX_EVENT_BYTES}-byte limit"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError("$", f"not valid UTF-8 JSON: {exc}") from None


def parse_event(raw: bytes | None, *, now: datetime) -> ValidEvent:
    """Kafka record value -> :class:`ValidEvent`; raises :class:`EventValidationError`."""
    return _validate(decode_event(raw), now, from_orjson=True)
