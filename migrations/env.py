"""Alembic environment of the metadata database.

The URL is the `sqlalchemy.url` option when one is given (engine.db.migrate and tests set it), else the configured
database (OMNIBRIDGE_DATABASE_URL, or the SQLite file in OMNIBRIDGE_HOME). `engine.db.session_factory` runs these
migrations on its own; `alembic upgrade head` from the repository root does the same by hand.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, TypeDecorator
from sqlalchemy.pool import NullPool

from engine.db import Base, create_db_engine

config = context.config
if config.config_file_name is not None:  # the alembic command line: log as alembic.ini says
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from engine.settings import get_settings

    return get_settings().db_url


def render_item(type_: str, obj, autogen_context) -> str | bool:
    """Write custom column types (engine.db.UTCDateTime) as the plain SQLAlchemy type they compile to, so that a
    migration never imports the application."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, render_item=render_item, **kwargs)


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    url = database_url()
    configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
              render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # batch migrations copy and drop tables: dropping a parent must not cascade to its children's rows.
        # (The pragma is ignored inside a transaction, so it is set before one begins.)
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        connection.commit()
    try:
        configure(connection=connection, render_as_batch=sqlite)  # SQLite alters tables by copying them
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if sqlite:
            connection.rollback()
            connection.exec_driver_sql("PRAGMA foreign_keys = ON")
            connection.commit()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")  # given by engine.db (which holds the migration lock)
    if connection is not None:
        run_on(connection)
        return
    engine = create_db_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
