# One image for every application role of the production shape (docker-compose.yml):
# the one-shot `migrate`, the API, the Dagster webserver and the Dagster daemon
# (docker/entrypoint.sh picks the role). Runtime dependencies only: the pinned closure in
# requirements-runtime.lock (the same pins as requirements.lock, without the dev/local
# extras; it is what `make audit` checks). Runs as a non-root user.

# --- build the project wheel (sources only; no dependencies resolved here) ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY serving ./serving
COPY devstack ./devstack
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime image ---
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    DAGSTER_DISABLE_TELEMETRY=1 \
    DATA_LAKE_DIR=/data/lake

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app

# dependencies first, so a code change does not reinstall them; --no-deps + `pip check`:
# exactly the locked pins are installed, and they must be a complete closure
COPY requirements-runtime.lock ./
RUN pip install --no-deps -r requirements-runtime.lock

COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && pip check

# configuration read at run time: Alembic (migrations), the Dagster workspace and instance
COPY alembic.ini workspace.yaml dagster.yaml ./
COPY sql ./sql
COPY docker/entrypoint.sh /usr/local/bin/cc-entrypoint

# volumes: the Dagster instance folder (compute logs) and the Parquet lake, owned by `app`
RUN chmod 0755 /usr/local/bin/cc-entrypoint \
 && mkdir -p "$DAGSTER_HOME" "$DATA_LAKE_DIR" \
 && chown -R app:app "$DAGSTER_HOME" /data

USER app
EXPOSE 8000 3000
ENTRYPOINT ["/usr/local/bin/cc-entrypoint"]
CMD ["api"]
