"""items.account_bank_code: the account bank's 12-digit CNAPS code (联行号), optional

core-api.md lets an item carry `account_bank_code` (absent or null when the core
does not hold it); the iso20022 dialect names the creditor agent by it
(ClrSysMmbId, ClrSysId/Cd CNAPS) instead of by name. Nullable: existing items
have none.

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("account_bank_code", sa.String(12), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("account_bank_code")
