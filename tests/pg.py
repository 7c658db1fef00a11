"""Throwaway PostgreSQL databases for tests.

The project's machines always run PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth), so a test that needs it
fails (never skips) when it is down, with a message saying how to start it.

    with fresh_pg_database() as url:        # postgresql://postgres@127.0.0.1:5432/omnibridge_test_1a2b3c4d
        svc = Services(load_settings(home=tmp_path, database_url=url))
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from engine.db import create_db_engine

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_HINT = ("start it (`sudo service postgresql start` or `pg_ctlcluster 15 main start`); "
              "the project's tests need PostgreSQL at 127.0.0.1:5432 with user postgres")


def _admin() -> Engine:
    return create_db_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def require_postgres() -> None:
    """Fail the calling test (not skip) when PostgreSQL is unreachable."""
    admin = _admin()
    try:
        with admin.connect():
            pass
    except OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {str(e.orig).strip()}\n{START_HINT}", pytrace=False)
    finally:
        admin.dispose()


@contextmanager
def fresh_pg_database(prefix: str = "omnibridge_test") -> Iterator[str]:
    """Create an empty database named `<prefix>_<random>`, yield its URL, drop it afterwards (even if in use)."""
    require_postgres()
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = _admin()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # pools still open: drop anyway
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (import this fixture into a test module to use it)."""
    with fresh_pg_database() as url:
        yield url
