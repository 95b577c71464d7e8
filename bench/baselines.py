"""Raw baselines for bench/spine.py: each stage's job done again with the plainest fast tools.

    baselines.py CONFIG STAGE ORDER_OR_BATCH_NO [--sink URL]     (prints one JSON object)

Run by bench/stage_runner.py right after the stage it measures, on the same database and
files, as a process of its own like the stage runner (so that its memory, and what it leaves
in the allocator, never counts in the daemon's figures). What a baseline does: the stage's unavoidable work - read
its source, write its sink, the cryptography and serialisation the protocol requires - with
the DB-API driver, http.client, OpenSSH's `sftp` and `cryptography` directly; none of the
gateway's own duties (validation, journal, states, result versions, alarms, crash-safety marks).
Each is a dict of timed parts (seconds); the baseline is their sum. The parts:

  pull_validate_store  get      GET the same item stream from the core simulator (http.client)
                       decode   json.loads of its lines (one array per chunk)
                       insert   the same rows into an empty copy of `items` (same indexes):
                                executemany + commit on SQLite, COPY on PostgreSQL
  build_sign_encrypt   read     SELECT the batch's rows (the columns the file is built from)
                       sm3      SM3 of the plaintext (FileSM3) and SM3(Z||M) (the signature's e)
                       sm4      SM4-CBC/PKCS#7 of the plaintext
                       write    the ciphertext to a file
                       sm2      one SM2 signature and one SM2 encryption of key||iv
  upload_sftp          put      `sftp` puts the same .sig and file (a fresh connection, as the stage)
  fetch_verify_apply   get      `sftp` gets the same result file and .sig
                       open     SM2-decrypt FileEncKey, SM4-decrypt, SM3 twice, one SM2 verify
                       parse    split the D lines into fields
                       update   the same N rows, SENT -> result, on a copy of `items` holding
                                the batch's rows as they were before: executemany UPDATE by
                                primary key (SQLite), COPY to a temp table + UPDATE ... FROM (PG)
  push_results_to_core read     SELECT the order's results
                       json     json.dumps of the same records, in the same chunk size
                       post     POST each chunk to the core simulator (one keep-alive connection);
                                each result's version is one more than the one the stage pushed,
                                so the simulator stores them as new results, the work it did for
                                the stage (the same version again is a cheaper repeat); the item
                                keeps its status, so the order's summary does not change
                       (+ post_sink: the same bodies to a bare twisted.web sink, reported beside:
                        the difference is the core simulator's own storing)
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MiB = 1 << 20
COPY = "bench_items"     # the copy of `items` the insert and update baselines write to


class Parts:
    """Seconds per named part; `with parts("x"):` adds to x."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t

    def out(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.s.items()}


class Context:
    """What the baselines need, read from the daemon's configuration: its database (the same
    engine settings), its one cnbank bank, its keys, and the installation's root (the bank's key)."""

    def __init__(self, config_path: str, sink_url: str | None = None):
        from gateway import config as configmod
        from gateway.db import make_engine
        from protocols import keyfile
        self.cfg = cfg = configmod.load(config_path)
        self.engine = make_engine(cfg.database_url)
        self.dialect = self.engine.dialect.name
        self.root = Path(config_path).resolve().parent.parent     # harness layout: root/conf/gateway.toml
        self.sink_url = sink_url
        tok = cfg.core.token.value
        self.token = tok() if callable(tok) else tok
        self.bank = next(b for b in cfg.banks.values() if b.dialect == "cnbank")
        self.our_key = keyfile.read_private_key_file(self.bank.our_private_key)
        self.bank_key = keyfile.read_public_key_file(self.bank.bank_public_key)
        self.uid = self.bank.cnbank.user_id.encode()
        self.work = os.path.join(cfg.work_dir, self.bank.bank_id)     # the cnbank link's work folder

    def batch(self, batch_no: str) -> dict:
        with self.engine.connect() as c:
            from sqlalchemy import text
            return dict(c.execute(text("SELECT * FROM batches WHERE batch_no = :n"), {"n": batch_no})
                        .mappings().one())

    # --- the database, raw --------------------------------------------------
    def raw(self):
        """A DB-API connection of the daemon's own engine (same pragmas / settings)."""
        return self.engine.raw_connection()

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def make_copy(self, raw) -> None:
        """An empty table like `items`, with the same columns, primary key and indexes."""
        self.drop_copy(raw)
        cur = raw.cursor()
        if self.dialect == "postgresql":
            cur.execute(f"CREATE TABLE {COPY} (LIKE items INCLUDING ALL)")
        else:
            ddl = [r[0] for r in cur.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'items' AND sql IS NOT NULL "
                "ORDER BY type = 'table' DESC").fetchall()]
            for sql in ddl:
                sql = re.sub(r'^CREATE TABLE "?items"?', f"CREATE TABLE {COPY}", sql)
                sql = re.sub(r'^CREATE (UNIQUE )?INDEX "?(\w+)"? ON "?items"?',
                             lambda m: f"CREATE {m.group(1) or ''}INDEX bench_{m.group(2)} ON {COPY}", sql)
                cur.execute(sql)
        raw.commit()

    def drop_copy(self, raw) -> None:
        raw.cursor().execute(f"DROP TABLE IF EXISTS {COPY}")
        raw.commit()

    # --- OpenSSH's sftp ------------------------------------------------------
    def sftp(self, commands: str) -> None:
        """OpenSSH's sftp in batch mode (a failed command stops it with a message on stderr).
        The simulator's SSH server sends no exit-status for the subsystem, so sftp exits 1
        even when every command succeeded: stderr, not the exit code, tells. No environment is
        passed on (Debian's ssh_config sends LANG, a request the simulator does not take)."""
        s = self.bank.sftp
        p = subprocess.run(
            ["sftp", "-q", "-b", "-", "-i", s.client_key, "-P", str(s.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{s.username}@{s.host}"],
            input=commands, text=True, capture_output=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if p.stderr.strip() or p.returncode not in (0, 1):
            raise RuntimeError(f"sftp ({p.returncode}): {p.stderr.strip()[-300:]}")

    def bank_private_key(self):
        from protocols import keyfile
        return keyfile.read_private_key_file(self.root / "keys" / "bank_sm2.pem")


def _sm4(key: bytes, iv: bytes, decrypt: bool = False):
    c = Cipher(algorithms.SM4(key), modes.CBC(iv))
    return c.decryptor() if decrypt else c.encryptor()


def _slices(data: bytes, size: int = MiB):
    mv = memoryview(data)
    for i in range(0, len(mv), size):
        yield mv[i:i + size]


# --- pull + validate + store ------------------------------------------------------------------

ITEM_COLS = ("order_no, seq, name, id_number, account_no, account_bank, account_bank_code, amount, "
             "remark, status")


def pull(ctx: Context, order_no: str) -> dict:
    from gateway.models import ItemStatus
    raw = ctx.raw()
    try:
        ctx.make_copy(raw)
        cur = raw.cursor()
        u = urlsplit(ctx.cfg.core.base_url)
        p = Parts()
        pending = ItemStatus.PENDING

        def rows_of(objs):
            return [(order_no, o["seq"], o["name"], o["id_number"], o["account_no"], o["account_bank"],
                     o.get("account_bank_code"), o["amount"], o["remark"], pending) for o in objs]

        copy_cm = None
        if ctx.dialect == "postgresql":
            copy_cm = cur.copy(f"COPY {COPY} ({ITEM_COLS}) FROM STDIN")
            copier = copy_cm.__enter__()

            def store(rows):
                for r in rows:
                    copier.write_row(r)
        else:
            sql = f"INSERT INTO {COPY} ({ITEM_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

            def store(rows):
                cur.executemany(sql, rows)
        with p("get"):
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
            conn.request("GET", f"/api/orders/{quote(order_no, safe='')}/items",
                         headers={"Authorization": f"Bearer {ctx.token}"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"GET items: HTTP {resp.status}")
        tail = b""
        n = 0
        while True:
            with p("get"):
                chunk = resp.read(MiB)
            if not chunk:
                break
            with p("decode"):
                buf = tail + chunk
                cut = buf.rfind(b"\n")
                body, tail = (buf[:cut], buf[cut + 1:]) if cut >= 0 else (b"", buf)
                rows = rows_of(json.loads(b"[" + body.replace(b"\n", b",") + b"]")) if body else []
            with p("insert"):
                store(rows)
            n += len(rows)
        conn.close()
        with p("decode"):
            rows = rows_of(json.loads(b"[" + tail.replace(b"\n", b",") + b"]")) if tail.strip() else []
        with p("insert"):
            store(rows)
            if copy_cm is not None:
                copy_cm.__exit__(None, None, None)
            raw.commit()
        n += len(rows)
        out = p.out()
        out["rows"] = n
        ctx.drop_copy(raw)
        return out
    finally:
        raw.close()


# --- build + sign + encrypt ------------------------------------------------------------------

def build(ctx: Context, batch: dict) -> dict:
    from protocols import sm
    c = ctx.bank.cnbank
    cipher_path = os.path.join(ctx.work, batch["file_name"])
    # Not timed: the plaintext the stage wrote, recovered from its ciphertext with the bank's key.
    key_iv = sm.sm2_decrypt(ctx.bank_private_key(), base64.b64decode(batch["file_enc_key"]),
                            c.sm2_cipher_order)
    key, iv = key_iv[:16], key_iv[16:]
    d = _sm4(key, iv, decrypt=True)
    unpad = padding.PKCS7(128).unpadder()
    with open(cipher_path, "rb") as f:
        plain = b"".join([unpad.update(d.update(f.read())), unpad.update(d.finalize()), unpad.finalize()])
    p = Parts()
    raw = ctx.raw()
    try:
        with p("read"):
            cur = raw.cursor()
            cur.execute(ctx.q("SELECT seq, name, id_number, account_no, account_bank, account_bank_code, "
                              "amount, remark, orig_batch_no FROM items WHERE order_no = ? AND batch_no = ? "
                              "ORDER BY seq"), (batch["order_no"], batch["batch_no"]))
            n = 0
            while rows := cur.fetchmany(5000):
                n += len(rows)
            cur.close()
    finally:
        raw.close()
    out_path = os.path.join(ctx.work, "bench-baseline.req")
    with p("sm3"):
        h1 = hashes.Hash(hashes.SM3())
        h2 = hashes.Hash(hashes.SM3())
        h2.update(sm.sm2_z(ctx.our_key.public_key, ctx.uid))
        for s in _slices(plain):
            h1.update(s)
            h2.update(s)
        h1.finalize()
        e = h2.finalize()
    enc = _sm4(key, iv)
    pad = padding.PKCS7(128).padder()
    with open(out_path, "wb") as f:
        for s in _slices(plain):
            with p("sm4"):
                block = enc.update(pad.update(s))
            with p("write"):
                f.write(block)
        with p("sm4"):
            block = enc.update(pad.finalize()) + enc.finalize()
        with p("write"):
            f.write(block)
    with p("sm2"):
        sm.sm2_sign_digest(ctx.our_key, e, der=c.signature_encoding == "der")
        sm.sm2_encrypt(ctx.bank_key, key_iv, c.sm2_cipher_order)
    os.unlink(out_path)
    out = p.out()
    out["rows"], out["bytes"] = n, len(plain)
    return out


# --- upload ------------------------------------------------------------------------------------

def upload(ctx: Context, batch: dict) -> dict:
    cipher = os.path.join(ctx.work, batch["file_name"])
    in_dir = ctx.bank.sftp.in_dir
    name = f"bench-baseline-{batch['file_name']}"
    p = Parts()
    with p("put"):
        ctx.sftp(f"put {cipher}.sig {in_dir}/{name}.sig\nput {cipher} {in_dir}/{name}\n")
    ctx.sftp(f"rm {in_dir}/{name}.sig\nrm {in_dir}/{name}\n")
    out = p.out()
    out["bytes"] = os.path.getsize(cipher)
    return out


# --- fetch + verify + apply ---------------------------------------------------------------------

def fetch_apply(ctx: Context, batch: dict) -> dict:
    from gateway.models import ItemStatus
    from protocols import sm
    c = ctx.bank.cnbank
    name = batch.get("result_ref") or batch["result_file"]    # renamed result_ref by migration 0019
    tmp = tempfile.mkdtemp(prefix="bench-fetch-", dir=ctx.work)
    raw = ctx.raw()
    try:
        # Not timed: a copy of `items` holding the batch's rows as they were before the results.
        ctx.make_copy(raw)
        cur = raw.cursor()
        cur.execute(ctx.q(f"INSERT INTO {COPY} SELECT * FROM items WHERE order_no = ? AND batch_no = ?"),
                    (batch["order_no"], batch["batch_no"]))
        cur.execute(f"UPDATE {COPY} SET status = '{ItemStatus.SENT}', reason_code = NULL, reason_text = NULL, "
                    f"bank_serial = NULL, result_at = NULL")
        raw.commit()
        p = Parts()
        local = os.path.join(tmp, name)
        with p("get"):
            ctx.sftp(f"get {ctx.bank.sftp.out_dir}/{name}.sig {local}.sig\nget {ctx.bank.sftp.out_dir}/{name} {local}\n")
        with p("open"):
            key_iv = sm.sm2_decrypt(ctx.our_key, base64.b64decode(batch["result_enc_key"]),
                                    c.sm2_cipher_order)
            d = _sm4(key_iv[:16], key_iv[16:], decrypt=True)
            unpad = padding.PKCS7(128).unpadder()
            h1 = hashes.Hash(hashes.SM3())
            h2 = hashes.Hash(hashes.SM3())
            h2.update(sm.sm2_z(ctx.bank_key, ctx.uid))
            parts = []
            with open(local, "rb") as f:
                while chunk := f.read(MiB):
                    parts.append(unpad.update(d.update(chunk)))
            parts.append(unpad.update(d.finalize()))
            parts.append(unpad.finalize())
            for s in parts:
                h1.update(s)
                h2.update(s)
            if h1.finalize().hex() != batch["result_sm3"].lower():
                raise RuntimeError("baseline: the result file's SM3 does not match")
            with open(local + ".sig", "rb") as f:
                sig = f.read()
            if not sm.sm2_verify_digest(ctx.bank_key, h2.finalize(), sig, der=c.signature_encoding == "der"):
                raise RuntimeError("baseline: the result file's signature does not verify")
            plain = b"".join(parts)
            del parts
        order_no = batch["order_no"]
        with p("parse"):
            lines = plain.decode(c.encoding).splitlines()
            rows = []
            paid, failed = ItemStatus.PAID, ItemStatus.FAILED
            for line in lines[1:]:
                if not line:
                    continue
                _, seq, _acct, _amt, st, code, text, serial, post = line.split("|")
                rows.append((paid if st == "S" else failed, code, text, serial or None, post, order_no, int(seq)))
        del plain, lines
        with p("update"):
            if ctx.dialect == "postgresql":
                cur.execute("CREATE TEMP TABLE bench_results (status text, reason_code text, reason_text text, "
                            "bank_serial text, result_at text, order_no text, seq integer) ON COMMIT DROP")
                with cur.copy("COPY bench_results FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
                cur.execute(f"UPDATE {COPY} i SET status = r.status, reason_code = r.reason_code, "
                            "reason_text = r.reason_text, bank_serial = r.bank_serial, result_at = r.result_at "
                            "FROM bench_results r WHERE i.order_no = r.order_no AND i.seq = r.seq")
            else:
                cur.executemany(f"UPDATE {COPY} SET status = ?, reason_code = ?, reason_text = ?, "
                                "bank_serial = ?, result_at = ? WHERE order_no = ? AND seq = ?", rows)
            raw.commit()
        out = p.out()
        out["rows"] = len(rows)
        ctx.drop_copy(raw)
        return out
    finally:
        raw.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --- push results ----------------------------------------------------------------------------------

def push(ctx: Context, order_no: str) -> dict:
    chunk = ctx.cfg.core.results_chunk
    p = Parts()
    core = urlsplit(ctx.cfg.core.base_url)
    path = f"/api/orders/{quote(order_no, safe='')}/results"
    headers = {"Authorization": f"Bearer {ctx.token}", "Content-Type": "application/json",
               "Accept": "application/json"}
    to_core = http.client.HTTPConnection(core.hostname, core.port, timeout=300)
    sink = None
    if ctx.sink_url:
        s = urlsplit(ctx.sink_url)
        sink = http.client.HTTPConnection(s.hostname, s.port, timeout=300)

    def post(conn, body: bytes) -> None:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"baseline POST {path}: HTTP {r.status}")
    raw = ctx.raw()
    n = 0
    try:
        cur = raw.cursor()
        with p("read"):
            cur.execute(ctx.q("SELECT seq, result_version, status, reason_code, reason_text, bank_serial, "
                              "result_at FROM items WHERE order_no = ? ORDER BY seq"), (order_no,))
        while True:
            with p("read"):
                rows = cur.fetchmany(chunk)
            if not rows:
                break
            n += len(rows)
            with p("json"):
                body = json.dumps({"results": [
                    {"seq": r[0], "version": r[1] + 1, "status": r[2], "reason_code": r[3] or "",
                     "reason_text": r[4] or "", "bank_serial": r[5] or "", "at": r[6]} for r in rows]},
                    ensure_ascii=False, separators=(",", ":")).encode()
            with p("post"):
                post(to_core, body)
            if sink is not None:
                with p("post_sink"):
                    post(sink, body)
        cur.close()
    finally:
        raw.close()
        to_core.close()
        if sink is not None:
            sink.close()
    out = p.out()
    out["rows"] = n
    return out


STAGES = {"pull_validate_store": (pull, "order"), "build_sign_encrypt": (build, "batch"),
          "upload_sftp": (upload, "batch"), "fetch_verify_apply": (fetch_apply, "batch"),
          "push_results_to_core": (push, "order")}


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description="one raw baseline of bench/spine.py")
    ap.add_argument("config")
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("number", help="the order number, or the batch number, the stage worked on")
    ap.add_argument("--sink", default=None)
    a = ap.parse_args()
    ctx = Context(a.config, a.sink)
    fn, kind = STAGES[a.stage]
    out = fn(ctx, ctx.batch(a.number) if kind == "batch" else a.number)
    ctx.engine.dispose()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
