"""A bad result file from the bank is rejected whole, journaled and alarmed, and changes nothing.

The bank simulator is told to damage its next result file *before* it digests,
signs and encrypts it (so FileSM3 and the signature match the damaged
content, and only the gateway's own checks can catch it), or to spoil the
signature itself. Domain.md rule 4: nothing from a bank changes state before it
is verified and parsed whole.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from gateway.journal import verify_chain
from tests.support import in_process, spec

pytestmark = [pytest.mark.loopback]


def _lines(plain: bytes) -> list[list[str]]:
    return [line.split("|") for line in plain.decode("gb18030").split("\r\n") if line]


def _join(rows: list[list[str]]) -> bytes:
    return "".join("|".join(r) + "\r\n" for r in rows).encode("gb18030")


def _yuan(text: str, delta_fen: int) -> str:
    yuan, fen = text.split(".")
    total = int(yuan) * 100 + int(fen) + delta_fen
    return f"{total // 100}.{total % 100:02d}"


def wrong_total(plain: bytes) -> bytes:
    """H TotalAmt one fen more than the lines add up to."""
    rows = _lines(plain)
    rows[0][4] = _yuan(rows[0][4], 1)
    return _join(rows)


def unknown_seq(plain: bytes) -> bytes:
    """The last line names a seq that is in no batch (totals still add up)."""
    rows = _lines(plain)
    rows[-1][1] = "9999"
    return _join(rows)


def duplicate_seq(plain: bytes) -> bytes:
    """A line appears twice in a row (the H line is left alone)."""
    rows = _lines(plain)
    rows.insert(2, list(rows[1]))
    return _join(rows)


CASES = {"wrong_total": wrong_total, "unknown_seq": unknown_seq, "duplicate_seq": duplicate_seq,
         "bad_signature": None}
# What the alarm must say: the rejection is for the damage done, not some other fault.
WHY = {"wrong_total": "TotalAmt", "unknown_seq": "no result", "duplicate_seq": "Seq",
       "bad_signature": "signature"}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest_twisted.ensureDeferred
async def test_bad_result_file_is_rejected_whole(reactor, tmp_path, case):
    """Wrong total, unknown seq, duplicate seq or a bad signature: the file is journaled as
    failed and alarmed, the batch stays ACCEPTED, every item stays SENT, the core hears
    nothing, and the journal chain still verifies."""
    s = spec("BADRES01", 12, failures={"R001": 0.2})
    env = await in_process(reactor, tmp_path, [s])
    try:
        if CASES[case] is None:
            env.sims.bank.corrupt_next_result_signature()
        else:
            env.sims.bank.mangle_next_result(CASES[case])
        alarms = await env.until(
            lambda: env.query("select message from alarms where kind='result-file-rejected'"),
            what="the result file to be rejected")
        assert WHY[case] in alarms[0]["message"], alarms
        batch = (await env.query("select state from batches"))[0]
        assert batch["state"] == "ACCEPTED"
        items = await env.query("select status, count(*) n from items group by status")
        assert items == [{"status": "SENT", "n": s.count}]
        failed = await env.query("select verified, decoded from journal where direction='in' "
                                 "and channel='sftp'")
        assert failed and all(r["verified"].startswith("failed") for r in failed)
        assert (await env.sims.core.summary())["orders"]["BADRES01"]["reported_items"] == 0
        with env.gw.database.engine.connect() as conn:
            assert verify_chain(conn, env.cfg.journal_archive_dir).ok
    finally:
        await env.close()
