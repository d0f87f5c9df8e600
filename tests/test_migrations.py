"""The Alembic migrations build exactly the tables that nurture/models.py declares."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import nurture.models  # noqa: F401  (registers the tables)


def test_migrations_match_models(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)

    assert differences == [], "write a migration for: " + repr(differences)
