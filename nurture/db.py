"""Database engine, sessions and migrations, for PostgreSQL (psycopg 3) or SQLite."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlmodel import Session

from nurture.config import PROJECT_ROOT

logger = logging.getLogger(__name__)

# Any fixed number works: it only has to be the same in every process that
# migrates the same PostgreSQL database.
_MIGRATION_LOCK_ID = 7_301_202
# libpq connection parameters that make a request or activity fail within
# seconds, not minutes, while PostgreSQL is unreachable. A value given in
# DATABASE_URL (`?connect_timeout=10`) wins over these.
POSTGRES_CONNECT_DEFAULTS: dict[str, int] = {
    # Seconds a new connection may take, TCP handshake and login included.
    "connect_timeout": 5,
    # Milliseconds sent data may stay unacknowledged before libpq drops the
    # connection (Linux only, and ignored elsewhere). Without it, a ping or query
    # on a pooled connection to a host that vanished waits out the kernel's
    # TCP retransmissions, about 15 minutes with Linux defaults.
    "tcp_user_timeout": 10_000,
}


def normalize_url(url: str) -> str:
    """Point plain PostgreSQL URLs at the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_db_engine(url: str, **kwargs: Any) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        sa.event.listen(engine, "connect", _configure_sqlite)
        return engine
    connect_args = {
        name: value
        for name, value in POSTGRES_CONNECT_DEFAULTS.items()
        if name not in sa.make_url(url).query
    }
    connect_args.update(kwargs.pop("connect_args", {}))
    # pool_pre_ping replaces a pooled connection that the server or the
    # network closed, e.g. during a database restart, before a request uses it.
    return sa.create_engine(
        url, pool_pre_ping=True, connect_args=connect_args, **kwargs
    )


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; foreign keys are off by
    # default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Apply every pending Alembic migration.

    On PostgreSQL an advisory lock makes concurrent starts (API and workers)
    take turns, so only the first one migrates.
    """
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            is_postgres = connection.dialect.name == "postgresql"
            if is_postgres:
                connection.execute(
                    sa.text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                )
                connection.commit()
            try:
                config = alembic_config(url)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
            finally:
                if is_postgres:
                    connection.execute(
                        sa.text("SELECT pg_advisory_unlock(:id)"),
                        {"id": _MIGRATION_LOCK_ID},
                    )
                    connection.commit()
    finally:
        engine.dispose()
    logger.info("database schema is up to date")


def is_database_unavailable(error: BaseException) -> bool:
    """Return whether a SQLAlchemy error means the database cannot serve requests now.

    That is an OperationalError (connection refused or timed out, connection
    lost mid-query, and on SQLite a lock held too long), any other DB-API
    error that SQLAlchemy took for a lost connection, or a pool timeout.
    """
    if isinstance(error, (sa.exc.OperationalError, sa.exc.TimeoutError)):
        return True
    return isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated


def check_database(engine: sa.Engine) -> None:
    """Raise if the database cannot run a query."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
