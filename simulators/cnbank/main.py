"""`cnbank-sim`: run the cnbank bank simulator on its own, for manual testing and demos.

    cnbank-sim --data-dir var/bank --tcp 127.0.0.1:9100 --sftp 127.0.0.1:9122 \\
        --bank-key keys/bank.pem --gateway-key keys/gw_pub.pem \\
        --authorized-key keys/gw_ssh.pub --host-key keys/bank_host --auto-fund

Start-up either succeeds whole or stops with a message naming the file or
option at fault. Logs are twisted.logger events: text on a terminal, JSON
lines otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.logger import (
    Logger,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from protocols import keyfile
from protocols.cnbank_envelope import EnvelopeSettings

log = Logger()


def _endpoint(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"cnbank-sim: {option} {text!r} is not HOST:PORT")
    return host, int(port)


def _order_fund(text: str) -> tuple[str, int]:
    from protocols.money import AmountError, parse_yuan
    order, sep, amount = text.partition("=")
    try:
        if not sep or not order:
            raise AmountError(text)
        return order, parse_yuan(amount)
    except AmountError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ORDER_NO=YUAN.FF") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnbank-sim", description="Simulated cnbank agent bank "
                                "(framed TCP messages and SFTP files, SM2/SM3/SM4).")
    p.add_argument("--data-dir", required=True, help="the bank's ledger and spool")
    p.add_argument("--sftp-root", help="directory served over SFTP, holding in/ and out/ "
                   "(default: DATA_DIR/sftp)")
    p.add_argument("--tcp", default="127.0.0.1:9100", help="HOST:PORT for messages")
    p.add_argument("--sftp", default="127.0.0.1:9122", help="HOST:PORT for files")
    p.add_argument("--bank-key", required=True, help="the bank's SM2 private key (PEM, 0600)")
    p.add_argument("--gateway-key", required=True, help="the gateway's SM2 public key (PEM)")
    p.add_argument("--authorized-key", required=True, action="append",
                   help="the gateway's SSH public key file (repeatable)")
    p.add_argument("--host-key", required=True, help="the SFTP host's private key file")
    p.add_argument("--sftp-user", default="gateway")
    p.add_argument("--bank-id", default="CNBANK", help="the bank's ReceiverId")
    p.add_argument("--client-id", help="the only SenderId accepted (default: any)")
    p.add_argument("--processing-delay", type=float, default=0.5, metavar="SECONDS")
    p.add_argument("--auto-fund", action="store_true",
                   help="fund an unknown order at its first batch's TotalAmount")
    p.add_argument("--fund", type=_order_fund, action="append", default=[],
                   metavar="ORDER_NO=YUAN", help="fund an order before serving (repeatable)")
    p.add_argument("--payer-acct", help="PayerAcct of statements (default: the batches')")
    p.add_argument("--sm2-order", choices=("C1C3C2", "C1C2C3"), default="C1C3C2")
    p.add_argument("--signature", choices=("raw", "der"), default="raw")
    p.add_argument("--uid", default="1234567812345678", help="SM2 signer ID")
    p.add_argument("--encoding", default="gb18030")
    p.add_argument("--amount-unit", choices=("yuan", "fen"), default="yuan")
    p.add_argument("--max-skew", type=int, default=300, metavar="SECONDS")
    p.add_argument("--allow-plaintext", action="store_true", help="accept EncFlag 0 (testing)")
    p.add_argument("--log-format", choices=("auto", "text", "json"), default="auto")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    tcp = _endpoint(args.tcp, "--tcp")
    sftp = _endpoint(args.sftp, "--sftp")

    errors = []
    try:
        bank_key = keyfile.read_private_key_file(args.bank_key)
    except (OSError, keyfile.KeyFileError) as e:
        errors.append(f"--bank-key {args.bank_key}: {e}")
    try:
        gateway_key = keyfile.read_public_key_file(args.gateway_key)
    except (OSError, keyfile.KeyFileError) as e:
        errors.append(f"--gateway-key {args.gateway_key}: {e}")
    authorized = []
    for path in args.authorized_key:
        try:
            with open(path, "rb") as f:
                authorized.extend(line.strip() for line in f.read().splitlines()
                                  if line.strip() and not line.startswith(b"#"))
        except OSError as e:
            errors.append(f"--authorized-key {path}: {e}")
    if not os.path.isfile(args.host_key):
        errors.append(f"--host-key {args.host_key}: no such file")
    try:
        settings = EnvelopeSettings(uid=args.uid.encode("ascii"), sm2_order=args.sm2_order,
                                    signature=args.signature, encoding=args.encoding,
                                    allow_plaintext=args.allow_plaintext,
                                    max_skew_s=args.max_skew)
    except (ValueError, UnicodeEncodeError) as e:
        errors.append(f"envelope settings: {e}")
    if errors:
        raise SystemExit("cnbank-sim: cannot start:\n  " + "\n  ".join(errors))

    fmt = args.log_format
    if fmt == "auto":
        fmt = "text" if sys.stdout.isatty() else "json"
    observer = (textFileLogObserver(sys.stdout) if fmt == "text"
                else jsonFileLogObserver(sys.stdout))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from twisted.internet import reactor

    from simulators.cnbank.bank import CnBankSimulator

    data_dir = os.path.abspath(args.data_dir)
    bank = CnBankSimulator(
        reactor, data_dir=data_dir, bank_key=bank_key, gateway_key=gateway_key,
        bank_id=args.bank_id, settings=settings,
        sftp_root=args.sftp_root or os.path.join(data_dir, "sftp"),
        processing_delay_s=args.processing_delay, client_id=args.client_id,
        auto_fund=args.auto_fund, amount_unit=args.amount_unit, payer_acct=args.payer_acct)
    status = {"code": 0}

    async def start() -> None:
        await bank.ready
        for order_no, amount in args.fund:
            await bank.fund(order_no, amount)
        bank.listen_tcp(tcp[1], tcp[0])
        bank.listen_sftp(sftp[1], sftp[0], authorized_keys=authorized,
                         host_key_path=args.host_key, username=args.sftp_user)

    def failed(f):
        log.failure("cnbank-sim failed to start", f)
        status["code"] = 1
        reactor.stop()

    def go() -> None:
        from twisted.internet import defer
        defer.ensureDeferred(start()).addErrback(failed)

    reactor.callWhenRunning(go)
    reactor.addSystemEventTrigger("before", "shutdown", bank.stop)
    reactor.run()
    sys.exit(status["code"])


if __name__ == "__main__":
    main()
