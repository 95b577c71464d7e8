"""each batch's bank deadline for its results, in working days

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as b:
        b.add_column(sa.Column('bank_due', sa.String(length=10), nullable=True))
        b.add_column(sa.Column('bank_overdue_alarmed', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('batches') as b:
        b.drop_column('bank_overdue_alarmed')
        b.drop_column('bank_due')
