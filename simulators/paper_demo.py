"""The demo's paper (articles 25-27): after the run, the month's register, workbook, reports, volume and archive.

Called by `simulators/demo.py` once the daemon has stopped: a seal key is made for the
installation and named in `[paper]`, then the operator commands of gateway/paper/ run
in this process against the demo's database and write under `<demo>/paper/`.
"""

from __future__ import annotations

import datetime
import io
import os
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

from gateway import config as configmod
from gateway.rules import CST
from protocols import keyfile, sm


def write_paper(root: Path, config: Path, keys_dir: Path, now: datetime.datetime | None = None) -> list[str]:
    """Produce the month's paper under root/paper; returns lines to print (what was written, what verified)."""
    now = now or datetime.datetime.now(CST)
    out = root / "paper"
    out.mkdir(parents=True, exist_ok=True)
    cfg = configmod.load(config)
    if cfg.paper is None:
        seal_key = keys_dir / "seal_sm2.pem"
        keyfile.write_private_key_file(seal_key, sm.generate_keypair())
        os.chmod(seal_key, 0o600)
        with open(config, "a") as f:
            f.write(f'\n[paper]\nseal_key = "{seal_key}"\nout_dir = "{out}"\n')
        cfg = configmod.load(config)
    from gateway.paper import cli
    month = f"{now.year:04d}-{now.month:02d}"
    steps = [
        (cli.cmd_register, SimpleNamespace(month=month, bank=None, json=False, make_sheets=True)),
        (cli.cmd_sheet_make, SimpleNamespace(batch=None, order=None, out_dir=str(out / "sheets"))),
        (cli.cmd_report_monthly, SimpleNamespace(month=month, bank=None, project=None, json=False,
                                                 xlsx=str(out / f"monthly-{month}.xlsx"),
                                                 pdf=str(out / f"monthly-{month}.pdf"))),
        (cli.cmd_report_yearly, SimpleNamespace(year=now.year, bank=None, project=None, json=False,
                                                pdf=str(out / f"yearly-{now.year}.pdf"))),
        (cli.cmd_volume, SimpleNamespace(year=now.year, out=str(out / f"volume-{now.year}.pdf"))),
        (cli.cmd_archive_export, SimpleNamespace(order=None, month=month, out=str(out / f"archive-{month}.tar.gz"))),
        (cli.cmd_archive_verify, SimpleNamespace(file=str(out / f"archive-{month}.tar.gz"),
                                                 key=str(out / "sheets" / "seal.pub.pem"), fingerprint=None,
                                                 expect_head=None, journal_key=None)),
    ]
    lines = []
    for fn, args in steps:
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = fn(cfg, args)
        text = buf.getvalue().strip().splitlines()
        if fn is cli.cmd_register:
            lines += text
        else:
            lines += [t for t in text if t.startswith(("wrote", "archive", "ARCHIVE", "every"))][:3]
        if code and fn is not cli.cmd_report_yearly:     # the January check fails mid-year, as it should
            lines.append(f"paper: {fn.__name__} exited {code}")
    return lines
