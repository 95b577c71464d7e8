"""leader epochs and leases: leases (one row per lease: epoch = the fencing token, holder,
expiry in the database's clock) and lease_terms (one row per epoch, for operators and tests)

Revision ID: 0015
Revises: 0014
"""
from alembic import op
import sqlalchemy as sa

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('epoch', sa.BigInteger(), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=True),
        sa.Column('acquired_ms', sa.BigInteger(), nullable=True),
        sa.Column('expires_ms', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_table(
        'lease_terms',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('epoch', sa.BigInteger(), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('acquired_ms', sa.BigInteger(), nullable=False),
        sa.Column('expires_ms', sa.BigInteger(), nullable=True),
        sa.Column('released_ms', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('name', 'epoch'),
    )


def downgrade() -> None:
    op.drop_table('lease_terms')
    op.drop_table('leases')
