"""The rules every step of the flow holds to, shared by the flow's modules and the RPC.

Conservation (domain.md rule 1) is checked from the items themselves; alarms
are rows an operator sees; times are ISO 8601 at +08:00 as the core and banks
write them.
"""

from __future__ import annotations

import datetime

from sqlalchemy import Connection
from twisted.logger import Logger

from gateway.models import ItemStatus
from gateway.store import items, orders
from gateway.store.alarms import clear_alarm, raise_alarm  # noqa: F401  (re-exported for the steps)
from protocols.chinatime import CST, iso  # noqa: F401  (imported from here by the gateway)

log = Logger()


class ConservationError(Exception):
    """A change would break rule 1 (funded = paid + refunded + in flight); refused, not written."""


class ResultRejected(Exception):
    """A result file or reply that does not match our batch; applied not at all."""


def check_conservation(conn: Connection, order_no: str) -> dict[str, tuple[int, int]]:
    """Rule 1 for one order, from the items themselves; returns count and amount per status."""
    o = orders.funded(conn, order_no)
    per = {r.status: (r.n, int(r.amt or 0)) for r in items.per_status(conn, order_no)}
    unknown = set(per) - set(ItemStatus.ALL)
    n = sum(v[0] for v in per.values())
    amt = sum(v[1] for v in per.values())
    if unknown or n != o.total_count or amt != o.total_amount:
        raise ConservationError(
            f"order {order_no}: items hold {n} items / {amt} fen in states {sorted(per)}, "
            f"funded {o.total_count} items / {o.total_amount} fen")
    return per


def post_date(d: str) -> str:
    """'20261128' or '2026-11-28' -> '2026-11-28T00:00:00+08:00' (the core wants ISO 8601 with offset)."""
    if len(d) == 8 and d.isdigit():
        return f"{d[:4]}-{d[4:6]}-{d[6:]}T00:00:00+08:00"
    if len(d) == 10 and d[4] == "-" and d[7] == "-":
        return f"{d}T00:00:00+08:00"
    return d
