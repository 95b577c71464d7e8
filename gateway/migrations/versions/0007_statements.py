"""banks' statements and their lines, for the monthly reconciliation

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'statements',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('bank_id', sa.String(length=32), nullable=False),
        sa.Column('period', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=200), nullable=False),
        sa.Column('dialect', sa.String(length=16), nullable=False),
        sa.Column('account', sa.String(length=34), nullable=True),
        sa.Column('opening_balance', sa.BigInteger(), nullable=True),
        sa.Column('closing_balance', sa.BigInteger(), nullable=True),
        sa.Column('totals', sa.Text(), nullable=True),
        sa.Column('line_count', sa.Integer(), nullable=False),
        sa.Column('fetched_at', sa.String(length=40), nullable=False),
        sa.Column('journal_id', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('bank_id', 'period', 'source', name='uq_statements_bank_period_source'),
    )
    op.create_table(
        'statement_lines',
        sa.Column('statement_id', sa.Integer(), nullable=False),
        sa.Column('line_no', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('reference', sa.String(length=64), nullable=False),
        sa.Column('order_no', sa.String(length=64), nullable=True),
        sa.Column('count', sa.Integer(), nullable=True),
        sa.Column('amount', sa.BigInteger(), nullable=False),
        sa.Column('paid_count', sa.Integer(), nullable=True),
        sa.Column('paid_amount', sa.BigInteger(), nullable=True),
        sa.Column('failed_count', sa.Integer(), nullable=True),
        sa.Column('failed_amount', sa.BigInteger(), nullable=True),
        sa.Column('returned_count', sa.Integer(), nullable=True),
        sa.Column('returned_amount', sa.BigInteger(), nullable=True),
        sa.Column('credit', sa.Integer(), nullable=True),
        sa.Column('entry_kind', sa.String(length=16), nullable=True),
        sa.Column('bank_ref', sa.String(length=64), nullable=True),
        sa.Column('booked', sa.String(length=10), nullable=True),
        sa.PrimaryKeyConstraint('statement_id', 'line_no'),
    )
    op.create_index('ix_statement_lines_reference', 'statement_lines', ['reference'])


def downgrade() -> None:
    op.drop_index('ix_statement_lines_reference', 'statement_lines')
    op.drop_table('statement_lines')
    op.drop_table('statements')
