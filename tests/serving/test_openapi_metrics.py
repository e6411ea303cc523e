"""OpenAPI document (security, problem details, examples), /metrics, /ready, /health."""

from __future__ import annotations

from serving.segments import _parse_payloads
from tests.serving.conftest import new_user_id, wait_segment


async def test_openapi_declares_bearer_auth_and_problem_details(api):
    schema = (await api.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    paths = schema["paths"]
    assert set(paths) >= {
        "/health",
        "/ready",
        "/api/actions",
        "/api/notify/site_visit",
        "/api/user-segments/{user_id}/recommendation",
    }
    for path, operations in paths.items():
        for operation in operations.values():
            secured = operation.get("security") == [{"bearerAuth": []}]
            assert secured == path.startswith("/api/"), path
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        path,
                        status,
                    )
            if path.startswith("/api/"):
                assert {"401", "403", "422", "503"} <= set(operation["responses"])
    assert "413" in paths["/api/actions"]["post"]["responses"]
    assert "404" in paths["/api/user-segments/{user_id}/recommendation"]["get"]["responses"]
    action = schema["components"]["schemas"]["ActionIn"]
    assert action["examples"] and action["additionalProperties"] is False
    user_id = paths["/api/user-segments/{user_id}/recommendation"]["get"]["parameters"][0]
    assert user_id["schema"]["maximum"] == 2**63 - 1


async def test_docs_page_is_served(api):
    response = await api.get("/docs")
    assert response.status_code == 200 and "swagger" in response.text.lower()


async def test_health_and_ready(api):
    assert (await api.get("/health")).json() == {"status": "healthy"}
    ready = await api.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "redis": "ok", "kafka": "ok", "segments": "ok"},
    }


async def test_metrics_expose_request_metrics_and_counters(api, tokens, seed_segments):
    uid = new_user_id()
    seed_segments([(uid, "Low", None)])
    await wait_segment(api, tokens, uid)
    await api.get(f"/api/user-segments/{uid}/recommendation", headers=tokens.service_headers)
    await api.get("/api/user-segments/1/recommendation")  # 401
    text = (await api.get("/metrics")).text
    assert (
        'http_requests_total{handler="/api/user-segments/{user_id}/recommendation",'
        'method="GET",status="2xx"}' in text
    )
    assert 'status="4xx"' in text
    assert "http_request_duration_seconds_bucket" in text
    for name in (
        "cc_api_actions_published_total",
        "cc_api_action_publish_failures_total",
        "cc_api_recommendations_degraded_total",
        "cc_api_segment_copy_rows",
        "cc_api_segment_copy_listening 1.0",
    ):
        assert name in text, name


async def test_unknown_method_is_405_problem_with_allow(api, tokens):
    response = await api.get("/api/actions", headers=tokens.service_headers)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert "POST" in response.headers["allow"]


def test_notification_payloads():
    assert _parse_payloads(["1,2", "3"]) == {1, 2, 3}
    assert _parse_payloads(["1", "*"]) is None
    assert _parse_payloads(["1,x"]) is None  # unexpected: reload, to be safe
    assert _parse_payloads(["-5"]) is None
