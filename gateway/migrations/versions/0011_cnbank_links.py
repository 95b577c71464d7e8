"""bank questions back off (failures on batches, refunds, disputes; next_check_at on disputes);
items held by a refused batch are released to go out under a new number

A batch refused at submission (BP01 answered an E code other than E008/E009) was a dead
end: its items stayed attached to it forever. From this revision the flow releases them
(PAY items to PENDING, RETRY items back to CORRECTED pointing at the batch they failed in)
and builds them into a new batch; this migration does the same for refusals already in
the database, except E004 (the bank holds another batch under that number: an operator
decides). See docs/spec-readings.md.

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('batches', 'refunds'):
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column('failures', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('disputes') as b:
        b.add_column(sa.Column('next_check_at', sa.BigInteger(), nullable=True))
        b.add_column(sa.Column('failures', sa.Integer(), nullable=False, server_default='0'))
    refused = ("SELECT batch_no FROM batches WHERE state = 'REFUSED' AND kind = '{kind}' "
               "AND COALESCE(reject_code, '') <> 'E004'")
    op.execute("UPDATE orders SET retry_requested = 1 WHERE order_no IN (SELECT i.order_no FROM items i "
               "WHERE i.status = 'CORRECTED' AND i.batch_no IN (" + refused.format(kind='RETRY') + "))")
    op.execute("UPDATE items SET batch_no = orig_batch_no, orig_batch_no = NULL WHERE status = 'CORRECTED' "
               "AND batch_no IN (" + refused.format(kind='RETRY') + ")")
    op.execute("UPDATE items SET batch_no = NULL WHERE status = 'PENDING' "
               "AND batch_no IN (" + refused.format(kind='PAY') + ")")


def downgrade() -> None:
    with op.batch_alter_table('disputes') as b:
        b.drop_column('failures')
        b.drop_column('next_check_at')
    for table in ('refunds', 'batches'):
        with op.batch_alter_table(table) as b:
            b.drop_column('failures')
