"""result sheets (交易结果): one row per batch whose sheet the gateway produced and sealed

The sheet's PDF and its detached SM2 signature are journal payloads; the row names
them and records when the department filed the sheet with finance (article 26).
Also an index on items.result_at: the monthly and yearly reports select a month's
results by it, and the year's bound volume does so twelve times over millions of items.

Revision ID: 0016
Revises: 0015
"""
from alembic import op
import sqlalchemy as sa

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_sheets",
        sa.Column("batch_no", sa.String(64), primary_key=True),
        sa.Column("order_no", sa.String(64), nullable=False),
        sa.Column("bank_id", sa.String(32), nullable=False),
        sa.Column("produced_at", sa.String(40), nullable=False),
        sa.Column("pdf_sm3", sa.String(64), nullable=False),
        sa.Column("pdf_sha256", sa.String(64), nullable=False),
        sa.Column("pdf_size", sa.BigInteger(), nullable=False),
        sa.Column("signer", sa.String(100), nullable=False),
        sa.Column("journal_id", sa.Integer(), nullable=False),
        sa.Column("sig_journal_id", sa.Integer(), nullable=False),
        sa.Column("filed_at", sa.String(40), nullable=True),
        sa.Column("filed_by", sa.String(100), nullable=True),
    )
    op.create_index("ix_result_sheets_order_no", "result_sheets", ["order_no"])
    op.create_index("ix_result_sheets_bank_id", "result_sheets", ["bank_id"])
    op.create_index("ix_items_result_at", "items", ["result_at"])


def downgrade() -> None:
    op.drop_index("ix_items_result_at", table_name="items")
    op.drop_index("ix_result_sheets_bank_id", table_name="result_sheets")
    op.drop_index("ix_result_sheets_order_no", table_name="result_sheets")
    op.drop_table("result_sheets")
