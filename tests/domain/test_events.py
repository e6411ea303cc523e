"""Event contract (SPEC §4): a table of good and bad records through the pure validator."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from pipelines.domain.events import (
    MAX_ACTION_TYPE_LEN,
    MAX_EVENT_BYTES,
    MAX_METADATA_DEPTH,
    EventValidationError,
    ValidEvent,
    check_event,
    parse_event,
    validate_event_obj,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def rec(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "user_id": 7,
        "action_type": "LOGIN",
        "action_timestamp": "2026-05-01T10:00:00+00:00",
        "metadata": {},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def raw(obj: object) -> bytes:
    return orjson.dumps(obj)


GOOD = [
    pytest.param(
        raw(rec()), ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {}), id="plain"
    ),
    pytest.param(
        raw(rec(metadata=_DROP)),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {}),
        id="metadata-missing-defaults-to-empty",
    ),
    pytest.param(
        raw(rec(metadata=None)),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {}),
        id="metadata-null-is-empty",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-01T10:00:00")),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {}),
        id="naive-timestamp-is-utc",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-01T12:00:00+02:00")),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {}),
        id="offset-converted-to-utc",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-01T10:00:00Z")),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {}),
        id="zulu",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-02T11:59:59+00:00")),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 2, 11, 59, 59, tzinfo=UTC), {}),
        id="just-under-24h-future",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": 150})),
        ValidEvent(
            7,
            "SPEND_CYBER_TOKENS",
            datetime(2026, 5, 1, 10, tzinfo=UTC),
            {"spent_tokens": 150},
        ),
        id="spend-int",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": 0.5, "x": [1]})),
        ValidEvent(
            7,
            "SPEND_CYBER_TOKENS",
            datetime(2026, 5, 1, 10, tzinfo=UTC),
            {"spent_tokens": 0.5, "x": [1]},
        ),
        id="spend-float-extra-metadata",
    ),
    pytest.param(
        raw(rec(action_type="EARN_CYBER_TOKENS", metadata={"earned_tokens": 0})),
        ValidEvent(
            7, "EARN_CYBER_TOKENS", datetime(2026, 5, 1, 10, tzinfo=UTC), {"earned_tokens": 0}
        ),
        id="earn-zero",
    ),
    pytest.param(
        raw(rec(user_id=2**63 - 1, action_type="x" * MAX_ACTION_TYPE_LEN)),
        ValidEvent(2**63 - 1, "x" * 64, datetime(2026, 5, 1, 10, tzinfo=UTC), {}),
        id="bounds-max-bigint-64-chars",
    ),
    pytest.param(
        raw(rec(action_type="ÜBER_ÆCTION\t\\", metadata={"note": "tab\t back\\ nl\n ü"})),
        ValidEvent(
            7,
            "ÜBER_ÆCTION\t\\",
            datetime(2026, 5, 1, 10, tzinfo=UTC),
            {"note": "tab\t back\\ nl\n ü"},
        ),
        id="unicode-and-copy-special-chars",
    ),
    pytest.param(
        raw(rec(metadata={"a": {"b": {"c": "{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{["}}})),
        ValidEvent(
            7,
            "LOGIN",
            datetime(2026, 5, 1, 10, tzinfo=UTC),
            {"a": {"b": {"c": "{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{["}}},
        ),
        id="brackets-inside-strings-are-not-depth",
    ),
    pytest.param(
        raw(rec(metadata={"s": "\\u0000 is just text"})),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, 10, tzinfo=UTC), {"s": "\\u0000 is just text"}),
        id="escaped-backslash-u0000-text-is-fine",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-01")),
        ValidEvent(7, "LOGIN", datetime(2026, 5, 1, tzinfo=UTC), {}),
        id="date-only-is-midnight-utc",
    ),
]


@pytest.mark.parametrize(("payload", "expected"), GOOD)
def test_good_records(payload: bytes, expected: ValidEvent) -> None:
    event = parse_event(payload, now=NOW)
    assert event == expected
    assert event.action_timestamp.tzinfo is UTC
    assert orjson.loads(event.metadata_json()) == expected.metadata


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


BAD = [
    pytest.param(b"not json", "$", "not valid UTF-8 JSON", id="not-json"),
    pytest.param(b"", "$", "not valid UTF-8 JSON", id="empty-bytes"),
    pytest.param(None, "$", "no value", id="tombstone"),
    pytest.param(b'{"user_id": 1,', "$", "not valid UTF-8 JSON", id="truncated"),
    pytest.param(b"\xff\xfe{}", "$", "not valid UTF-8 JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "$", "must be a JSON object, got array", id="array"),
    pytest.param(b'"hello"', "$", "must be a JSON object, got string", id="string"),
    pytest.param(b"42", "$", "must be a JSON object, got integer", id="number"),
    pytest.param(b"null", "$", "must be a JSON object, got null", id="null"),
    pytest.param(raw(rec(user_id=_DROP)), "user_id", "is required", id="user-id-missing"),
    pytest.param(raw(rec(user_id=None)), "user_id", "got null", id="user-id-null"),
    pytest.param(raw(rec(user_id=0)), "user_id", "must be >= 1", id="user-id-zero"),
    pytest.param(raw(rec(user_id=-5)), "user_id", "must be >= 1", id="user-id-negative"),
    pytest.param(raw(rec(user_id="5")), "user_id", "got string", id="user-id-string"),
    pytest.param(raw(rec(user_id=5.0)), "user_id", "got number", id="user-id-float"),
    pytest.param(raw(rec(user_id=True)), "user_id", "got boolean", id="user-id-bool"),
    pytest.param(raw(rec(user_id=2**63)), "user_id", "bigint", id="user-id-over-bigint"),
    pytest.param(
        b'{"user_id": 123456789012345678901234567890, "action_type": "X",'
        b' "action_timestamp": "2026-05-01T10:00:00"}',
        "user_id",
        "got number",
        id="user-id-huge",
    ),
    pytest.param(raw(rec(action_type=_DROP)), "action_type", "is required", id="type-missing"),
    pytest.param(raw(rec(action_type="")), "action_type", "non-empty", id="type-empty"),
    pytest.param(raw(rec(action_type="   ")), "action_type", "non-empty", id="type-blank"),
    pytest.param(
        raw(rec(action_type="x" * (MAX_ACTION_TYPE_LEN + 1))),
        "action_type",
        "at most 64 characters, got 65",
        id="type-65-chars",
    ),
    pytest.param(raw(rec(action_type=3)), "action_type", "got integer", id="type-int"),
    pytest.param(raw(rec(action_type="A\x00B")), "action_type", "NUL", id="type-nul"),
    pytest.param(
        raw(rec(action_timestamp=_DROP)), "action_timestamp", "is required", id="ts-missing"
    ),
    pytest.param(
        raw(rec(action_timestamp="yesterday")), "action_timestamp", "ISO-8601", id="ts-garbage"
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-13-01T00:00:00")),
        "action_timestamp",
        "ISO-8601",
        id="ts-month-13",
    ),
    pytest.param(
        raw(rec(action_timestamp=1714560000)),
        "action_timestamp",
        "got integer",
        id="ts-epoch-number",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-02T12:00:01+00:00")),
        "action_timestamp",
        "in the future",
        id="ts-more-than-24h-ahead",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-02T13:00:00")),
        "action_timestamp",
        "in the future",
        id="ts-naive-future-as-utc",
    ),
    pytest.param(
        raw(rec(action_timestamp="0001-01-01T00:00:00+01:00")),
        "action_timestamp",
        "out of range",
        id="ts-underflow",
    ),
    pytest.param(
        raw(rec(action_timestamp="2026-05-01T10:00:00" + "0" * 80)),
        "action_timestamp",
        "too long",
        id="ts-too-long",
    ),
    pytest.param(raw(rec(metadata=[1])), "metadata", "got array", id="metadata-array"),
    pytest.param(raw(rec(metadata="{}")), "metadata", "got string", id="metadata-string"),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={})),
        "metadata.spent_tokens",
        "is required",
        id="spend-missing",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata=_DROP)),
        "metadata.spent_tokens",
        "is required",
        id="spend-no-metadata",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": -1})),
        "metadata.spent_tokens",
        "must be >= 0",
        id="spend-negative",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": "100"})),
        "metadata.spent_tokens",
        "got string",
        id="spend-string",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": True})),
        "metadata.spent_tokens",
        "got boolean",
        id="spend-bool",
    ),
    pytest.param(
        raw(rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": None})),
        "metadata.spent_tokens",
        "got null",
        id="spend-null",
    ),
    pytest.param(
        raw(rec(action_type="EARN_CYBER_TOKENS", metadata={"spent_tokens": 5})),
        "metadata.earned_tokens",
        "is required",
        id="earn-missing",
    ),
    pytest.param(
        raw(rec(action_type="EARN_CYBER_TOKENS", metadata={"earned_tokens": -0.01})),
        "metadata.earned_tokens",
        "must be >= 0",
        id="earn-negative",
    ),
    pytest.param(
        raw(rec(metadata={"note": "a\x00b"})), "metadata.note", "NUL", id="metadata-nul-value"
    ),
    pytest.param(raw(rec(metadata={"a\x00": 1})), "metadata", "NUL", id="metadata-nul-key"),
    pytest.param(
        raw(rec(metadata=_deep(MAX_METADATA_DEPTH + 1))),
        "metadata",
        "nested deeper than 32",
        id="metadata-too-deep",
    ),
    pytest.param(raw(rec(extra=1)), "extra", "unknown field", id="unknown-field"),
    pytest.param(
        raw(rec(metadata={"blob": "x" * MAX_EVENT_BYTES})),
        "$",
        "more than the 65536-byte limit",
        id="huge-payload",
    ),
]


@pytest.mark.parametrize(("payload", "field", "reason"), BAD)
def test_bad_records(payload: bytes | None, field: str, reason: str) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(payload, now=NOW)
    assert info.value.field.startswith(field), info.value.field
    assert reason in info.value.reason, info.value.reason
    message = str(info.value)
    assert "\n" not in message and message
    assert isinstance(info.value, ValueError)


def test_metadata_at_depth_limit_is_valid() -> None:
    event = parse_event(raw(rec(metadata=_deep(MAX_METADATA_DEPTH))), now=NOW)
    assert event.metadata == _deep(MAX_METADATA_DEPTH)


def test_deep_metadata_names_the_path() -> None:
    with pytest.raises(EventValidationError) as info:
        validate_event_obj(rec(metadata={"a": [{"b": "x\x00"}]}), now=NOW)
    assert info.value.field == "metadata.a[0].b"


def test_validate_event_obj_refuses_non_json_python_values() -> None:
    with pytest.raises(EventValidationError) as info:
        validate_event_obj(rec(metadata={"x": math.nan}), now=NOW)
    assert info.value.field == "metadata.x"
    with pytest.raises(EventValidationError):
        validate_event_obj(rec(metadata={1: "int key"}), now=NOW)
    with pytest.raises(EventValidationError) as info:
        validate_event_obj(
            rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": math.inf}), now=NOW
        )
    assert info.value.field == "metadata.spent_tokens"


def test_future_tolerance_is_relative_to_now() -> None:
    later = NOW + timedelta(days=3)
    payload = raw(rec(action_timestamp="2026-05-03T00:00:00"))
    with pytest.raises(EventValidationError):
        parse_event(payload, now=NOW)
    assert parse_event(payload, now=later).action_timestamp == datetime(2026, 5, 3, tzinfo=UTC)


def test_now_in_another_zone_compares_correctly() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=-7)))
    assert parse_event(raw(rec()), now=now).user_id == 7


def test_check_event_returns_storable_metadata_json() -> None:
    user_id, action_type, ts, meta = check_event(
        rec(action_type="SPEND_CYBER_TOKENS", metadata={"spent_tokens": 1.5, "n": "é"}), NOW
    )
    assert (user_id, action_type, ts) == (
        7,
        "SPEND_CYBER_TOKENS",
        datetime(2026, 5, 1, 10, tzinfo=UTC),
    )
    assert orjson.loads(meta) == {"spent_tokens": 1.5, "n": "é"}


def test_error_str_is_field_and_reason() -> None:
    exc = EventValidationError("user_id", "must be >= 1, got 0")
    assert str(exc) == "user_id: must be >= 1, got 0"
    assert str(EventValidationError("$", "not valid UTF-8 JSON")) == "not valid UTF-8 JSON"


# --- the fast path agrees with the exact rules ----------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipelines.domain.events import _check_exact, orjson_checker  # noqa: E402

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)
_stamps = st.sampled_from(
    [
        "2026-05-01T10:00:00+00:00",
        "2026-05-01T10:00:00",
        "2026-05-01T10:00:00Z",
        "2026-05-02T12:00:00+00:00",
        "2026-05-02T12:00:01+00:00",
        "2026-05-01T10:00:00+05:00",
        "2026-05-01",
        "20260501T100000",
        "not a time",
        "",
    ]
) | st.text(max_size=30)
_types = st.sampled_from(
    ["LOGIN", "SPEND_CYBER_TOKENS", "EARN_CYBER_TOKENS", "", " ", "x" * 64, "x" * 65, "a\x00"]
) | st.text(max_size=70)
_amounts = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-1, 1e9, allow_nan=False)
    | st.text(max_size=3)
)
_records = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.integers(-2, 2**64 - 1)
        | st.booleans()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=3)
        | st.none(),
        "action_type": _types | st.integers(0, 9),
        "action_timestamp": _stamps | st.integers(0, 2**40),
        "metadata": st.none()
        | st.dictionaries(
            st.sampled_from(["spent_tokens", "earned_tokens", "note", "a\x00"])
            | st.text(max_size=4),
            _amounts | _json,
            max_size=4,
        )
        | _json,
        "extra": st.integers(0, 9),
    },
)


_near_valid = st.fixed_dictionaries(
    {
        "user_id": st.integers(-1, 3) | st.just(2**63 - 1) | st.just(2**63),
        "action_type": st.sampled_from(["LOGIN", "SPEND_CYBER_TOKENS", "EARN_CYBER_TOKENS"]),
        "action_timestamp": _stamps,
    },
    optional={
        "metadata": st.dictionaries(
            st.sampled_from(["spent_tokens", "earned_tokens", "note"]),
            _amounts | _json,
            max_size=3,
        )
    },
)


def _outcome(check, obj):
    try:
        return check(obj)
    except EventValidationError as exc:
        return ("error", exc.field, exc.reason)


@settings(max_examples=600, deadline=None)
@given(_records | _near_valid)
def test_fast_path_agrees_with_the_exact_rules(record):
    obj = orjson.loads(orjson.dumps(record))
    fast = _outcome(orjson_checker(NOW), obj)
    exact = _outcome(lambda o: _check_exact(o, NOW, from_orjson=True), obj)
    assert fast == exact
