"""the journal's message-type column holds a whole ISO 20022 message name (MsgNmId, Max35Text)

`pain.002.001.03.ch.02` (21 characters) was cut to 20 on its way into the journal; the
column becomes String(35), the longest MsgNmId, and the adapter no longer cuts.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('journal') as b:
        b.alter_column('tx_code', existing_type=sa.String(length=32), type_=sa.String(length=35),
                       existing_nullable=False)


def downgrade() -> None:
    # Journal rows are hash-chained evidence: never cut them to fit; refuse instead.
    longer = op.get_bind().execute(sa.text("SELECT count(*) FROM journal WHERE length(tx_code) > 32")).scalar()
    if longer:
        raise RuntimeError(f"{longer} journal entries have a message type longer than 32 characters: "
                           "the journal cannot go back to revision 0009 without altering evidence")
    with op.batch_alter_table('journal') as b:
        b.alter_column('tx_code', existing_type=sa.String(length=35), type_=sa.String(length=32),
                       existing_nullable=False)
