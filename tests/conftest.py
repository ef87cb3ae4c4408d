"""Shared fixtures. Services a test needs are started by fixtures, never assumed.

With ``ICVGW_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing service fails the test
instead of skipping it: in CI a skip is missing work.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from gateway.testing import MosquittoBroker, find_mosquitto

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REQUIRE_SERVICES = os.environ.get("ICVGW_REQUIRE_SERVICES") == "1"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/icvgw_test"


def service_missing(what: str) -> None:
    """Skip locally, fail in CI, when a service a test needs is not available."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {what}")
    pytest.skip(f"service missing: {what}")


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    """URL of a PostgreSQL database the tests may create schemas in."""
    url = os.environ.get("ICVGW_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        import psycopg
    except ImportError:
        service_missing("psycopg (install the 'postgres' extra)")
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        if 'database "' in str(exc) and "does not exist" in str(exc):
            _create_database(url)  # a server is there, the test database is not yet
        else:
            service_missing(f"PostgreSQL at {url}: {exc}")
    except psycopg.Error as exc:
        service_missing(f"PostgreSQL at {url}: {exc}")
    return url


def _create_database(url: str) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    name = params.get("dbname")
    admin = make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(str(name))))
    except psycopg.Error as exc:
        service_missing(f"PostgreSQL: cannot create database {name}: {exc}")


@pytest.fixture
def postgres_url(postgres_base_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh, private schema (dropped afterwards)."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_base_url, autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
    sep = "&" if "?" in postgres_base_url else "?"
    yield f"{postgres_base_url}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_base_url, autocommit=True) as conn:
        conn.execute(f'drop schema "{schema}" cascade')


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    """A real Mosquitto on a free port with its own config and persistent data directory."""
    if find_mosquitto() is None:
        service_missing("mosquitto binary (apt-get install mosquitto)")
    broker = MosquittoBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
