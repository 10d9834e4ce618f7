"""Routing: durable sends and the routing log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sends",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scratchdir", sa.String(64), nullable=False),
        sa.Column("rule_index", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rule_name", sa.String(256), nullable=False, server_default=""),
        sa.Column("key", sa.String(256), nullable=False, server_default=""),
        sa.Column("success", sa.String(64), nullable=False, server_default=""),
        sa.Column("directory", sa.String(64), nullable=False, server_default="OUTPUT"),
        sa.Column("ip", sa.String(256), nullable=False, server_default=""),
        sa.Column("port", sa.Integer, nullable=False, server_default="0"),
        sa.Column("calling_aet", sa.String(64), nullable=False, server_default=""),
        sa.Column("called_aet", sa.String(64), nullable=False, server_default=""),
        sa.Column("which", sa.Text, nullable=False, server_default=""),
        sa.Column("error_image", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("next_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("nfiles", sa.Integer, nullable=False, server_default="0"),
        sa.Column("naccepted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("accepted", sa.Text, nullable=False, server_default="[]"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_sends_scratchdir", "sends", ["scratchdir"])
    op.create_index("ix_sends_state", "sends", ["state"])
    op.create_table(
        "routing_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("scratchdir", sa.String(64), nullable=False, server_default=""),
        sa.Column("send_id", sa.Integer),
        sa.Column("rule", sa.String(300), nullable=False, server_default=""),
        sa.Column("destination", sa.String(400), nullable=False, server_default=""),
        sa.Column("nfiles", sa.Integer, nullable=False, server_default="0"),
        sa.Column("outcome", sa.String(32), nullable=False, server_default=""),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_routing_log_at", "routing_log", ["at"])
    op.create_index("ix_routing_log_scratchdir", "routing_log", ["scratchdir"])


def downgrade() -> None:
    op.drop_table("routing_log")
    op.drop_table("sends")
