"""Console: an index that answers an order's per-state counts, and sessions kept in the database

ix_items_order_counts covers items(order_no, status, reason_code, seq, amount): the console's
grouped count and sum of a million-item order reads this index alone (an index-only scan on
PostgreSQL, a covering index on SQLite), never the table's wide rows; and a page of the
order's items filtered by state and reason code is a range of it in seq order (keyset paging),
where without seq the database fetched every matching item and sorted them for each page.

console_sessions holds signed-in sessions by the SHA-256 of their id (the cookie's value is
never stored), so a daemon restart or a second daemon (a standby serving read-only) does not
sign everyone out; console_lockouts holds the wrong-password counters the same way.
Times are seconds of the daemon's clock.

ix_corrections_journal_id, ix_alarms_journal_id and ix_late_returns_journal_id let a journal
entry's page find the state changes that entry caused without a scan.

Revision ID: 0018
Revises: 0017
"""
from alembic import op
import sqlalchemy as sa

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_order_counts", "items", ["order_no", "status", "reason_code", "seq", "amount"])
    for table in ("corrections", "alarms", "late_returns"):
        op.create_index(f"ix_{table}_journal_id", table, ["journal_id"])
    op.create_table(
        "console_sessions",
        sa.Column("sid_hash", sa.String(64), primary_key=True),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("signed_in_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
    )
    op.create_index("ix_console_sessions_user_name", "console_sessions", ["user_name"])
    op.create_table(
        "console_lockouts",
        sa.Column("user_name", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("console_lockouts")
    op.drop_index("ix_console_sessions_user_name", table_name="console_sessions")
    op.drop_table("console_sessions")
    for table in ("corrections", "alarms", "late_returns"):
        op.drop_index(f"ix_{table}_journal_id", table_name=table)
    op.drop_index("ix_items_order_counts", table_name="items")
