"""What every step of one bank's flow stands on, said once.

A bank's flow (gateway/flow.py) is composed of steps: the orders and batches in
BankFlow itself, refunds (refund_flow.py), late returns (late_returns.py), article 26
deadlines and disputes (article26.py) and the push to the core (core_push.py). Each
step is an object built from this context plus the collaborators it names in its
constructor (the bank adapter, the core, the recorder the adapter journals through);
nothing is shared through `self` between steps.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.rules import CST, clear_alarm, iso, raise_alarm


@dataclass
class FlowContext:
    """One bank's clock, settings and database (fenced while this daemon leads)."""

    reactor: object          # IReactorTime: the clock every step reads
    cfg: object              # gateway.config.GatewayConfig
    bank: object             # gateway.config.BankConfig
    db: object               # gateway.db.Database or FencedDatabase

    @property
    def bank_id(self) -> str:
        return self.bank.bank_id

    def now(self) -> float:
        return self.reactor.seconds()

    def at(self) -> str:
        return iso(self.now())

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.now(), CST).date()

    def alarm(self, conn: Connection, severity: str, kind: str, message: str, **kw) -> None:
        """Open (or update) this bank's alarm episode, in the caller's transaction."""
        raise_alarm(conn, self.at(), severity, kind, message, bank_id=self.bank_id, **kw)

    def clear(self, conn: Connection, kind: str, **kw) -> int:
        return clear_alarm(conn, self.at(), kind, bank_id=self.bank_id, **kw)
