"""Table access grouped by table (issue 12; Buildbot's connector components are the model).

One module per table or tight group of tables, each a set of plain functions that take a
SQLAlchemy `Connection` and run in the caller's transaction: the caller (a step of the flow,
an RPC method) owns the transaction, decides what happens in it and in which order, and holds
to the lock order of docs/lock-order.md (the rows it decides on first, the journal head last,
alarms after the journal). A store function never begins or commits, never journals, and
raises nothing of the RPC's: it returns rows, counts and row counts, and the caller decides.

- `orders`      orders
- `items`       items (the counts per status of rule 1, locks in seq order, per-item updates)
- `batches`     batches
- `refunds`     refunds and refund_items
- `corrections` corrections
- `disputes`    disputes
- `late_returns` late_returns
- `alarms`      alarms (episodes)
- `statements`  statements and statement_lines
- `feeds`       bank_feeds and bank_reports (a dialect's report feed, behind gateway/dialect_store.py)
- `result_sheets` result_sheets (gateway/paper/)
- `numbered`    the "next number of its parent" primary keys of refunds and disputes

Nothing below gateway/ imports this package (an import-linter contract in .importlinter).
"""
