"""GET /api/user-segments/{user_id}/recommendation (SPEC §8), the hot path.

Segment from the in-process copy (no database round trip), streak live from Redis
(batched), policy from :mod:`pipelines.domain.recommendation`.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path
from starlette.responses import Response

from serving.auth import authorize
from serving.deps import CallerDep
from serving.errors import NotFound
from serving.schemas import RecommendationOut, UserId

router = APIRouter(prefix="/api", tags=["recommendations"])


@router.get(
    "/user-segments/{user_id}/recommendation",
    response_model=RecommendationOut,
    summary="Reward recommendation for a user",
    responses={404: {"description": "The user has no published segment"}},
)
async def get_recommendation(user_id: Annotated[UserId, Path()], caller: CallerDep) -> Response:
    """From the user's published segment (`user_segments`) and live streak (Redis).

    `rfm_group` defaults to "Low" and `risk_profile` to "Unknown"; the streak is 0 when
    missing or unreadable (Redis down or garbage value: still 200, counted as degraded).
    """
    authorize(caller.principal, user_id)
    services = caller.services
    segment = services.segments.get(user_id)
    if segment is None:
        raise NotFound(f"user {user_id} has no published segment")
    streak = await services.streaks.get(user_id)
    rec = services.policy.recommend(segment[0], segment[1], streak.value)
    body = {
        "user_id": user_id,
        "rfm_group": rec.rfm_group,
        "risk_profile": rec.risk_profile,
        "streak_count": rec.streak_count,
        "recommended_reward_probability": rec.recommended_reward_probability,
        "recommended_time_window": rec.recommended_time_window,
    }
    # the body is built from the declared model's fields: skip re-validating it
    return Response(orjson.dumps(body), media_type="application/json")
