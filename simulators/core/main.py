"""``core-sim``: run the core-system simulator as a process (for demos and manual tests).

    core-sim --seed conf/demo/orders.toml --listen 127.0.0.1:8480 \\
             --db var/core-sim.db --token-file PATH [--page-size 100] [--fail-every N] [--delay S]
             [--departments-rpc-socket PATH]

With --departments-rpc-socket the simulator also plays the departments
(simulators/core/departments.py) through the gateway RPC on that Unix socket:
corrections, retries, refunds and batch confirmations once results arrive.

Logs are twisted.logger events: text on a terminal, JSON lines otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from twisted.logger import (
    Logger,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from simulators.datagen import SeedError, load_seed

log = Logger(namespace="core-sim")


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="core-sim", description="Simulated core system (一卡通系统) serving the core API.")
    p.add_argument("--seed", required=True, type=Path, help="TOML file of [[order]] tables")
    p.add_argument("--listen", default="127.0.0.1:8480", type=_listen_address, help="HOST:PORT (default %(default)s)")
    p.add_argument("--db", required=True, type=Path, help="SQLite file the reported results and states go to")
    p.add_argument("--token-file", required=True, type=Path, help="file holding the bearer token")
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument("--fail-every", type=int, default=0, help="answer every Nth API request 503 (0: never)")
    p.add_argument("--delay", type=float, default=0.0, help="answer API requests this many seconds late")
    p.add_argument("--departments-rpc-socket", type=Path, default=None, metavar="PATH",
                   help="play the departments through the gateway RPC on this Unix socket")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    errors = []
    try:
        specs = load_seed(args.seed)
    except SeedError as e:
        errors.append(str(e))
    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
        if not token:
            errors.append(f"{args.token_file}: empty token file")
    except OSError as e:
        errors.append(f"--token-file: {e}")
    if args.page_size < 1:
        errors.append("--page-size: must be >= 1")
    if args.fail_every < 0 or args.delay < 0:
        errors.append("--fail-every and --delay: must not be negative")
    if errors:
        print("core-sim: cannot start:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 2
    args.db.parent.mkdir(parents=True, exist_ok=True)

    observer = textFileLogObserver(sys.stderr) if sys.stderr.isatty() else jsonFileLogObserver(sys.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from twisted.internet import reactor

    from simulators.core.server import CoreSimulator

    sim = CoreSimulator(reactor, specs, os.fspath(args.db), token, page_size=args.page_size,
                        fail_every=args.fail_every, delay_s=args.delay)
    host, port = args.listen
    try:
        listening = sim.listen(port, interface=host)
    except Exception as e:
        print(f"core-sim: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 2
    log.info("core simulator serving {n} orders on {host}:{port}, recording to {db}",
             n=len(specs), host=host, port=listening.getHost().port, db=str(args.db))
    if args.departments_rpc_socket is not None:
        from simulators.core.departments import Departments, unix_socket_rpc
        departments = Departments(reactor, sim, unix_socket_rpc(reactor, args.departments_rpc_socket))
        departments.start()
        log.info("departments acting through the gateway RPC on {path}", path=str(args.departments_rpc_socket))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
