"""FastAPI application `serving.main:app` (SPEC §8)."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI(title="CC Analytics API", version="0.1.0")


@app.get("/health", tags=["health"])
async def health() -> dict[str, str]:
    """Liveness: answers without calling any dependency."""
    return {"status": "healthy"}
