"""POST /api/notify/site_visit: a visit to the corporate site, stored in Postgres."""

from __future__ import annotations

from fastapi import APIRouter, status

from serving import repository
from serving.auth import authorize
from serving.bodies import OrjsonRoute
from serving.deps import CallerDep
from serving.schemas import SiteVisitIn, SiteVisitOut

router = APIRouter(prefix="/api", route_class=OrjsonRoute, tags=["site visits"])


@router.post(
    "/notify/site_visit",
    response_model=SiteVisitOut,
    status_code=status.HTTP_201_CREATED,
    summary="Log a visit to the corporate site",
)
async def notify_site_visit(visit: SiteVisitIn, caller: CallerDep) -> SiteVisitOut:
    """Stores a row in `site_visits` stamped with the server's time; 201 with the row."""
    authorize(caller.principal, visit.user_id)
    async with caller.services.db() as conn:
        row = await repository.insert_site_visit(conn, user_id=visit.user_id, source=visit.source)
    return SiteVisitOut(
        id=row.id, user_id=row.user_id, source=row.source, visit_timestamp=row.visit_timestamp
    )
