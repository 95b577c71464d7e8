"""article 26: batch confirmation and dispute deadlines in working days, disputes (DP01)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as b:
        b.add_column(sa.Column('confirm_due', sa.String(length=10), nullable=True))
        b.add_column(sa.Column('dispute_due', sa.String(length=10), nullable=True))
        b.add_column(sa.Column('confirmed_by', sa.String(length=100), nullable=True))
        b.add_column(sa.Column('confirmed_at', sa.String(length=40), nullable=True))
        b.add_column(sa.Column('overdue_alarmed', sa.Integer(), nullable=False, server_default='0'))
    op.create_table(
        'disputes',
        sa.Column('dispute_no', sa.String(length=64), nullable=False),
        sa.Column('batch_no', sa.String(length=64), nullable=False),
        sa.Column('order_no', sa.String(length=64), nullable=False),
        sa.Column('bank_id', sa.String(length=32), nullable=False),
        sa.Column('seqs', sa.Text(), nullable=False),
        sa.Column('reason', sa.String(length=200), nullable=False),
        sa.Column('raised_by', sa.String(length=100), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('due', sa.String(length=10), nullable=True),
        sa.Column('on_time', sa.Integer(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.String(length=40), nullable=False),
        sa.Column('updated_at', sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint('dispute_no'),
    )
    op.create_index('ix_disputes_batch_no', 'disputes', ['batch_no'])
    op.create_index('ix_disputes_bank_id', 'disputes', ['bank_id'])
    op.create_index('ix_disputes_state', 'disputes', ['state'])


def downgrade() -> None:
    op.drop_index('ix_disputes_state', 'disputes')
    op.drop_index('ix_disputes_bank_id', 'disputes')
    op.drop_index('ix_disputes_batch_no', 'disputes')
    op.drop_table('disputes')
    with op.batch_alter_table('batches') as b:
        for c in ('overdue_alarmed', 'confirmed_at', 'confirmed_by', 'dispute_due', 'confirm_due'):
            b.drop_column(c)
