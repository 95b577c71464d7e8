"""RPC races and bulk corrections: no schema change needed

The race fixes (gateway/commands.py) lock rows with SELECT ... FOR UPDATE and rely on
constraints the schema already has: refunds.refund_no and disputes.dispute_no are primary
keys, which is what makes a concurrently allocated number fail and be retried rather than
collide; item.correct_many writes the existing corrections table, one row per item. This
revision is kept (empty) so that the migration numbering reserved for this change stays
in order.

Revision ID: 0013
Revises: 0012
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
