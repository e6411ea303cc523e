"""Mint a bearer token for the API (HS256, signed with ``JWT_SECRET``).

Usage::

    python scripts/make_token.py --user 42            # acts on user 42 only
    python scripts/make_token.py --service reporting  # acts on any user
    python scripts/make_token.py --user 42 --ttl 600  # seconds (default 3600)

The secret comes from ``JWT_SECRET`` in the environment, else from ``.local/stack.env``
(written by ``make up``). Prints the token alone on stdout, e.g.::

    export TOKEN=$(python scripts/make_token.py --service me)
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/api/user-segments/42/recommendation
"""

from __future__ import annotations

import argparse
import os
import sys

from devstack.cli import read_stack_env
from serving.auth import MIN_SECRET_LEN, SERVICE_ROLE, mint_token


def secret_from_stack_env() -> str | None:
    return read_stack_env().get("JWT_SECRET") or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mint an API bearer token (HS256 JWT).")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="user id: the token acts on this user only")
    who.add_argument("--service", help="service name: the token acts on any user")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    args = parser.parse_args(argv)
    secret = os.environ.get("JWT_SECRET") or secret_from_stack_env()
    if not secret:
        print("JWT_SECRET is not set (export it or run `make up`)", file=sys.stderr)
        return 2
    if len(secret) < MIN_SECRET_LEN:
        print(f"JWT_SECRET is malformed: shorter than {MIN_SECRET_LEN} characters", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("--ttl must be positive", file=sys.stderr)
        return 2
    if args.user is not None:
        if args.user < 1:
            print("--user must be >= 1", file=sys.stderr)
            return 2
        token = mint_token(secret, args.user, ttl=args.ttl)
    else:
        if not args.service.strip():
            print("--service must name the service", file=sys.stderr)
            return 2
        token = mint_token(secret, args.service, role=SERVICE_ROLE, ttl=args.ttl)
    print(token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
