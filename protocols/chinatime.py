"""China Standard Time (UTC+08:00), said once.

Every date and time the gateway writes or reads (the banks' TxDate/TxTime and PostDate, the
core's ISO 8601 timestamps, the journal, the logs, the console, deadlines in working days)
is in China time, whatever the host's own time zone is.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8))


def iso(seconds: float | None, timespec: str = "seconds") -> str | None:
    """Epoch seconds as ISO 8601 in China time ("2026-11-20T09:00:00+08:00"); None for None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, CST).isoformat(timespec=timespec)
