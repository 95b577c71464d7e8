"""refunds to the original channel and their items

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'refunds',
        sa.Column('refund_no', sa.String(length=64), nullable=False),
        sa.Column('order_no', sa.String(length=64), nullable=False),
        sa.Column('bank_id', sa.String(length=32), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('total_count', sa.Integer(), nullable=False),
        sa.Column('total_amount', sa.BigInteger(), nullable=False),
        sa.Column('reason', sa.String(length=200), nullable=False),
        sa.Column('approved_by', sa.String(length=100), nullable=False),
        sa.Column('caller', sa.String(length=200), nullable=False),
        sa.Column('refund_serial', sa.String(length=64), nullable=True),
        sa.Column('returned_to', sa.String(length=32), nullable=True),
        sa.Column('refund_amount', sa.BigInteger(), nullable=True),
        sa.Column('reject_code', sa.String(length=8), nullable=True),
        sa.Column('reject_msg', sa.String(length=500), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_check_at', sa.BigInteger(), nullable=True),
        sa.Column('created_at', sa.String(length=40), nullable=False),
        sa.Column('updated_at', sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint('refund_no'),
    )
    op.create_index('ix_refunds_order_no', 'refunds', ['order_no'])
    op.create_index('ix_refunds_bank_id', 'refunds', ['bank_id'])
    op.create_index('ix_refunds_state', 'refunds', ['state'])
    op.create_table(
        'refund_items',
        sa.Column('refund_no', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('order_no', sa.String(length=64), nullable=False),
        sa.Column('batch_no', sa.String(length=64), nullable=False),
        sa.Column('amount', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('refund_no', 'seq'),
    )


def downgrade() -> None:
    op.drop_table('refund_items')
    op.drop_index('ix_refunds_state', 'refunds')
    op.drop_index('ix_refunds_bank_id', 'refunds')
    op.drop_index('ix_refunds_order_no', 'refunds')
    op.drop_table('refunds')
