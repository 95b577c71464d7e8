"""The auditor's archive (article 27): one file per order or month that verifies offline.

`export_archive` writes a gzip'd tar holding:

- `journal/<id>.json` and `journal/<id>.payload`: every journal entry of the order
  (or of the month): its hashed fields with the masked decoded view, and its payload
  exactly as it was on the wire;
- `chain/segment.jsonl`: the hash chain from the first of those entries to the
  journal's head at export time: one line per entry, `[id, hash, mac]` (the MAC is
  present once the journal is keyed), so the entries of other orders are proven to
  sit between ours without showing what they are;
- `corrections.json` (the order's corrections with who confirmed and who approved,
  account and ID numbers masked), `sheets/<batch>.pdf` and `.pdf.sig` (each DONE
  batch's result sheet, produced now if it was not yet), `reports/...` (the
  order's figures and ledger; for a month, the monthly report as JSON, XLSX and
  PDF, and the handover register);
- `MANIFEST.json`: the scope, the head (id, hash, MAC) and the segment's bounds, and
  for every member its size, SHA-256 and SM3; `MANIFEST.json.sig`, the manifest
  sealed with the gateway's SM2 key (DER, SM2-with-SM3); `seal.pub.pem`, that key.

`verify_archive` needs nothing but the file (and, to pin the signer, the seal's
public key or its fingerprint): signature, every member's hashes, no member
unlisted, each entry's hash recomputed from its fields and linked to the one
before it, each payload against its entry's SM3, the segment ending at the head
(and passing through an expected head, if given). It names the first thing wrong.

The entry hash is recomputed here by the formula `gateway.journal` appends with
(SM3 of the JSON list of the entry's fields), written out so that an auditor can
read it; `tests/test_archive.py` checks it against the journal's own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import Connection, or_, select

from gateway.journal import _fsync_dir
from gateway.masking import mask
from gateway.models import batches, corrections, journal, journal_head, late_returns, orders, refunds
from gateway.paper import seal as sealmod
from protocols.sm import SM3Hasher, sm3_hex

FORMAT = "subsidy-gateway-archive/1"
ROOT = "archive"
HASHED = ("id", "at", "direction", "peer", "channel", "tx_code", "msg_id", "order_no", "batch_no", "verified",
          "payload_ref", "payload_size", "payload_sm3", "decoded", "prev_hash")
GENESIS = "0" * 64


def entry_hash(e: dict) -> str:
    """SM3 over the compact JSON list of the entry's fields in HASHED order (gateway.journal's formula)."""
    return sm3_hex(json.dumps([e[k] for k in HASHED], ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


class _Hashing:
    """A file object that hashes what tarfile reads from it."""

    def __init__(self, f):  # noqa: ANN001
        self.f, self.sha, self.sm3, self.n = f, hashlib.sha256(), SM3Hasher(), 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        self.sm3.update(b)
        self.n += len(b)
        return b


class _Writer:
    def __init__(self, tar: tarfile.TarFile, mtime: int):
        self.tar, self.mtime, self.members = tar, mtime, []

    def add_file(self, name: str, f, size: int) -> None:  # noqa: ANN001
        info = tarfile.TarInfo(f"{ROOT}/{name}")
        info.mtime, info.mode, info.size = self.mtime, 0o444, size
        h = _Hashing(f)
        self.tar.addfile(info, h)
        self.members.append({"name": name, "size": h.n, "sha256": h.sha.hexdigest(), "sm3": h.sm3.hexdigest()})

    def add(self, name: str, data: bytes | None = None, *, path: str | None = None, size: int | None = None) -> None:
        info = tarfile.TarInfo(f"{ROOT}/{name}")
        info.mtime, info.mode = self.mtime, 0o444
        f = open(path, "rb") if path is not None else io.BytesIO(data)
        try:
            info.size = size if size is not None else (len(data) if data is not None else Path(path).stat().st_size)
            h = _Hashing(f)
            self.tar.addfile(info, h)
        finally:
            f.close()
        self.members.append({"name": name, "size": h.n, "sha256": h.sha.hexdigest(), "sm3": h.sm3.hexdigest()})


def _json(v: Any) -> bytes:
    return json.dumps(v, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")


def _masked(values: str) -> dict:
    d = json.loads(values)
    return {k: (mask(v) if k in ("account_no", "id_number") and isinstance(v, str) else v) for k, v in d.items()}


@dataclass
class ExportResult:
    path: str
    entries: int
    segment: tuple[int, int]
    members: int
    head: dict = field(default_factory=dict)


def _own_entries(conn: Connection, *, order_no: str | None, month: tuple[int, int] | None,
                 upto: int, span: tuple[int, int] | None = None) -> Iterator[dict]:
    q = select(journal).where(journal.c.id <= upto).order_by(journal.c.id)
    if span is not None:
        q = q.where(journal.c.id >= span[0])
    elif order_no is not None:
        bs = select(batches.c.batch_no).where(batches.c.order_no == order_no)
        q = q.where(or_(journal.c.order_no == order_no, journal.c.batch_no.in_(bs)))
    else:
        y, m = month
        start = f"{y:04d}-{m:02d}-01T00:00:00+08:00"
        until = f"{y + m // 12:04d}-{m % 12 + 1:02d}-01T00:00:00+08:00"
        q = q.where(journal.c.at >= start, journal.c.at < until)
    for r in conn.execution_options(yield_per=1000).execute(q).mappings():
        yield dict(r)


def export_archive(conn: Connection, jr, seal: sealmod.Seal, out: str, *, at: str,  # noqa: ANN001
                   order_no: str | None = None, month: tuple[int, int] | None = None,
                   reports: dict[str, bytes] | None = None, sheets_for: list[str] | None = None,
                   span: tuple[int, int] | None = None, scope_extra: dict | None = None) -> ExportResult:
    """Write the archive of one order (or one month) to `out`; reads only (sheets are made by the caller).

    With `span` (first id, last id): a cold file of journal retention (gateway.journal_cold): every
    entry of the span, and the chain segment ending at the span's last entry, which is its head.
    The file is written to a temporary name, made 0600, fsynced, then renamed."""
    if (order_no is not None) + (month is not None) + (span is not None) != 1:
        raise ValueError("give an order_no, a month or a span")
    from gateway.journal import hash_before
    from gateway.paper import sheets as sheetsmod
    head_row = conn.execute(select(journal_head).where(journal_head.c.id == 1)).mappings().one()
    if span is not None:
        head_row = {"last_id": span[1], "keyed_from": head_row.get("keyed_from"),
                    "last_hash": conn.execute(select(journal.c.hash).where(journal.c.id == span[1])).scalar_one()}
    head_entry = conn.execute(select(journal.c.hash, journal.c.mac).where(journal.c.id == head_row["last_id"])
                              ).one_or_none()
    head = {"last_id": head_row["last_id"], "last_hash": head_row["last_hash"],
            "mac": head_entry.mac if head_entry is not None and hasattr(head_entry, "mac") else None,
            "keyed_from": head_row.get("keyed_from")}
    tmp = f"{out}.part"
    mtime = 0
    n_own, first = 0, None
    if os.path.exists(tmp):
        os.unlink(tmp)    # left by an export that died: never written through (it may be another's)
    raw = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    with raw, tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        w = _Writer(tar, mtime)
        for e in _own_entries(conn, order_no=order_no, month=month, upto=head["last_id"], span=span):
            first = e["id"] if first is None else first
            n_own += 1
            payload_ref, payload = e.pop("payload_ref"), e.pop("payload")
            view = {k: e[k] for k in HASHED if k != "payload_ref"}
            view.update(payload_ref=payload_ref, hash=e["hash"], mac=e.get("mac"),
                        payload_member=f"journal/{e['id']}.payload")
            w.add(f"journal/{e['id']}.json", _json(view))
            if payload_ref:
                w.add(f"journal/{e['id']}.payload", path=str(Path(jr.archive_dir) / payload_ref))
            else:
                w.add(f"journal/{e['id']}.payload", payload or b"")
        prev_hash = GENESIS
        # The segment can run to millions of lines: spooled to disk past a few MB.
        lines = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        if first is not None:
            prev_hash = hash_before(conn, first)   # the cut's hash when entry first-1 went to a cold file
            cols = [journal.c.id, journal.c.hash] + ([journal.c.mac] if "mac" in journal.c else [])
            for r in conn.execution_options(yield_per=5000).execute(
                    select(*cols).where(journal.c.id >= first, journal.c.id <= head["last_id"])
                    .order_by(journal.c.id)):
                lines.write(json.dumps([r[0], r[1], r[2] if len(r) > 2 else None]).encode() + b"\n")
        size = lines.tell()
        lines.seek(0)
        w.add_file("chain/segment.jsonl", lines, size)
        lines.close()
        if order_no is not None:
            w.add("corrections.json", _json([
                {**dict(c), "old_values": _masked(c["old_values"]), "new_values": _masked(c["new_values"])}
                for c in conn.execute(select(corrections).where(corrections.c.order_no == order_no)
                                      .order_by(corrections.c.id)).mappings()]))
        for batch_no in sheets_for or []:
            if sheetsmod.existing(conn, batch_no) is None:
                continue
            data, sig = sheetsmod.sheet_files(conn, jr, batch_no)
            w.add(f"sheets/{batch_no}.pdf", data)
            w.add(f"sheets/{batch_no}.pdf.sig", sig)
        for name, data in sorted((reports or {}).items()):
            w.add(f"reports/{name}", data)
        w.add("README.txt", README.encode("utf-8"))
        scope = ({"order_no": order_no} if order_no else {"month": f"{month[0]:04d}-{month[1]:02d}"} if month
                 else {"journal_span": {"first_id": span[0], "last_id": span[1], **(scope_extra or {})}})
        manifest = {"format": FORMAT, "scope": scope, "created_at": at,
                    "signer": seal.fingerprint, "signer_id": seal.signer_id, "head": head,
                    "segment": {"first_id": first, "last_id": head["last_id"] if first else None,
                                "prev_hash": prev_hash, "own_entries": n_own},
                    "members": w.members}
        body = _json(manifest)
        sig = seal.sign(body)
        for name, data in (("MANIFEST.json", body), ("MANIFEST.json.sig", sig), ("seal.pub.pem", seal.public_pem())):
            info = tarfile.TarInfo(f"{ROOT}/{name}")
            info.mtime, info.mode, info.size = mtime, 0o444, len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.close()       # writes the gzip trailer into raw, which stays open
        raw.flush()
        os.fsync(raw.fileno())
    Path(tmp).replace(out)
    _fsync_dir(Path(out).resolve().parent)
    return ExportResult(out, n_own, (first or 0, head["last_id"]), len(w.members), head)


README = """\
Archive of the subsidy bank gateway (article 27). Check it offline:

    gatewayctl archive verify THIS_FILE --key seal.pub.pem     # or --fingerprint AA:BB:...

MANIFEST.json lists every member with its SHA-256 and SM3; MANIFEST.json.sig is its
SM2-with-SM3 signature (DER, signer ID in the manifest) by the key in seal.pub.pem:

    openssl pkeyutl -verify -pubin -inkey seal.pub.pem -rawin -digest sm3 \\
        -pkeyopt distid:1234567812345678 -in MANIFEST.json -sigfile MANIFEST.json.sig
    sha256sum / sm3: each member against MANIFEST.json

journal/<id>.json: an entry's fields; its hash is SM3 of the compact JSON list
[id, at, direction, peer, channel, tx_code, msg_id, order_no, batch_no, verified,
 payload_ref, payload_size, payload_sm3, decoded, prev_hash]
and prev_hash is the hash of the entry before it. chain/segment.jsonl lists
[id, hash, mac] of every entry from the first entry here to the journal's head
(MANIFEST.json "head"), so the chain can be followed through entries of other
orders. journal/<id>.payload is the payload as it was on the wire (SM3 = payload_sm3).
"""


# --- verification ----------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    problem: str = ""
    signer: str = ""
    entries: int = 0
    members: int = 0
    scope: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    segment: dict = field(default_factory=dict)     # the manifest's chain segment (first_id, prev_hash ...)


def _read(tar: tarfile.TarFile, members: dict, name: str) -> bytes:
    m = members.get(f"{ROOT}/{name}")
    if m is None:
        raise _Bad(f"{name} is missing")
    return tar.extractfile(m).read()


class _Bad(Exception):
    pass


def verify_archive(path: str, *, public_key: sealmod.sm.SM2PublicKey | None = None, fingerprint: str | None = None,
                   expect_head: tuple[int, str] | None = None, journal_key=None) -> Verdict:  # noqa: ANN001
    """Check the archive offline; the verdict names the first thing wrong."""
    try:
        return _verify(path, public_key, fingerprint, expect_head, journal_key)
    except _Bad as e:
        return Verdict(False, str(e))
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        return Verdict(False, f"the archive cannot be read: {type(e).__name__}: {e}")


def _verify(path, public_key, fingerprint, expect_head, journal_key) -> Verdict:  # noqa: ANN001
    with tarfile.open(path, "r:*") as tar:
        members = {}
        for m in tar.getmembers():
            if not m.isfile() or not m.name.startswith(f"{ROOT}/") or ".." in m.name.split("/"):
                raise _Bad(f"member {m.name!r} is not a plain file under {ROOT}/")
            if m.name in members:
                raise _Bad(f"member {m.name} appears twice")
            members[m.name] = m
        body = _read(tar, members, "MANIFEST.json")
        sig = _read(tar, members, "MANIFEST.json.sig")
        try:
            embedded = sealmod.load_public(_read(tar, members, "seal.pub.pem"), "seal.pub.pem")
        except _Bad:
            raise
        except Exception as e:  # noqa: BLE001
            raise _Bad(f"seal.pub.pem is not an SM2 public key: {e}") from None
        key = public_key or embedded
        signer = sealmod.fingerprint_of(key)
        if public_key is not None and embedded != public_key:
            raise _Bad(f"the archive was sealed by another key ({sealmod.fingerprint_of(embedded)}), not the "
                       f"given one ({signer})")
        if fingerprint is not None and fingerprint.replace(":", "").upper() != signer.replace(":", "").upper():
            raise _Bad(f"the archive was sealed by {signer}, not by the expected {fingerprint}")
        manifest = json.loads(body)
        if not sealmod.verify(body, sig, key, manifest.get("signer_id", sealmod.DEFAULT_SIGNER_ID)):
            raise _Bad("MANIFEST.json's signature does not verify: the manifest was changed or not sealed by "
                       f"{signer}")
        if manifest.get("format") != FORMAT:
            raise _Bad(f"unknown archive format {manifest.get('format')!r}")
        listed = {m["name"]: m for m in manifest["members"]}
        for name in sorted(set(members) - {f"{ROOT}/{n}" for n in listed}
                           - {f"{ROOT}/MANIFEST.json", f"{ROOT}/MANIFEST.json.sig", f"{ROOT}/seal.pub.pem"}):
            raise _Bad(f"{name[len(ROOT) + 1:]} is in the archive but not in the manifest")
        for m in manifest["members"]:
            tm = members.get(f"{ROOT}/{m['name']}")
            if tm is None:
                raise _Bad(f"{m['name']} is listed in the manifest but missing")
            f = tar.extractfile(tm)
            sha, sm3, n = hashlib.sha256(), SM3Hasher(), 0
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                sm3.update(chunk)
                n += len(chunk)
            if n != m["size"] or sha.hexdigest() != m["sha256"]:
                raise _Bad(f"{m['name']} was altered: its SHA-256 does not match the manifest")
            if sm3.hexdigest() != m["sm3"]:
                raise _Bad(f"{m['name']} was altered: its SM3 does not match the manifest")
        n_entries = _verify_chain(tar, members, manifest, expect_head, journal_key)
        for m in manifest["members"]:
            if m["name"].startswith("sheets/") and m["name"].endswith(".pdf"):
                if not sealmod.verify(_read(tar, members, m["name"]), _read(tar, members, m["name"] + ".sig"),
                                      key, manifest.get("signer_id", sealmod.DEFAULT_SIGNER_ID)):
                    raise _Bad(f"{m['name']}: its seal {m['name']}.sig does not verify under {signer}")
    return Verdict(True, "", signer, n_entries, len(manifest["members"]), manifest["scope"], manifest["head"],
                   manifest["segment"])


def _verify_chain(tar, members, manifest, expect_head, journal_key) -> int:  # noqa: ANN001
    seg, head = manifest["segment"], manifest["head"]
    lines = [json.loads(x) for x in _read(tar, members, "chain/segment.jsonl").splitlines() if x.strip()]
    own = sorted(int(n[len(ROOT) + 9:-5]) for n in members
                 if n.startswith(f"{ROOT}/journal/") and n.endswith(".json"))
    if seg["first_id"] is None:
        if own or lines:
            raise _Bad("the manifest says the archive holds no journal entry, but it does")
        return 0
    if not lines or lines[0][0] != seg["first_id"]:
        raise _Bad(f"chain/segment.jsonl does not start at entry {seg['first_id']}")
    prev, expected, by_id = seg["prev_hash"], seg["first_id"], {}
    for rid, h, mac in lines:
        if rid != expected:
            raise _Bad(f"chain: entry {expected} is missing from the segment (next is {rid})")
        by_id[rid] = (h, prev)
        if journal_key is not None and head.get("keyed_from") and rid >= head["keyed_from"] \
                and not journal_key.entry_mac_ok(h, mac):
            raise _Bad(f"chain: entry {rid}'s MAC does not match under the journal key")
        prev, expected = h, rid + 1
    if expected - 1 != head["last_id"] or prev != head["last_hash"]:
        raise _Bad(f"chain: the segment ends at entry {expected - 1} with another hash than the head "
                   f"{head['last_id']}:{head['last_hash'][:16]}...")
    if expect_head is not None:
        eid, ehash = expect_head
        if eid not in by_id or by_id[eid][0] != ehash:
            raise _Bad(f"chain: the segment does not pass through the expected head {eid}:{ehash[:16]}...")
    if len(own) != seg["own_entries"]:
        raise _Bad(f"the manifest counts {seg['own_entries']} journal entries, the archive holds {len(own)}")
    for rid in own:
        e = json.loads(_read(tar, members, f"journal/{rid}.json"))
        if e.get("id") != rid:
            raise _Bad(f"journal/{rid}.json holds entry {e.get('id')}")
        if rid not in by_id:
            raise _Bad(f"journal entry {rid} lies outside the chain segment")
        h, prev = by_id[rid]
        if e["prev_hash"] != prev:
            raise _Bad(f"journal entry {rid}: prev_hash does not link to entry {rid - 1} of the segment")
        if entry_hash(e) != e["hash"] or e["hash"] != h:
            raise _Bad(f"journal entry {rid} was altered: its hash does not match its fields or the chain")
        payload = _read(tar, members, f"journal/{rid}.payload")
        if sm3_hex(payload) != e["payload_sm3"] or len(payload) != e["payload_size"]:
            raise _Bad(f"journal entry {rid}: its payload does not match the entry's SM3")
    return len(own)
