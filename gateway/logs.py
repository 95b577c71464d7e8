"""The daemon's log lines as operators and log shippers read them.

With `format = "json"` (or stdout not a terminal) every line is one JSON object that
`json.loads` takes as it is: `ts` (ISO 8601 in China time, +08:00, like the journal),
`level`, `logger`, `msg` (the rendered message), `bank`, `order_no`, `batch_no` where
the event carries them, and `error_type`/`error` for a failure. Twisted's own
`jsonFileLogObserver` writes a record separator (0x1E) before each record and the
event's template, not its message: shippers cannot use that.

Every rendered text passes through `mask_text` (domain.md rule 6): a log line never
holds an ID or card number in clear, even when a library's error message quotes one.
"""

from __future__ import annotations

import datetime
import json
from typing import IO

from twisted.logger import (FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate,
                            formatEvent)
from zope.interface import implementer

from gateway.masking import mask_text
from protocols.chinatime import CST

FIELDS = ("bank", "order_no", "batch_no", "refund_no", "kind", "severity")

# Conch says "Disconnecting with error, code 10" at info on every clean SFTP close, and
# every HTTP client connection says Starting/Stopping factory: quiet them below warn.
QUIET_NAMESPACES = ("adapters.sftp._ClientTransport", "twisted.conch",
                    "twisted.web.client._HTTP11ClientFactory", "adapters.core_http._QuietFactory",
                    "twisted.internet.protocol")


def _ts(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t or 0, CST).isoformat(timespec="milliseconds")


def event_to_dict(event: dict) -> dict:
    level = event.get("log_level")
    out = {
        "ts": _ts(event.get("log_time")),
        "level": level.name if level is not None else "info",
        "logger": event.get("log_namespace", "-"),
        "msg": mask_text(formatEvent(event) or ""),
    }
    for k in FIELDS:
        v = event.get(k)
        if v is not None:
            out[k] = mask_text(str(v))
    f = event.get("log_failure")
    if f is not None:
        out["error_type"] = getattr(f.type, "__name__", str(f.type))
        out["error"] = mask_text(str(f.value))
    return out


@implementer(ILogObserver)
class JsonLinesObserver:
    """One JSON object per line, flushed per line (systemd-journald and shippers read lines)."""

    def __init__(self, out: IO[str]):
        self.out = out

    def __call__(self, event: dict) -> None:
        try:
            line = json.dumps(event_to_dict(event), ensure_ascii=False, default=str)
        except Exception as e:  # noqa: BLE001 -- a log line must never take the daemon down
            line = json.dumps({"ts": _ts(event.get("log_time")), "level": "error", "logger": "gateway.logs",
                               "msg": f"unloggable event: {type(e).__name__}"})
        self.out.write(line + "\n")
        self.out.flush()


@implementer(ILogObserver)
class TextObserver:
    """For a terminal: `time level [logger] msg`, masked like the JSON lines."""

    def __init__(self, out: IO[str]):
        self.out = out

    def __call__(self, event: dict) -> None:
        d = event_to_dict(event)
        extra = "".join(f" {k}={d[k]}" for k in ("bank", "order_no", "batch_no") if k in d)
        err = f" ({d['error_type']}: {d['error']})" if "error" in d else ""
        self.out.write(f"{d['ts']} {d['level']:5} [{d['logger']}] {d['msg']}{extra}{err}\n")
        self.out.flush()


def make_observer(fmt: str, out: IO[str], isatty: bool) -> ILogObserver:
    obs = JsonLinesObserver(out) if fmt == "json" or (fmt == "auto" and not isatty) else TextObserver(out)
    pred = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    for ns in QUIET_NAMESPACES:
        pred.setLogLevelForNamespace(ns, LogLevel.warn)
    return FilteringLogObserver(obs, [pred])
