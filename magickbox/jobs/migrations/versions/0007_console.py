"""The console: an index on jobs.received_at, so the jobs list sorted by when a job came
pages through tens of thousands of jobs without sorting them all.

Revision ID: 0007_console
Revises: 0003_views
"""

from alembic import op

revision = "0007_console"
down_revision = "0003_views"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_received_at", "jobs", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_received_at", table_name="jobs")
