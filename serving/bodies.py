"""Request bodies decoded by orjson: strict JSON (no NaN), depth-limited, fast.

A decoding error is an ``orjson.JSONDecodeError`` (a ``json.JSONDecodeError``), which
FastAPI turns into a 422; a body nested deeper than orjson's limit is such an error too,
never a 500. Used as the ``route_class`` of the routers that take a JSON body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler
