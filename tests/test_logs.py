"""Log lines are what the README says: one JSON object per line, masked, with context."""

from __future__ import annotations

import io
import json
import re

import pytest
import pytest_twisted
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from gateway.logs import make_observer
from simulators import datagen, harness
from tests.support import install, spec, wait_for

ID18 = re.compile(r"(?<![0-9])[0-9]{17}[0-9X](?![0-9])")


def _emit(fmt="json", isatty=False):
    out = io.StringIO()
    pub = LogPublisher(make_observer(fmt, out, isatty))
    return out, Logger(namespace="gateway.flow", observer=pub)


def test_json_line_is_one_object_with_message_and_context():
    """Each event is one line that json.loads takes (no 0x1E separator, no template): ts with
    +08:00, level, logger, the rendered msg, and the bank/order/batch the event carries."""
    out, log = _emit()
    log.info("uploaded {file} to {bank}", file="X-P01.req", bank="CNB01", order_no="FS1", batch_no="FS1-P01")
    log.debug("not shown at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\x1e" not in out.getvalue()
    d = json.loads(lines[0])
    assert d["msg"] == "uploaded X-P01.req to CNB01"
    assert (d["level"], d["logger"], d["bank"], d["order_no"], d["batch_no"]) == \
        ("info", "gateway.flow", "CNB01", "FS1", "FS1-P01")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+08:00", d["ts"])


def test_failure_and_personal_data_are_masked():
    """A failure gives error_type and error; an ID or card number in the message or in the
    exception text (as a database driver would quote a row) never appears in clear."""
    out, log = _emit()
    try:
        raise ValueError("insert failed for id_number=110101199003078515 account 6228480000000123457")
    except ValueError:
        log.failure("load of {order_no} failed for 110101199003078515", Failure(), order_no="FS1")
    d = json.loads(out.getvalue())
    text = out.getvalue()
    assert "110101199003078515" not in text and "6228480000000123457" not in text
    assert d["error_type"] == "ValueError" and "1101**********8515" in d["error"]
    assert d["level"] == "critical"


def test_text_format_on_a_terminal_and_quiet_factories():
    """On a terminal: a readable line; Twisted's Starting/Stopping factory chatter is not at info."""
    out, log = _emit("auto", isatty=True)
    log.warn("bank {bank} down", bank="CNB01")
    Logger(namespace="twisted.internet.protocol", observer=log.observer).info("Starting factory x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "warn" in lines[0] and "bank CNB01 down" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert LogLevel.warn.name == "warn"


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_real_daemon_every_line_parses_as_masked_json(reactor, tmp_path):
    """The real gatewayd, paying an order with failures over loopback, writes only lines that
    parse as JSON objects with ts/level/logger/msg, and no line holds an item's ID number."""
    specs = [spec("LOG0001", 40, failures={"R001": 0.1, "R002": 0.1})]
    p, keys, sims, cfg = await install(reactor, tmp_path, specs)
    daemon = harness.Daemon(cfg, p.log, log_format="json")
    daemon.start()
    try:
        async def done():
            s = await sims.core.summary()
            o = s["orders"]["LOG0001"]
            return s if o["reported_items"] == o["item_count"] else None
        await wait_for(reactor, done, 60, "results at the core", daemon)
    finally:
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0
    lines = p.log.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 5
    for line in lines:
        d = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(d), line
    ids = {datagen.item(specs[0], pos)["id_number"] for pos in range(1, 41)}
    text = "\n".join(lines)
    assert not any(i in text for i in ids)
    assert not any(ID18.search(json.loads(line)["msg"]) for line in lines)
