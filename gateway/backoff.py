"""How often a question the bank did not answer usefully is asked again (退避).

Every repeated request to a bank (BQ01, RQ01, DP01, a BP01 or RF01 sent again
after E008/E009, a status question after a transport failure) waits its normal
interval, doubled for each consecutive failure, up to a cap. The failure count
is kept in the row's `failures` column and the next time in `next_check_at`, so
a restart neither forgets the backoff nor asks everything at once.
"""

from __future__ import annotations

CAP_S = 900.0   # never wait more than 15 minutes between tries (unless the interval is longer)


def delay(interval_s: float, failures: int, cap_s: float = CAP_S) -> float:
    """Seconds until the next try: *interval_s* after a good answer (failures = 0), then
    doubled per consecutive failure, capped at max(cap_s, interval_s)."""
    if failures <= 0:
        return interval_s
    return min(interval_s * 2.0 ** min(failures, 30), max(cap_s, interval_s))


def next_at(now: float, interval_s: float, failures: int) -> int:
    """`next_check_at`: reactor seconds, whole (the column is an integer)."""
    return int(now + delay(interval_s, failures))
