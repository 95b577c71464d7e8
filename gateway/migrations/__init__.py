"""The Alembic migrations of the gateway's schema (versions/NNNN_*.py, revision ids "NNNN").

HEAD is the newest revision, the one the daemon and gatewayctl require; kept here so that
checking a database needs no Alembic (tests/test_migrations.py checks it is Alembic's head).
"""

HEAD = "0020"
