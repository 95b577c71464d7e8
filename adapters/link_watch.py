"""A bank link's health, the same for every dialect: what health shows and when `bank-link-down` opens.

Each exchange with the bank is noted: a verified answer (`ok`) or none (`failed`: no
connection, a timeout, a reply that failed verification, a 5xx). `state()` is what
health and /metrics show: the last success and the last error with their times,
consecutive failures, and since when the link fails. Once it has failed for
`alarm_after_s` (the bank file's `link_alarm_after_s`), `failed` says so and the
adapter raises, or updates, the bank's one critical `bank-link-down` episode with
`down_message`; the first verified answer after that says the episode is to be cleared.
Kept in memory: after a restart an episode of the former run may still be open, so the
first verified answer of a run also clears (once).
"""

from __future__ import annotations

import datetime

_CST = datetime.timezone(datetime.timedelta(hours=8))

ALARM_KIND = "bank-link-down"


class LinkWatch:
    """One bank link's state (in memory) and its bank-link-down decisions."""

    def __init__(self, alarm_after_s: float, bank_id: str = "") -> None:
        self.alarm_after_s = alarm_after_s
        self.bank_id = bank_id
        self._state = {"last_ok_at": None, "last_error_at": None, "last_error": None,
                       "failures": 0, "failing_since": None}
        self._alarm_maybe_open = True

    def state(self) -> dict:
        """last_ok_at, last_error_at, last_error, failures (consecutive), failing_since."""
        return dict(self._state)

    def ok(self, now: float) -> bool:
        """Note a verified answer; True when a bank-link-down episode may be open (to clear)."""
        was_down = self._state["failures"] > 0 or self._alarm_maybe_open
        self._state.update(last_ok_at=now, failures=0, failing_since=None)
        self._alarm_maybe_open = False
        return was_down

    def failed(self, now: float, why: str) -> bool:
        """Note an exchange without a verified answer; True when the link has now failed for at
        least alarm_after_s (the caller raises, or updates, the one bank-link-down episode)."""
        st = self._state
        st.update(last_error_at=now, last_error=why[:300], failures=st["failures"] + 1)
        if st["failing_since"] is None:
            st["failing_since"] = now
        if now - st["failing_since"] >= self.alarm_after_s:
            self._alarm_maybe_open = True
            return True
        return False

    def down_message(self, now: float) -> str:
        """The episode's text: the bank, since when, how long, how many attempts, the last error."""
        st = self._state
        since = datetime.datetime.fromtimestamp(st["failing_since"], _CST).isoformat(timespec="seconds")
        bank = f" {self.bank_id}" if self.bank_id else ""
        return (f"no verified answer from the bank{bank} since {since} (银行链路中断, "
                f"{int(now - st['failing_since'])} s, {st['failures']} attempts): {st['last_error']}")
