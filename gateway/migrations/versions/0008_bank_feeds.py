"""banks' report feeds (ISO 20022 GET /reports): the cursor and the verified documents

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'bank_feeds',
        sa.Column('bank_id', sa.String(length=32), nullable=False),
        sa.Column('cursor', sa.String(length=64), nullable=True),
        sa.Column('updated_at', sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint('bank_id'),
    )
    op.create_table(
        'bank_reports',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('bank_id', sa.String(length=32), nullable=False),
        sa.Column('cursor', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('msg_id', sa.String(length=64), nullable=False),
        sa.Column('ref', sa.String(length=64), nullable=True),
        sa.Column('journal_id', sa.Integer(), nullable=False),
        sa.Column('received_at', sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_bank_reports_bank_id', 'bank_reports', ['bank_id'])
    op.create_index('ix_bank_reports_ref', 'bank_reports', ['ref'])


def downgrade() -> None:
    op.drop_index('ix_bank_reports_ref', 'bank_reports')
    op.drop_index('ix_bank_reports_bank_id', 'bank_reports')
    op.drop_table('bank_reports')
    op.drop_table('bank_feeds')
