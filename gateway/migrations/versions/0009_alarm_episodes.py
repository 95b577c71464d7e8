"""alarms become episodes: identity key, count, last seen, cleared, acknowledged with a comment

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('alarms') as b:
        b.add_column(sa.Column('key', sa.String(length=200), nullable=True))
        b.add_column(sa.Column('count', sa.Integer(), nullable=False, server_default='1'))
        b.add_column(sa.Column('last_at', sa.String(length=40), nullable=True))
        b.add_column(sa.Column('last_message', sa.Text(), nullable=True))
        b.add_column(sa.Column('cleared_at', sa.String(length=40), nullable=True))
        b.add_column(sa.Column('acknowledged_at', sa.String(length=40), nullable=True))
        b.add_column(sa.Column('ack_comment', sa.Text(), nullable=True))
    op.create_index('ix_alarms_open', 'alarms', ['kind', 'cleared_at'])


def downgrade() -> None:
    op.drop_index('ix_alarms_open', 'alarms')
    with op.batch_alter_table('alarms') as b:
        for c in ('ack_comment', 'acknowledged_at', 'cleared_at', 'last_message', 'last_at', 'count', 'key'):
            b.drop_column(c)
