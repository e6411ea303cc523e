"""Local development stack: real PostgreSQL, Redis and a Kafka-protocol broker from PyPI.

Used by `make up`/`make down` (devstack.cli) and by the test session (tests/conftest.py).
Never imported by the production code paths.
"""
