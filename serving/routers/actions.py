"""POST /api/actions: a user action, produced to Kafka and answered after the broker's ack."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from fastapi import APIRouter, status

from pipelines.domain.events import ValidEvent, parse_event, validate_event_obj
from serving.auth import authorize
from serving.bodies import OrjsonRoute
from serving.deps import CallerDep
from serving.schemas import ActionAccepted, ActionIn

router = APIRouter(prefix="/api", route_class=OrjsonRoute, tags=["actions"])


def event_record(event: ValidEvent) -> tuple[bytes, bytes]:
    """Kafka (key, value) of a valid event: key = user id as decimal text (per-user order)."""
    value = orjson.dumps(
        {
            "user_id": event.user_id,
            "action_type": event.action_type,
            "action_timestamp": event.action_timestamp.isoformat(),
            "metadata": event.metadata,
        }
    )
    return str(event.user_id).encode(), value


@router.post(
    "/actions",
    response_model=ActionAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Record a user action (to Kafka)",
)
async def post_action(action: ActionIn, caller: CallerDep) -> ActionAccepted:
    """Validated with the ingestion's own validator, produced with `acks=all`, key = user
    id; answered after the broker's acknowledgement with its partition and offset. 503 when
    the broker does not acknowledge within `API_PUBLISH_TIMEOUT_S` (the action may then be
    retried; it was not acknowledged)."""
    authorize(caller.principal, action.user_id)
    now = datetime.now(UTC)
    obj = {
        "user_id": action.user_id,
        "action_type": action.action_type,
        # only an absent timestamp defaults to now: "" is invalid (422), not "now"
        "action_timestamp": (
            action.action_timestamp if action.action_timestamp is not None else now.isoformat()
        ),
        "metadata": action.metadata if action.metadata is not None else {},
    }
    event = validate_event_obj(obj, now=now)
    key, value = event_record(event)
    parse_event(value, now=now)  # exactly what the ingestion will accept, size included
    published = await caller.services.publisher.publish(key, value)
    return ActionAccepted(
        topic=published.topic, partition=published.partition, offset=published.offset
    )
