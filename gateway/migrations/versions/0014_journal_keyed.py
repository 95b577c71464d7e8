"""journal entries authenticated with a key outside the database: journal.mac, journal_head.keyed_from

`journal.mac` is the HMAC-SM3, under the `[journal] key_file` key, of the entry's hash
(NULL for entries written before a key was configured). `journal_head.keyed_from` is the
id of the first entry that carries one (NULL while none does).

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Adding nullable columns: SQLite does it in place (no table copy of a big journal).
    with op.batch_alter_table('journal') as b:
        b.add_column(sa.Column('mac', sa.String(length=64), nullable=True))
    with op.batch_alter_table('journal_head') as b:
        b.add_column(sa.Column('keyed_from', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('journal_head') as b:
        b.drop_column('keyed_from')
    with op.batch_alter_table('journal') as b:
        b.drop_column('mac')
