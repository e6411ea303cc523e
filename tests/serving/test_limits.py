"""Input limits (issue 6 part 2): 413 over 64 KiB, bounded metadata, bigint user ids."""

from __future__ import annotations

import pytest

from pipelines.domain.events import MAX_METADATA_DEPTH
from tests.serving.conftest import new_user_id

LIMIT = 64 * 1024


def nested(depth: int) -> dict:
    """``metadata`` nested ``depth`` levels deep (the metadata object itself is level 1)."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def padded_action(size: int) -> bytes:
    head = b'{"user_id": 5, "action_type": "LOGIN", "metadata": {"pad": "'
    tail = b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("path", ["/api/actions", "/api/notify/site_visit"])
async def test_body_over_64_kib_is_413(api, tokens, path):
    response = await api.post(
        path,
        content=padded_action(LIMIT + 1),
        headers={**tokens.service_headers, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 413


async def test_chunked_body_over_64_kib_is_413(api, tokens):
    payload = padded_action(LIMIT + 5000)

    async def chunks():
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    response = await api.post(
        "/api/actions",
        content=chunks(),
        headers={**tokens.service_headers, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_body_of_64_kib_is_not_refused_for_size(api, tokens):
    body = padded_action(LIMIT - 200)
    response = await api.post(
        "/api/actions",
        content=body,
        headers={**tokens.service_headers, "content-type": "application/json"},
    )
    assert response.status_code == 202, response.text


async def test_anonymous_huge_body_is_401_without_reading_it(api):
    """Without a token, a huge body is refused with 401 without reading it."""
    response = await api.post(
        "/api/actions",
        content=padded_action(LIMIT * 4),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 401


async def test_metadata_depth_is_bounded(api, tokens):
    ok = {"user_id": new_user_id(), "action_type": "LOGIN", "metadata": nested(MAX_METADATA_DEPTH)}
    response = await api.post("/api/actions", json=ok, headers=tokens.service_headers)
    assert response.status_code == 202, response.text
    too_deep = {**ok, "metadata": nested(MAX_METADATA_DEPTH + 1)}
    response = await api.post("/api/actions", json=too_deep, headers=tokens.service_headers)
    assert response.status_code == 422
    assert "nested deeper" in response.json()["errors"][0]["reason"]


@pytest.mark.parametrize("depth", [300, 1100, 20000])
async def test_absurd_nesting_is_422_never_500(api, tokens, depth):
    content = (
        b'{"user_id": 5, "action_type": "LOGIN", "metadata": '
        + b'{"a": ' * depth
        + b"1"
        + b"}" * depth
        + b"}"
    )[:LIMIT]
    response = await api.post(
        "/api/actions",
        content=content,
        headers={**tokens.service_headers, "content-type": "application/json"},
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("user_id", [2**63, 2**64 + 7, 10**40])
async def test_user_ids_beyond_bigint_are_422(api, tokens, user_id):
    headers = tokens.service_headers
    responses = [
        await api.get(f"/api/user-segments/{user_id}/recommendation", headers=headers),
        await api.post(
            "/api/actions", json={"user_id": user_id, "action_type": "LOGIN"}, headers=headers
        ),
        await api.post(
            "/api/notify/site_visit", json={"user_id": user_id, "source": "x"}, headers=headers
        ),
    ]
    for response in responses:
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "user_id"


async def test_largest_bigint_user_id_is_accepted(api, tokens):
    user_id = 2**63 - 1
    headers = tokens.service_headers
    response = await api.get(f"/api/user-segments/{user_id}/recommendation", headers=headers)
    assert response.status_code == 404  # valid id, no segment
    response = await api.post(
        "/api/notify/site_visit", json={"user_id": user_id, "source": "x"}, headers=headers
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5", "1e3", "%20", "9" * 400])
async def test_bad_path_user_ids_are_422(api, tokens, raw):
    response = await api.get(
        f"/api/user-segments/{raw}/recommendation", headers=tokens.service_headers
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
