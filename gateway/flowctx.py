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
from dataclasses import dataclass, field

from sqlalchemy import Connection

from gateway.rules import CST, clear_alarm, iso, raise_alarm


@dataclass
class FlowContext:
    """One bank's clock, settings and database (fenced while this daemon leads)."""

    reactor: object          # IReactorTime: the clock every step reads
    cfg: object              # gateway.config.GatewayConfig
    bank: object             # gateway.config.BankConfig
    db: object               # gateway.db.Database or FencedDatabase
    metrics: object = None   # gateway.metrics.Metrics: stage durations (METRICS when None)
    # Stages that span steps (submit: from the upload until the bank accepted the batch; refund:
    # from the first RF01 until accepted): when each began, on the metrics' monotonic clock. In
    # memory: after a restart such a stage is not observed (no guess).
    began: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metrics is None:
            from gateway.metrics import METRICS
            self.metrics = METRICS

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

    # --- stage durations (gateway_stage_duration_seconds) -----------------------------------
    def started(self) -> float:
        """Now on the metrics' monotonic clock (any thread): where a stage starts."""
        return self.metrics.clock()

    def stage(self, stage: str, started: float) -> None:
        """The stage that began at `started` ended well now."""
        self.metrics.stage(self.bank_id, stage, started)

    def stage_began(self, stage: str, key: str) -> None:
        """A stage spanning steps begins for `key` (kept from the first time)."""
        self.began.setdefault((stage, key), self.metrics.clock())

    def stage_ended(self, stage: str, key: str, well: bool = True) -> None:
        began = self.began.pop((stage, key), None)
        if well and began is not None:
            self.metrics.stage(self.bank_id, stage, began)
