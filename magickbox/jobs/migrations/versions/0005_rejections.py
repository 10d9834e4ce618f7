"""DICOM security: refused associations, and TLS of routing sends.

Revision ID: 0005_rejections
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_rejections"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("calling_aet", sa.String(64), nullable=False, server_default=""),
        sa.Column("called_aet", sa.String(64), nullable=False, server_default=""),
        sa.Column("address", sa.String(64), nullable=False, server_default=""),
        sa.Column("port", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_rejections_at", "rejections", ["at"])
    with op.batch_alter_table("sends") as batch:
        # JSON of the destination's "TLS" object ({"ca", "cert", "key"}); empty: plain DICOM
        batch.add_column(sa.Column("tls", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.drop_column("tls")
    op.drop_table("rejections")
