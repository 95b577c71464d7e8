"""result versions per item (core-api.md: results idempotent per (order_no, seq, version))

items.result_version is the version given to the item's current result (1, 2, 3...: one
more for every new result, never reused), items.version_sig the result it was given to
(status|reason_code|reason_text|bank_serial|result_at), items.pushed_version the version
the core has acknowledged. Results pushed before this revision count as version 1: an
item whose current result was pushed keeps it as version 1 (not pushed again); one whose
result changed since its last push gets version 2 when it is pushed.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

SIG = ("coalesce(status, '') || '|' || coalesce(reason_code, '') || '|' || coalesce(reason_text, '')"
       " || '|' || coalesce(bank_serial, '') || '|' || coalesce(result_at, '')")


def upgrade() -> None:
    with op.batch_alter_table('items') as b:
        b.add_column(sa.Column('result_version', sa.Integer(), nullable=True))
        b.add_column(sa.Column('version_sig', sa.String(length=400), nullable=True))
        b.add_column(sa.Column('pushed_version', sa.Integer(), nullable=True))
    op.execute("UPDATE items SET result_version = 1 WHERE pushed IS NOT NULL")
    op.execute(f"UPDATE items SET pushed_version = 1, version_sig = {SIG} "
               f"WHERE pushed IS NOT NULL AND pushed = status AND coalesce(result_at, '') <> ''")


def downgrade() -> None:
    with op.batch_alter_table('items') as b:
        b.drop_column('pushed_version')
        b.drop_column('version_sig')
        b.drop_column('result_version')
