"""The framework baseline of bench/api.py: a bare FastAPI endpoint returning constant JSON."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"message": "hello"}
