"""corrections with their evidence; items remember the batch they last failed in

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'corrections',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('order_no', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('at', sa.String(length=40), nullable=False),
        sa.Column('failed_batch_no', sa.String(length=64), nullable=True),
        sa.Column('reason_code', sa.String(length=8), nullable=True),
        sa.Column('old_values', sa.Text(), nullable=False),
        sa.Column('new_values', sa.Text(), nullable=False),
        sa.Column('confirmed_by', sa.String(length=100), nullable=False),
        sa.Column('approved_by', sa.String(length=100), nullable=False),
        sa.Column('approval_ref', sa.String(length=100), nullable=False),
        sa.Column('caller', sa.String(length=200), nullable=False),
        sa.Column('journal_id', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_corrections_order_no', 'corrections', ['order_no'])
    with op.batch_alter_table('items') as b:
        b.add_column(sa.Column('orig_batch_no', sa.String(length=64), nullable=True))
    with op.batch_alter_table('orders') as b:
        b.add_column(sa.Column('retry_requested', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('orders') as b:
        b.drop_column('retry_requested')
    with op.batch_alter_table('items') as b:
        b.drop_column('orig_batch_no')
    op.drop_index('ix_corrections_order_no', 'corrections')
    op.drop_table('corrections')
