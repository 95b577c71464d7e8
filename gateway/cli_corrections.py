"""`gatewayctl corrections import FILE`: a department's sheet of corrections, sent as one item.correct_many.

The sheet is a CSV file (UTF-8, or GB18030 as Chinese spreadsheets save it) or an
.xlsx workbook (its first sheet), with a header row naming the columns: `seq`,
`account_no` and `confirmed_by` are required, `account_bank`, `name` and
`id_number` optional (an empty cell leaves that field as it is). The approval
(`--approved-by`, `--approval-ref`) covers the whole sheet. The daemon applies
every line or none (core-api.md item.correct_many); a refusal is printed with the
seq, the field and the sheet line it came from. Nothing is corrected here: the
call goes through the daemon's RPC, journaled with the caller like any other.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

REQUIRED = ("seq", "account_no", "confirmed_by")
OPTIONAL = ("account_bank", "name", "id_number")
EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE = 0, 1, 2, 64


class SheetError(ValueError):
    """The sheet cannot be read as corrections; the message names the line and column."""


def _rows_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:   # gb18030 decodes any byte string; kept for clarity
        raise SheetError(f"{path}: neither UTF-8 nor GB18030")
    return [row for row in csv.reader(io.StringIO(text, newline=""))]


def _rows_xlsx(path: Path) -> list[list[str]]:
    try:
        import openpyxl
    except ImportError:  # pragma: no cover - openpyxl is installed with the gateway
        raise SheetError(f"{path}: reading .xlsx needs openpyxl; save the sheet as CSV") from None
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        out = []
        for row in ws.iter_rows(values_only=True):
            out.append(["" if v is None else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
                        for v in row])
        return out
    finally:
        wb.close()


def read_sheet(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(sheet line, correction) for every data row; SheetError naming the line and column otherwise."""
    path = Path(path)
    rows = _rows_xlsx(path) if path.suffix.lower() == ".xlsx" else _rows_csv(path)
    rows = [r for r in rows if any(c.strip() for c in r)] if rows else []
    if not rows:
        raise SheetError(f"{path}: empty; the first row names the columns ({', '.join(REQUIRED + OPTIONAL)})")
    header = [c.strip().lower() for c in rows[0]]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise SheetError(f"{path}: line 1: unknown column {unknown[0]!r}; the columns are "
                         f"{', '.join(REQUIRED + OPTIONAL)}")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise SheetError(f"{path}: line 1: column {missing[0]!r} is required")
    if len(set(header)) != len(header):
        raise SheetError(f"{path}: line 1: a column is named twice")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            raise SheetError(f"{path}: line {n}: {len(row)} cells, the header names {len(header)}")
        cells = dict(zip(header, (c.strip() for c in row)))
        try:
            seq = int(cells.get("seq", ""))
        except ValueError:
            raise SheetError(f"{path}: line {n}: seq {cells.get('seq')!r} is not a number") from None
        c: dict[str, Any] = {"seq": seq}
        for k in REQUIRED[1:] + OPTIONAL:
            if cells.get(k):
                c[k] = cells[k]
        out.append((n, c))
    if not out:
        raise SheetError(f"{path}: no corrections after the header")
    return out


def cmd_corrections_import(cfg, args, *, stdout=None, stderr=None) -> int:
    from gateway.masking import mask_text
    from gateway.rpc_api import CODE_NAMES, RpcError
    from gateway.rpc_client import RpcUnavailable, call
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        lines = read_sheet(args.file)
    except (SheetError, OSError) as e:
        print(f"gatewayctl corrections import: {e}", file=err)
        return EXIT_USAGE
    socket_path = args.socket or (cfg.rpc.unix_socket if cfg is not None and cfg.rpc else None)
    if socket_path is None:
        print("gatewayctl corrections import: no [rpc] unix_socket in the configuration; give --socket",
              file=err)
        return EXIT_USAGE
    params = {"order_no": args.order, "approved_by": args.approved_by, "approval_ref": args.approval_ref,
              "corrections": [c for _, c in lines]}
    try:
        result = call("item.correct_many", params, unix_path=socket_path, timeout=args.timeout)
    except RpcError as e:
        seq = (e.data or {}).get("seq")
        line = next((n for n, c in lines if c["seq"] == seq), None) if seq is not None else None
        where = f" seq={seq} (line {line} of {args.file})" if line else ""
        field = f" field={e.field}" if e.field else ""
        print(f"refused: {CODE_NAMES.get(e.code, 'ERROR')} ({e.code}){where}{field}: {mask_text(e.message)}",
              file=err)
        print("nothing was corrected", file=err)
        return EXIT_REFUSED
    except RpcUnavailable as e:
        print(str(e), file=err)
        return EXIT_UNREACHABLE
    print(json.dumps(result, ensure_ascii=False), file=out)
    return EXIT_OK


def add_parser(sub) -> None:
    c = sub.add_parser("corrections", help="corrections of failed items from a sheet (item.correct_many)")
    csub = c.add_subparsers(dest="cmd", required=True)
    imp = csub.add_parser("import", help="FILE.csv or FILE.xlsx with columns seq, account_no, confirmed_by "
                                         "[, account_bank, name, id_number]: all lines or none")
    imp.add_argument("file")
    imp.add_argument("--order", required=True, help="the order the sheet corrects")
    imp.add_argument("--approved-by", required=True, help="the department head who approved the sheet")
    imp.add_argument("--approval-ref", required=True, help="the approval document's reference")
    imp.add_argument("--socket", help="the RPC's Unix socket (default: [rpc] unix_socket)")
    imp.add_argument("--timeout", type=float, default=300.0)
    imp.set_defaults(fn=cmd_corrections_import)
