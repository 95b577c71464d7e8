"""gateway/store/orders.py: which orders a bank's flow picks for a PAY batch and for a RETRY batch.

On SQLite and PostgreSQL. These are the candidate lists the flow acts on without checking
again: an order of another bank, in another state, or already held by a live batch must
never be picked (a batch made for another bank's order would go to the wrong bank).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gateway import db as dbmod
from gateway.models import orders
from gateway.store import orders as order_store
from tests.test_scheduler import BANK, _batch, _order

OTHER = "otherbank"


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


def test_needing_batch_picks_only_this_banks_loaded_orders_that_no_live_batch_holds(engine):
    """LOADED and of this bank, with no batch or only a finished one of its own: picked. Another
    bank's LOADED order, a FUNDED or DISPATCHED order, and one whose own batch is live: not. A
    live batch of another order does not hide this one (the batch is matched to its order)."""
    with engine.begin() as c:
        _order(c, "A-FREE", "LOADED")
        _order(c, "A-OLD-DONE", "LOADED")
        _batch(c, "A-OLD-DONE-P01", "A-OLD-DONE", "DONE")
        _order(c, "A-HELD", "LOADED")
        _batch(c, "A-HELD-P01", "A-HELD", "ACCEPTED")
        _order(c, "A-FUNDED", "FUNDED")
        _order(c, "A-DISPATCHED", "DISPATCHED")
        _order(c, "B-LOADED", "LOADED", bank_id=OTHER)
    with engine.begin() as c:
        assert order_store.needing_batch(c, BANK) == ["A-FREE", "A-OLD-DONE"]
        assert order_store.needing_batch(c, OTHER) == ["B-LOADED"]


def test_to_retry_picks_only_this_banks_dispatched_orders_asked_to_retry(engine):
    """retry_requested and DISPATCHED, of this bank: picked; not asked, SETTLED, or another
    bank's: not."""
    with engine.begin() as c:
        for no, state, bank, asked in (("A-ASKED", "DISPATCHED", BANK, 1), ("A-NOT-ASKED", "DISPATCHED", BANK, 0),
                                       ("A-SETTLED", "SETTLED", BANK, 1), ("B-ASKED", "DISPATCHED", OTHER, 1)):
            _order(c, no, state, bank_id=bank)
            c.execute(sa.update(orders).where(orders.c.order_no == no).values(retry_requested=asked))
    with engine.begin() as c:
        assert order_store.to_retry(c, BANK) == ["A-ASKED"]
        assert order_store.to_retry(c, OTHER) == ["B-ASKED"]
