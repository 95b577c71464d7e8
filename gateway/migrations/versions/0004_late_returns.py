"""late returns applied once per ReturnSerial; batches remember when they were done

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'late_returns',
        sa.Column('return_serial', sa.String(length=64), nullable=False),
        sa.Column('bank_id', sa.String(length=32), nullable=False),
        sa.Column('batch_no', sa.String(length=64), nullable=False),
        sa.Column('order_no', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('amount', sa.BigInteger(), nullable=False),
        sa.Column('reason_code', sa.String(length=8), nullable=False),
        sa.Column('return_date', sa.String(length=8), nullable=False),
        sa.Column('applied_at', sa.String(length=40), nullable=False),
        sa.Column('journal_id', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('return_serial', 'bank_id'),
    )
    op.create_index('ix_late_returns_order_no', 'late_returns', ['order_no'])
    with op.batch_alter_table('batches') as b:
        b.add_column(sa.Column('done_at', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as b:
        b.drop_column('done_at')
    op.drop_index('ix_late_returns_order_no', 'late_returns')
    op.drop_table('late_returns')
