"""`iso-sim`: run the `iso20022` bank simulator on its own, for manual testing and demos.

    iso-sim --https 127.0.0.1:9443 --server-key keys/bank_tls.key --server-cert keys/bank_tls.pem \\
        --ca keys/bank_ca.pem --bank-key keys/bank_sig.key --bank-cert keys/bank_sig.pem \\
        --gateway-cert keys/gw_sig.pem --holding-account 6222000000000001 --holding-name 市财政局

The gateway reaches it at https://HOST:PORT with a client certificate issued by
--ca. Start-up either succeeds whole or stops with a message naming the file or
option at fault. Logs are twisted.logger events: text on a terminal, JSON lines
otherwise.
"""

from __future__ import annotations

import argparse
import sys

from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver, textFileLogObserver

log = Logger()


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iso-sim", description="Simulated ISO 20022 agent bank "
                                "(pain.001 in; pain.002, camt.054, camt.053 out) over HTTPS "
                                "with mutual TLS.")
    p.add_argument("--https", type=_endpoint, default=("127.0.0.1", 9443), metavar="HOST:PORT")
    p.add_argument("--server-key", required=True, help="the TLS server's private key (PEM)")
    p.add_argument("--server-cert", required=True, help="the TLS server's certificate (PEM)")
    p.add_argument("--ca", required=True, help="the CA whose client certificates are accepted (PEM)")
    p.add_argument("--bank-key", required=True, help="the bank's XMLDSig signing key (PEM)")
    p.add_argument("--bank-cert", required=True, help="the bank's XMLDSig certificate (PEM)")
    p.add_argument("--gateway-cert", required=True, action="append",
                   help="a pinned XMLDSig certificate of the gateway (PEM, repeatable)")
    p.add_argument("--holding-account", required=True, help="the subsidy holding account (debtor)")
    p.add_argument("--holding-name", required=True, help="the holding account's name")
    p.add_argument("--result-delay", type=float, default=0.0, metavar="SECONDS",
                   help="delay before a pain.001's result appears in the reports")
    p.add_argument("--max-body", type=int, default=64 << 20, metavar="BYTES",
                   help="largest pain.001 taken (413 past it)")
    p.add_argument("--no-sign", action="store_true", help="do not sign reports (testing)")
    p.add_argument("--log-format", choices=("auto", "text", "json"), default="auto")
    return p


def _read(path: str, option: str, errors: list[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        errors.append(f"{option} {path}: {e.strerror or e}")
        return b""
    if b"-----BEGIN " not in data:
        errors.append(f"{option} {path}: not a PEM file")
    return data


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    errors: list[str] = []
    server_key = _read(args.server_key, "--server-key", errors)
    server_cert = _read(args.server_cert, "--server-cert", errors)
    ca = _read(args.ca, "--ca", errors)
    bank_key = _read(args.bank_key, "--bank-key", errors)
    bank_cert = _read(args.bank_cert, "--bank-cert", errors)
    gateway_certs = [_read(path, "--gateway-cert", errors) for path in args.gateway_cert]
    if args.max_body <= 0:
        errors.append("--max-body: must be positive")
    if errors:
        raise SystemExit("iso-sim: cannot start:\n  " + "\n  ".join(errors))

    fmt = args.log_format
    if fmt == "auto":
        fmt = "text" if sys.stdout.isatty() else "json"
    observer = textFileLogObserver(sys.stdout) if fmt == "text" else jsonFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from twisted.internet import reactor

    from simulators.isobank.bank import IsoBankSimulator

    bank = IsoBankSimulator(reactor, bank_key_pem=bank_key, bank_cert_pem=bank_cert,
                            gateway_certs=gateway_certs, holding_account=args.holding_account,
                            holding_name=args.holding_name, result_delay_s=args.result_delay,
                            sign=not args.no_sign, max_body=args.max_body)
    status = {"code": 0}

    def start() -> None:
        try:
            bank.listen_https(args.https[1], server_key_pem=server_key, server_cert_pem=server_cert,
                              ca_pem=ca, interface=args.https[0])
        except Exception:  # noqa: BLE001  (bad key material or a busy port: say so and stop)
            log.failure("iso-sim failed to start")
            status["code"] = 1
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", bank.stop)
    reactor.run()
    sys.exit(status["code"])


if __name__ == "__main__":
    main()
