"""The jobs table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scratchdir", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(64), nullable=False),
        sa.Column("caller_aet", sa.String(64), nullable=False, server_default=""),
        sa.Column("caller_ip", sa.String(64), nullable=False, server_default=""),
        sa.Column("study_uid", sa.String(128), nullable=False, server_default=""),
        sa.Column("source", sa.String(16), nullable=False, server_default="dicom"),
        sa.Column("jobname", sa.String(256), nullable=False, server_default=""),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("arguments", sa.Text, nullable=False, server_default="[]"),
        sa.Column("received_text", sa.String(64), nullable=False, server_default=""),
        sa.Column("nfiles", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("queued_at", sa.Float),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("exit_code", sa.Integer),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("success", sa.String(64), nullable=False, server_default=""),
        sa.Column("log_size", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_jobs_scratchdir", "jobs", ["scratchdir"], unique=True)
    op.create_index("ix_jobs_bucket", "jobs", ["bucket"])
    op.create_index("ix_jobs_study_uid", "jobs", ["study_uid"])
    op.create_index("ix_jobs_state", "jobs", ["state"])


def downgrade() -> None:
    op.drop_table("jobs")
