"""Alembic migrations on real SQLite and PostgreSQL: up, down and up again with no drift from the models.

PostgreSQL tests fail (not skip) when the server is down: the project's machines always run it.
"""

from __future__ import annotations

import multiprocessing as mp
from datetime import timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.pool import NullPool

from engine.db import (
    Asset,
    Base,
    Collection,
    DatabaseError,
    Text,
    alembic_config,
    create_db_engine,
    downgrade,
    migrate,
    session_factory,
)
from tests.pg import fresh_pg_database

TABLES = {"collections", "assets", "texts", "jobs", "models", "vectors", "generated_assets", "api_keys"}


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def tables(url: str) -> set[str]:
    engine = create_db_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def assert_no_drift(url: str) -> None:
    engine = create_db_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"engine/db.py and migrations/ differ; add a revision (see migrations/README.md): {diff}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        with fresh_pg_database("omnibridge_mig") as url:
            yield url


def test_upgrade_downgrade_upgrade_without_drift(db_url):
    migrate(db_url)
    assert tables(db_url) == TABLES
    assert_no_drift(db_url)
    downgrade(db_url, "base")
    assert tables(db_url) == set()
    migrate(db_url)
    assert tables(db_url) == TABLES
    assert_no_drift(db_url)


def test_every_revision_steps_down_and_up_again(db_url):
    for rev in revisions():
        migrate(db_url, rev)
        downgrade(db_url, "-1")
        migrate(db_url, rev)
    assert_no_drift(db_url)


def test_session_factory_creates_the_schema_and_keeps_its_rules(db_url):
    """Schema on first use; aware UTC timestamps; deleting a collection cascades to its assets and their texts."""
    sessions = session_factory(db_url)
    with sessions() as db:
        coll = Collection(name="c", root="/lib")
        db.add(coll)
        db.flush()
        asset = Asset(collection_id=coll.id, uri="/lib/a.png", media="image", status="indexed", mtime=1732543200.123456)
        db.add(asset)
        db.flush()
        db.add(Text(asset_id=asset.id, kind="caption", content="a cat"))
        db.commit()
    with sessions() as db:
        asset = db.scalar(select(Asset))
        assert asset.created_at.tzinfo == timezone.utc and asset.synthetic is False
        assert asset.mtime == 1732543200.123456  # full double precision: unchanged files are found by mtime
        db.delete(db.scalar(select(Collection)))
        db.commit()
        assert db.scalar(select(Asset)) is None and db.scalar(select(Text)) is None
    sessions.kw["bind"].dispose()


def test_session_factory_on_a_new_folder_uses_wal(tmp_path):
    path = tmp_path / "new" / "home" / "omnibridge.db"
    sessions = session_factory(f"sqlite:///{path}")
    with sessions() as db:
        assert db.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert db.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert tables(f"sqlite:///{path}") == TABLES


def _open_and_write(url: str, name: str, barrier) -> None:
    barrier.wait(timeout=60)  # both processes reach session_factory together
    sessions = session_factory(url)
    with sessions() as db:
        db.add(Collection(name=name, root="/"))
        db.commit()


def test_two_processes_create_the_same_new_database_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared' / 'omnibridge.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_open_and_write, args=(url, f"c{i}", barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with session_factory(url)() as db:
        assert set(db.scalars(select(Collection.name))) == {"c0", "c1"}
    assert_no_drift(url)


def test_unreachable_postgres_names_the_setting():
    with pytest.raises(DatabaseError, match="OMNIBRIDGE_DATABASE_URL"):
        session_factory("postgresql://postgres@127.0.0.1:1/nothing")


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    migrate(url)
    engine = create_db_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    engine.dispose()
    with pytest.raises(DatabaseError, match="ffffffffffff.*does not know"):
        session_factory(url)


def test_migrations_folder_is_found_from_the_package():
    assert (Path(alembic_config("sqlite://").get_main_option("script_location")) / "env.py").is_file()
