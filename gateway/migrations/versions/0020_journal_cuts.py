"""Journal retention: the cuts that moved old journal entries to cold archive files

One row per cold file written by `gatewayctl journal archive`: the entries first_id..last_id
it holds (deleted from `journal` in the same transaction that inserted the row), the hash of
the entry before them (prev_hash) and of its last entry (last_hash), the file's name in
[journal] cold_dir with its SHA-256 and SM3, and the row's MAC under the journal key. The row
with the highest last_id is the anchor: the first live entry's prev_hash is its last_hash.

Revision ID: 0020
Revises: 0019
"""
from alembic import op
import sqlalchemy as sa

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal_cuts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("first_id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False, unique=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("file", sa.String(200), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("file_sm3", sa.String(64), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("mac", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("journal_cuts")
