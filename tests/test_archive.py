"""The auditor's archive (article 27): exported from the database and the journal, verified offline.

An order's archive is exported from a month as the flows leave it (tests/paper_seed.py)
and checked by `verify_archive` alone, without the database. Each kind of member is then
tampered with, in the ways someone holding the file could (edit a payload, an entry, the
chain, a sheet, its seal, a report, the corrections, the manifest; re-hash the manifest
and re-seal it with the real key or with another; add or drop a member), and each is caught
and named. `gatewayctl archive export` and `archive verify` (no --config) run end to end.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import config as configmod
from gateway import db as dbmod
from gateway import journal as journalmod
from gateway.journal import Journal
from gateway.models import journal
from gateway.paper import archive, sheets
from gateway.paper.seal import Seal
from protocols import keyfile, sm
from tests import paper_seed

ROOT = Path(__file__).resolve().parent.parent
AT = "2026-12-01T09:00:00+08:00"
SEAL = Seal(sm.generate_keypair())


@pytest.fixture
def engine(db_url):
    dbmod.upgrade(db_url)
    e = dbmod.make_engine(db_url)
    yield e
    e.dispose()


def export(engine, tmp_path, order_no="FS01") -> tuple[Path, Journal]:
    jr = Journal(str(tmp_path / "journal-archive"))
    with engine.begin() as conn:
        paper_seed.seed(conn, jr)
        for b in ("FS01-P01", "FS01-R02"):
            sheets.ensure_sheet(conn, jr, SEAL, b, AT)
    out = tmp_path / "FS01.tar.gz"
    with engine.connect() as conn:
        archive.export_archive(conn, jr, SEAL, str(out), at=AT, order_no=order_no,
                               reports={"order.json": b'{"order_no": "FS01"}'}, sheets_for=["FS01-P01", "FS01-R02"])
    return out, jr


def test_export_holds_the_order_and_verifies_offline(engine, tmp_path):
    """The archive holds every journal entry of FS01 (and none of FS02) with its payload as on the wire,
    the chain from the first of them to the head, the sheets and seals, the corrections masked and the
    reports; it verifies from the file alone, pinned to the seal's key; our recomputed entry hash is
    the journal's own for every entry."""
    out, jr = export(engine, tmp_path)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(journal).order_by(journal.c.id)).mappings()]
    for r in rows:
        assert archive.entry_hash(r) == journalmod._entry_hash(r) == r["hash"]   # noqa: SLF001
    own = [r for r in rows if r["order_no"] == "FS01"]
    v = archive.verify_archive(str(out), public_key=SEAL.public_key)
    assert v.ok, v.problem
    assert v.entries == len(own) and v.signer == SEAL.fingerprint and v.scope == {"order_no": "FS01"}
    assert (v.head["last_id"], v.head["last_hash"]) == (rows[-1]["id"], rows[-1]["hash"])
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        for r in own:
            assert tar.extractfile(f"archive/journal/{r['id']}.payload").read() == jr.payload_of(
                type("R", (), r)())
        assert not any(f"archive/journal/{r['id']}.json" in names for r in rows if r["order_no"] == "FS02")
        assert {"archive/sheets/FS01-P01.pdf", "archive/sheets/FS01-P01.pdf.sig", "archive/corrections.json",
                "archive/reports/order.json", "archive/chain/segment.jsonl"} <= names
        fixes = json.loads(tar.extractfile("archive/corrections.json").read())
        assert fixes[0]["approved_by"] == "李科长" and fixes[0]["old_values"]["account_no"].count("*") > 0
        assert paper_seed.acct(4) not in json.dumps(fixes)
    assert archive.verify_archive(str(out), expect_head=(own[0]["id"], own[0]["hash"])).ok
    assert "expected head" in archive.verify_archive(str(out), expect_head=(own[0]["id"], "0" * 64)).problem


def rebuild(src: Path, dst: Path, change, *, reseal: Seal | None = None, drop: str | None = None,
            add: tuple[str, bytes] | None = None) -> Path:
    """Copy the archive with member contents changed by change(name, data); optionally re-hash the
    manifest and re-seal it (with reseal's key and public key), drop or add a member."""
    with tarfile.open(src) as tar:
        members = [(m.name[len("archive/"):], tar.extractfile(m).read()) for m in tar.getmembers()]
    members = [(n, change(n, d)) for n, d in members if n != drop]
    if add:
        members.insert(0, add)
    if reseal is not None:
        import hashlib

        from protocols.sm import sm3_hex
        data = dict(members)
        man = json.loads(data["MANIFEST.json"])
        for m in man["members"]:
            if m["name"] in data:
                b = data[m["name"]]
                m.update(size=len(b), sha256=hashlib.sha256(b).hexdigest(), sm3=sm3_hex(b))
        body = json.dumps(man, ensure_ascii=False, indent=1, sort_keys=True).encode()
        new = {"MANIFEST.json": body, "MANIFEST.json.sig": reseal.sign(body), "seal.pub.pem": reseal.public_pem()}
        members = [(n, new.get(n, d)) for n, d in members]
    with tarfile.open(dst, "w:gz") as tar:
        for n, d in members:
            info = tarfile.TarInfo(f"archive/{n}")
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
    return dst


def flip(data: bytes, at: int | None = None) -> bytes:
    b = bytearray(data)
    b[len(b) // 2 if at is None else at] ^= 0x01
    return bytes(b)


def _first(kind: str):
    def pick(name: str) -> bool:
        return {"payload": name.startswith("journal/") and name.endswith(".payload"),
                "entry": name.startswith("journal/") and name.endswith(".json"),
                "segment": name == "chain/segment.jsonl", "sheet": name == "sheets/FS01-P01.pdf",
                "seal": name == "sheets/FS01-P01.pdf.sig", "report": name == "reports/order.json",
                "corrections": name == "corrections.json", "manifest": name == "MANIFEST.json",
                "manifest_sig": name == "MANIFEST.json.sig"}[kind]
    return pick


def _decoded_edit(d: bytes) -> bytes:
    e = json.loads(d)
    e["decoded"] = e["decoded"] + " (edited)"
    return json.dumps(e).encode()


def _segment_edit(d: bytes) -> bytes:
    lines = d.splitlines()
    mid = json.loads(lines[len(lines) // 2])
    mid[1] = "f" * 64
    lines[len(lines) // 2] = json.dumps(mid).encode()
    return b"\n".join(lines) + b"\n"


OTHER = Seal(sm.generate_keypair())
CASES = {
    # kind: (change, reseal, expected words in the problem)
    "payload": (_first("payload"), lambda d: d + b"x", None, "SHA-256 does not match"),
    "payload resealed": (_first("payload"), lambda d: d + b"x", SEAL, "payload does not match"),
    "entry": (_first("entry"), _decoded_edit, None, "SHA-256 does not match"),
    "entry resealed": (_first("entry"), _decoded_edit, SEAL, "was altered: its hash does not match"),
    "segment resealed": (_first("segment"), _segment_edit, SEAL, "does not link to entry"),
    "segment cut resealed": (_first("segment"), lambda d: b"\n".join(d.splitlines()[:-1]) + b"\n", SEAL,
                             "chain: the segment ends at entry"),
    "sheet": (_first("sheet"), flip, None, "sheets/FS01-P01.pdf was altered"),
    "sheet resealed manifest": (_first("sheet"), flip, SEAL, "its seal sheets/FS01-P01.pdf.sig does not verify"),
    "seal": (_first("seal"), lambda d: flip(d, 10), None, "sheets/FS01-P01.pdf.sig was altered"),
    "report": (_first("report"), lambda d: d.replace(b"FS01", b"FS07"), None, "reports/order.json was altered"),
    "corrections": (_first("corrections"), lambda d: d.replace("李科长".encode(), "王科长".encode()), None,
                    "corrections.json was altered"),
    "manifest": (_first("manifest"), lambda d: d.replace(b'"size": ', b'"size": 1', 1), None,
                 "signature does not verify"),
    "manifest sig": (_first("manifest_sig"), lambda d: flip(d, 12), None, "signature does not verify"),
    "resealed by another key": (_first("report"), lambda d: d.replace(b"FS01", b"FS07"), OTHER,
                                "sealed by another key"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One order's archive on SQLite, exported once for the tampering tests."""
    d = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{d}/gateway.db"
    dbmod.upgrade(url)
    e = dbmod.make_engine(url)
    try:
        out, _ = export(e, d)
    finally:
        e.dispose()
    assert archive.verify_archive(str(out), public_key=SEAL.public_key).ok
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_of_tampering_is_caught_and_named(exported, tmp_path, case):
    """Changing any member (with or without re-hashing and re-sealing the manifest) fails verification,
    naming what is wrong; only the pinned key counts as the gateway's."""
    out = exported
    which, change, reseal, words = CASES[case]
    bad = rebuild(out, tmp_path / "bad.tar.gz", lambda n, d: change(d) if which(n) else d, reseal=reseal)
    v = archive.verify_archive(str(bad), public_key=SEAL.public_key)
    assert not v.ok and words in v.problem, v.problem
    if case == "resealed by another key":
        # Unpinned, the manifest verifies under the key it carries, but the sheets were sealed by the
        # gateway, not by that key; pinned by fingerprint, the signer itself is refused.
        assert "its seal sheets/FS01-P01.pdf.sig does not verify" in archive.verify_archive(str(bad)).problem
        assert "not by the expected" in archive.verify_archive(str(bad), fingerprint=SEAL.fingerprint).problem


def test_members_added_or_dropped_are_caught(exported, tmp_path):
    """A member dropped is named as missing; one slipped in is named as not in the manifest; a file
    that is not a tar at all is refused as unreadable."""
    out = exported
    keep = lambda n, d: d  # noqa: E731
    v = archive.verify_archive(str(rebuild(out, tmp_path / "a.tar.gz", keep, drop="sheets/FS01-R02.pdf")))
    assert "sheets/FS01-R02.pdf is listed in the manifest but missing" in v.problem
    v = archive.verify_archive(str(rebuild(out, tmp_path / "b.tar.gz", keep, add=("journal/9999.json", b"{}"))))
    assert "journal/9999.json is in the archive but not in the manifest" in v.problem
    v = archive.verify_archive(str(rebuild(out, tmp_path / "c.tar.gz", keep, drop="MANIFEST.json.sig")))
    assert v.problem == "MANIFEST.json.sig is missing"
    (tmp_path / "junk").write_bytes(b"not a tar")
    assert "cannot be read" in archive.verify_archive(str(tmp_path / "junk")).problem


def test_gatewayctl_archive_export_and_verify_without_config(tmp_path):
    """register, report monthly (--xlsx, --pdf), report yearly (exit 1: no yearly statement), ledger and
    volume run from gatewayctl; `gatewayctl --config F archive export --order FS01 --out FILE` produces the sheets it lacks and
    writes the archive; `gatewayctl archive verify FILE --key seal.pub.pem` (no --config) says intact and
    exits 0, and exits 1 naming the member for an archive with one byte changed; the month's archive
    carries the monthly workbook, PDF and register."""
    from simulators import harness
    p = harness.Paths(tmp_path / "inst")
    cfg_path = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    seal_key = tmp_path / "seal.pem"
    keyfile.write_private_key_file(seal_key, SEAL.key)
    with open(cfg_path, "a") as f:
        f.write(f'\n[paper]\nseal_key = "{seal_key}"\nout_dir = "{tmp_path / "paper"}"\n')
    harness.migrate(cfg_path)
    cfg = configmod.load(cfg_path)
    from gateway.paper.cli import open_journal
    engine = dbmod.make_engine(cfg.database_url)
    with engine.begin() as conn:
        paper_seed.seed(conn, open_journal(cfg))
    engine.dispose()
    (tmp_path / "seal.pub.pem").write_bytes(SEAL.public_pem())
    ctl = [sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()"]
    out = tmp_path / "FS01.tar.gz"
    r = subprocess.run([*ctl, "--config", str(cfg_path), "archive", "export", "--order", "FS01", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    ok = subprocess.run([*ctl, "archive", "verify", str(out), "--key", str(tmp_path / "seal.pub.pem")],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "archive intact" in ok.stdout and SEAL.fingerprint in ok.stdout, ok.stdout + ok.stderr
    with tarfile.open(out) as tar:
        assert "archive/sheets/FS01-P01.pdf" in tar.getnames() and "archive/reports/ledger.json" in tar.getnames()
    bad = rebuild(out, tmp_path / "bad.tar.gz", lambda n, d: flip(d) if n == "reports/ledger.json" else d)
    no = subprocess.run([*ctl, "archive", "verify", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert no.returncode == 1 and "reports/ledger.json was altered" in no.stdout, no.stdout + no.stderr
    def run(*args):
        return subprocess.run([*ctl, "--config", str(cfg_path), *args], capture_output=True, text=True, cwd=ROOT)
    reg = run("register", "--month", "2026-11")
    assert reg.returncode == 0 and "FS01-P01-D01" in reg.stdout and "王科员" in reg.stdout, reg.stdout + reg.stderr
    rep = run("report", "monthly", "--month", "2026-11", "--xlsx", str(tmp_path / "m.xlsx"), "--pdf",
              str(tmp_path / "m.pdf"))
    assert rep.returncode == 0 and (tmp_path / "m.xlsx").stat().st_size and (tmp_path / "m.pdf").stat().st_size
    yr = run("report", "yearly", "--year", "2026", "--pdf", str(tmp_path / "y.pdf"))
    assert yr.returncode == 1 and "no yearly statement" in yr.stderr     # the January check cannot pass yet
    led = run("ledger", "--project", "NY01")
    assert led.returncode == 0 and "closing 2.00, held now 2.00" in led.stdout, led.stdout
    vol = run("volume", "--year", "2026", "--out", str(tmp_path / "v.pdf"))
    assert vol.returncode == 0 and (tmp_path / "v.pdf").read_bytes().startswith(b"%PDF")
    month = tmp_path / "2026-11.tar.gz"
    r = subprocess.run([*ctl, "--config", str(cfg_path), "archive", "export", "--month", "2026-11", "--out", str(month)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert archive.verify_archive(str(month), public_key=SEAL.public_key).ok
    from simulators.paper_demo import write_paper
    import datetime
    lines = write_paper(tmp_path / "inst", cfg_path, tmp_path, now=datetime.datetime(2026, 11, 30, 12))
    assert any(t.startswith("archive intact") for t in lines) and not any("exited" in t for t in lines), lines
    assert (tmp_path / "inst" / "paper" / "volume-2026.pdf").exists()
    with tarfile.open(month) as tar:
        assert {"archive/reports/monthly.xlsx", "archive/reports/monthly.pdf", "archive/reports/register.json",
                "archive/sheets/FS02-P01.pdf"} <= set(tar.getnames())


def test_keyed_journal_macs_travel_and_are_checked_with_the_key(tmp_path):
    """With a keyed journal the segment carries each entry's MAC and the head's keyed_from; verify with
    the journal key checks them, and a MAC changed in the segment (manifest re-sealed with the real
    seal) is caught only with the key."""
    key = journalmod.JournalKey(bytes(range(32)), "test")
    url = f"sqlite:///{tmp_path}/gateway.db"
    dbmod.upgrade(url)
    e = dbmod.make_engine(url)
    jr = Journal(str(tmp_path / "journal-archive"), key=key)
    try:
        with e.begin() as conn:
            paper_seed.seed(conn, jr)
            sheets.ensure_sheet(conn, jr, SEAL, "FS01-P01", AT)
        out = tmp_path / "keyed.tar.gz"
        with e.connect() as conn:
            archive.export_archive(conn, jr, SEAL, str(out), at=AT, order_no="FS01", sheets_for=["FS01-P01"])
    finally:
        e.dispose()
    v = archive.verify_archive(str(out), public_key=SEAL.public_key, journal_key=key)
    assert v.ok and v.head["keyed_from"] == 1, v.problem

    def bad_mac(name, data):
        if name != "chain/segment.jsonl":
            return data
        lines = [json.loads(x) for x in data.splitlines()]
        lines[0][2] = "0" * 64
        return b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    bad = rebuild(out, tmp_path / "bad.tar.gz", bad_mac, reseal=SEAL)
    assert archive.verify_archive(str(bad), public_key=SEAL.public_key).ok
    v = archive.verify_archive(str(bad), public_key=SEAL.public_key, journal_key=key)
    assert not v.ok and "MAC does not match" in v.problem
