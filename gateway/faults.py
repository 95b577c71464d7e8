"""Named crash points for the crash tests: the process kills itself with SIGKILL there.

Only active when `[testing] crash_after` in the configuration names the point;
a production configuration leaves it empty. SIGKILL, not an exception: the
test must see exactly what a power cut or `kill -9` leaves behind.
"""

from __future__ import annotations

import os
import signal

POINTS = frozenset({
    "BP01-reply-received",   # the bank accepted BP01; its reply is read but not recorded
    "results-applied",       # results committed, nothing pushed to the core yet
})


class Faults:
    def __init__(self, crash_after: str = ""):
        if crash_after and crash_after not in POINTS:
            raise ValueError(f"testing.crash_after: unknown crash point {crash_after!r}; "
                             f"known: {', '.join(sorted(POINTS))}")
        self.crash_after = crash_after

    def point(self, name: str) -> None:
        if name == self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
