"""Alembic environment: runs on the connection nurture.db.migrate() passes in."""

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import nurture.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from nurture.config import get_settings
from nurture.db import normalize_url

config = context.config
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        # Called from the alembic command line: use the configured URL.
        url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
        engine = sa.create_engine(normalize_url(url))
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
        return
    _run(connection)


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
