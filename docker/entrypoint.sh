#!/bin/sh
# Entrypoint of the cc-analytics-stack image (Dockerfile): one image, one role per container.
#
#   migrate            create the Dagster database if missing, then `alembic upgrade head`
#   api                uvicorn serving.main:app on 0.0.0.0:8000
#   dagster-webserver  Dagster UI on 0.0.0.0:3000 (workspace /app/workspace.yaml)
#   dagster-daemon     schedules, sensors, run queue and run monitoring
#   anything else      executed as given (e.g. `dagster asset materialize ...`)
#
# Every role first validates the settings (pipelines.settings): a missing or malformed
# variable stops the container with one line naming it.
set -eu

APP_DIR="${APP_DIR:-/app}"

check_settings() {
  python - <<'PY'
import sys

from pipelines.settings import SettingsError, load_settings

try:
    load_settings()
except SettingsError as exc:
    sys.exit(f"cc-analytics: {exc}")
PY
}

install_dagster_home() {
  : "${DAGSTER_HOME:?DAGSTER_HOME is not set}"
  : "${DAGSTER_PG_URL:?DAGSTER_PG_URL is not set}"
  mkdir -p "$DAGSTER_HOME"
  # the image's dagster.yaml always wins (DAGSTER_HOME is a volume that outlives images)
  cp "$APP_DIR/dagster.yaml" "$DAGSTER_HOME/.dagster.yaml.$$"
  mv "$DAGSTER_HOME/.dagster.yaml.$$" "$DAGSTER_HOME/dagster.yaml"
}

create_dagster_database() {
  python - <<'PY'
import os

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipelines.settings import libpq_url

url = libpq_url(os.environ["DAGSTER_PG_URL"])
name = conninfo_to_dict(url)["dbname"]
admin = make_conninfo(url, dbname="postgres", connect_timeout=10)
with psycopg.connect(admin, autocommit=True) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"cc-analytics: created database {name}", flush=True)
PY
}

role="${1:-api}"
case "$role" in
  migrate)
    check_settings
    if [ -n "${DAGSTER_PG_URL:-}" ]; then
      create_dagster_database
    fi
    exec alembic -c "$APP_DIR/alembic.ini" upgrade head
    ;;
  api)
    check_settings
    exec uvicorn serving.main:app --host 0.0.0.0 --port 8000 \
      --workers "${API_WORKERS:-2}" --proxy-headers \
      --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}"
    ;;
  dagster-webserver)
    check_settings
    install_dagster_home
    exec dagster-webserver -h 0.0.0.0 -p 3000 -w "$APP_DIR/workspace.yaml"
    ;;
  dagster-daemon)
    check_settings
    install_dagster_home
    exec dagster-daemon run -w "$APP_DIR/workspace.yaml"
    ;;
  *)
    exec "$@"
    ;;
esac
