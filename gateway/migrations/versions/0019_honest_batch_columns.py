"""Batches: the file digest and the results' reference named for what they hold

`file_sm3` held the digest of the batch document, SM3 for cnbank but SHA-256 for iso20022:
it is now `file_digest`, with `file_digest_alg` naming the algorithm (NULL for batches built
before this revision: the bank's dialect says which). `result_file` held the bank's result
file name for cnbank but a journal id ("parts:<id>" for a split batch) for iso20022: it is now
`result_ref`, what the dialect's fetch_results reads its results from. Values are kept as they are.

Revision ID: 0019
Revises: 0018
"""
from alembic import op
import sqlalchemy as sa

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as b:
        b.alter_column('file_sm3', new_column_name='file_digest', existing_type=sa.String(length=64))
        b.alter_column('result_file', new_column_name='result_ref', existing_type=sa.String(length=100))
        b.add_column(sa.Column('file_digest_alg', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batches') as b:
        b.drop_column('file_digest_alg')
        b.alter_column('result_ref', new_column_name='result_file', existing_type=sa.String(length=100))
        b.alter_column('file_digest', new_column_name='file_sm3', existing_type=sa.String(length=64))
