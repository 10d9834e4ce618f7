"""Measures per job (measures.json) and the running processing-time figures per bucket.

The figures start from the jobs already done, so timing.php answers at once after an
upgrade.

Revision ID: 0006_measures
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_measures"
down_revision = "0005_rejections"
branch_labels = None
depends_on = None

# n, mean and the sum of squared deviations (sum(d^2) - n * mean^2) of the done runs.
SEED_TIMING = """
INSERT INTO bucket_timing (bucket, n, mean, m2, updated_at)
SELECT bucket, COUNT(*), AVG(d), SUM(d * d) - COUNT(*) * AVG(d) * AVG(d), MAX(f)
FROM (SELECT bucket, finished_at - started_at AS d, finished_at AS f FROM jobs
      WHERE state = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL) AS runs
GROUP BY bucket
"""


def upgrade() -> None:
    op.create_table(
        "job_measures",
        sa.Column("scratchdir", sa.String(64), primary_key=True),
        sa.Column("data", sa.Text, nullable=False, server_default="{}"),
        sa.Column("nrows", sa.Integer, nullable=False, server_default="1"),
        sa.Column("stored_at", sa.Float, nullable=False),
    )
    op.create_table(
        "bucket_timing",
        sa.Column("bucket", sa.String(64), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False, server_default="0"),
        sa.Column("mean", sa.Float, nullable=False, server_default="0"),
        sa.Column("m2", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.execute(SEED_TIMING)


def downgrade() -> None:
    op.drop_table("bucket_timing")
    op.drop_table("job_measures")
