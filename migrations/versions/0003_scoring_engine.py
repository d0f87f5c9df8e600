"""Scoring criteria versions, trained models, outcomes, CSV imports.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = nurture.models.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("company_growth_stage", sa.String(), nullable=True))
        batch.add_column(
            sa.Column(
                "company_technologies",
                sa.JSON(),
                nullable=False,
                server_default=sa.text("'[]'"),
            )
        )
        batch.add_column(sa.Column("job_title", sa.String(), nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(), nullable=True))
        batch.create_unique_constraint("uq_leads_external_id", ["external_id"])
        batch.add_column(
            sa.Column(
                "activity", sa.JSON(), nullable=False, server_default=sa.text("'{}'")
            )
        )
        batch.add_column(sa.Column("rules_score", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("conversion_probability", sa.Float(), nullable=True))
        batch.add_column(
            sa.Column(
                "model_contributions",
                sa.JSON(),
                nullable=False,
                server_default=sa.text("'[]'"),
            )
        )
        batch.add_column(sa.Column("criteria_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("model_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("outcome", sa.String(), nullable=True))
        batch.add_column(sa.Column("outcome_at", UTC_DATETIME(), nullable=True))
        batch.create_index("ix_leads_outcome", ["outcome"])

    op.create_table(
        "lead_outcomes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("lead_id", sa.String(), sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("value", sa.Numeric(14, 2), nullable=True),
        sa.Column("currency", sa.String(), nullable=True),
        sa.Column("occurred_at", UTC_DATETIME(), nullable=False),
        sa.Column("recorded_at", UTC_DATETIME(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("recorded_by", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=True),
    )
    op.create_index("ix_lead_outcomes_lead_id", "lead_outcomes", ["lead_id"])

    op.create_table(
        "scoring_criteria_versions",
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=True),
    )

    op.create_table(
        "scoring_models",
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("dropped_features", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("artifact", sa.LargeBinary(), nullable=True),
        sa.Column("workflow_id", sa.String(), nullable=True),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("finished_at", UTC_DATETIME(), nullable=True),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("promoted_at", UTC_DATETIME(), nullable=True),
    )
    op.create_index("ix_scoring_models_status", "scoring_models", ["status"])
    op.create_index("ix_scoring_models_promoted", "scoring_models", ["promoted"])

    op.create_table(
        "lead_imports",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("filename", sa.String(), nullable=True),
        sa.Column("mapping", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("finished_at", UTC_DATETIME(), nullable=True),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("merged", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("outcomes", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("lead_imports")
    op.drop_index("ix_scoring_models_promoted", "scoring_models")
    op.drop_index("ix_scoring_models_status", "scoring_models")
    op.drop_table("scoring_models")
    op.drop_table("scoring_criteria_versions")
    op.drop_index("ix_lead_outcomes_lead_id", "lead_outcomes")
    op.drop_table("lead_outcomes")
    with op.batch_alter_table("leads") as batch:
        batch.drop_index("ix_leads_outcome")
        for column in (
            "outcome_at",
            "outcome",
            "model_version",
            "criteria_version",
            "model_contributions",
            "conversion_probability",
            "rules_score",
            "activity",
        ):
            batch.drop_column(column)
        batch.drop_constraint("uq_leads_external_id", type_="unique")
        for column in (
            "external_id",
            "job_title",
            "company_technologies",
            "company_growth_stage",
        ):
            batch.drop_column(column)
