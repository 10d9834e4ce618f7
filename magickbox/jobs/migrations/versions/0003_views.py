"""Series views: the series table and each job's identity (patient, study, modalities).

Revision ID: 0003_views
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_views"
down_revision = "0004_auth"
branch_labels = None
depends_on = None

IDENTITY = (
    ("patient_id", sa.String(128)),
    ("patient_name", sa.String(256)),
    ("accession_number", sa.String(64)),
    ("study_date", sa.String(16)),
    ("study_description", sa.Text),
    ("modalities", sa.String(128)),
)
INDEXED = ("patient_id", "accession_number", "study_date")


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scratchdir", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(128), nullable=False),
        sa.Column("series_uid", sa.String(128), nullable=False),
        sa.Column("series_number", sa.Integer),
        sa.Column("modality", sa.String(16), nullable=False, server_default=""),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("num_files", sa.Integer, nullable=False, server_default="0"),
        sa.Column("classify_type", sa.Text, nullable=False, server_default="[]"),
        sa.Column("tags", sa.Text, nullable=False, server_default="{}"),
        sa.Column("files", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("scratchdir", "series_uid", name="uq_series_job"),
    )
    op.create_index("ix_series_scratchdir", "series", ["scratchdir"])
    op.create_index("ix_series_study_uid", "series", ["study_uid"])
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in IDENTITY:
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=""))
        batch.add_column(sa.Column("series_count", sa.Integer, nullable=False, server_default="0"))
    for name in INDEXED:
        op.create_index(f"ix_jobs_{name}", "jobs", [name])


def downgrade() -> None:
    for name in INDEXED:
        op.drop_index(f"ix_jobs_{name}", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for name, _type in IDENTITY:
            batch.drop_column(name)
        batch.drop_column("series_count")
    op.drop_table("series")
