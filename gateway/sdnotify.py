"""systemd's notify protocol (sd_notify), for `Type=notify` with `WatchdogSec`.

A datagram to the AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract namespace):
READY=1 once the service tree has started, WATCHDOG=1 at half the interval systemd
asks for ($WATCHDOG_USEC) while the reactor turns, STOPPING=1 on shutdown. Without
$NOTIFY_SOCKET (not under systemd) every call does nothing. Twelve lines of protocol
do not earn a dependency (`sdnotify` on PyPI is the same thing).
"""

from __future__ import annotations

import os
import socket

from twisted.internet import task


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + addr[1:]) if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self._loop: task.LoopingCall | None = None

    def notify(self, state: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                s.sendall(state.encode("ascii"))
            return True
        except OSError:
            return False   # systemd gone or a stale variable: never a reason to stop paying

    def ready(self, clock, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if self.watchdog_s and self._loop is None:
            self._loop = task.LoopingCall(self.notify, "WATCHDOG=1")
            self._loop.clock = clock
            self._loop.start(self.watchdog_s / 2, now=True)

    def stopping(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.notify("STOPPING=1")
