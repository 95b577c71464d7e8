"""Alarms as episodes (告警): raised once when a condition starts, updated while it lasts,
cleared by the daemon when it ends, acknowledged by an operator.

An episode is identified by (kind, bank_id, order_no, batch_no, key). Raising an alarm
whose episode is still open (not cleared) updates that row (count, last_at,
last_message) instead of inserting another: a condition that persists is one alarm,
however often it is seen. `clear_alarm` ends the open episode when the daemon sees
the condition gone; the next occurrence opens a new one. An event that has no natural
end (a rejected file, a refused batch) stays open until an operator acknowledges it.

Runs inside the caller's transaction, like the journal entry it usually goes with. The store
module of the `alarms` table (gateway/store/): `raise_`, `clear`, `acknowledge`, `open_` (also
importable, as before, as raise_alarm, clear_alarm, acknowledge_alarm, open_alarms from
gateway.alarms and gateway.rules).
"""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update
from twisted.logger import Logger

from gateway.models import alarms

log = Logger(namespace="gateway.alarms")   # the namespace it logged under before the move


def _episode(kind: str, bank_id, order_no, batch_no, key):
    c = alarms.c
    cond = [c.kind == kind, c.cleared_at.is_(None)]
    for col, v in ((c.bank_id, bank_id), (c.order_no, order_no), (c.batch_no, batch_no), (c.key, key)):
        cond.append(col.is_(None) if v is None else col == v)
    return cond


def raise_alarm(conn: Connection, at: str, severity: str, kind: str, message: str, *,
                bank_id=None, order_no=None, batch_no=None, journal_id=None, key=None) -> int:
    """Open an episode, or update the open one with the same identity; returns the alarm id."""
    row = conn.execute(select(alarms.c.id, alarms.c.count, alarms.c.severity)
                       .where(*_episode(kind, bank_id, order_no, batch_no, key))
                       .order_by(alarms.c.id.desc()).limit(1)).first()
    if row is not None:
        values = dict(count=(row.count or 1) + 1, last_at=at, last_message=message)
        if severity == "critical" and row.severity != "critical":
            values["severity"] = "critical"
        conn.execute(update(alarms).where(alarms.c.id == row.id).values(**values))
        log.debug("alarm {kind} still open (#{id}, seen {n} times): {message}",
                  kind=kind, id=row.id, n=values["count"], message=message)
        return row.id
    aid = conn.execute(insert(alarms).values(
        at=at, severity=severity, kind=kind, bank_id=bank_id, order_no=order_no,
        batch_no=batch_no, message=message, journal_id=journal_id, key=key, count=1,
        last_at=at, last_message=message)).inserted_primary_key[0]
    log.error("ALARM {kind} [{severity}] {message}", kind=kind, severity=severity, message=message,
              bank=bank_id, order_no=order_no, batch_no=batch_no)
    return aid


def clear_alarm(conn: Connection, at: str, kind: str, *, bank_id=None, order_no=None,
                batch_no=None, key=None) -> int:
    """End the open episode of this identity, if any; returns how many rows were cleared."""
    n = conn.execute(update(alarms).where(*_episode(kind, bank_id, order_no, batch_no, key))
                     .values(cleared_at=at)).rowcount
    if n:
        log.info("alarm {kind} cleared ({bank})", kind=kind, bank=bank_id or "-")
    return n


def acknowledge_alarm(conn: Connection, at: str, alarm_id: int, who: str, comment: str) -> bool:
    """An operator has seen it; returns False when there is no such alarm."""
    return conn.execute(update(alarms).where(alarms.c.id == alarm_id).values(
        acknowledged_by=who, acknowledged_at=at, ack_comment=comment)).rowcount == 1


def open_alarms(conn: Connection, bank_id=None) -> list[dict]:
    q = select(alarms).where(alarms.c.cleared_at.is_(None))
    if bank_id is not None:
        q = q.where(alarms.c.bank_id == bank_id)
    return [dict(r) for r in conn.execute(q.order_by(alarms.c.id)).mappings()]


# The store's names (gateway/store/): alarms.raise_(conn, ...), alarms.clear(conn, ...).
raise_ = raise_alarm
clear = clear_alarm
acknowledge = acknowledge_alarm
open_ = open_alarms


def is_open(conn: Connection, kind: str, bank_id: str, key: str) -> bool:
    """Whether the bank has an open (not cleared) alarm of this kind and key."""
    return conn.execute(select(alarms.c.id).where(
        alarms.c.kind == kind, alarms.c.bank_id == bank_id, alarms.c.key == key,
        alarms.c.cleared_at.is_(None))).first() is not None


def open_brief(conn: Connection) -> list[dict]:
    """Every open episode, its identity and latest message (the health report), by id."""
    return [dict(r) for r in conn.execute(
        select(alarms.c.id, alarms.c.bank_id, alarms.c.severity, alarms.c.kind, alarms.c.at,
               alarms.c.last_at, alarms.c.count, alarms.c.message, alarms.c.order_no, alarms.c.batch_no)
        .where(alarms.c.cleared_at.is_(None)).order_by(alarms.c.id)).mappings()]


def get(conn: Connection, alarm_id: int) -> dict:
    return dict(conn.execute(select(alarms).where(alarms.c.id == alarm_id)).mappings().one())
