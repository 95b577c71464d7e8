"""`gatewayctl console add-user NAME --role viewer|operator|auditor`: a console account.

The password is read from the terminal twice (or one line on stdin with --password-stdin);
only its bcrypt hash is written, to [console] users_file (or --users-file), mode 0600.
The running daemon reads the file at start: restart it to take a new account in.
"""

from __future__ import annotations

import getpass
import sys

from gateway.console import ROLES


def cmd_add_user(cfg, args) -> int:
    from gateway.console.auth import UsersFileError, add_user
    path = args.users_file or (cfg.console.users_file if cfg is not None and cfg.console else None)
    if not path:
        print("console add-user: no [console] users_file in the configuration; pass --users-file", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("console add-user: the passwords differ", file=sys.stderr)
            return 2
    try:
        add_user(path, args.name, args.role, password, rounds=args.rounds)
    except UsersFileError as e:
        print(f"console add-user: {e}", file=sys.stderr)
        return 2
    print(f"{args.name} ({args.role}) written to {path} (0600); restart gatewayd to take it in")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("console", help="the browser console: `console add-user NAME --role ROLE`")
    csub = c.add_subparsers(dest="cmd", required=True)
    a = csub.add_parser("add-user", help="add or replace a console account (bcrypt hash, file 0600)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--users-file", help="the users file (default: [console] users_file); no --config needed")
    a.add_argument("--password-stdin", action="store_true", help="read the password as one line on stdin")
    a.add_argument("--rounds", type=int, default=12, help="bcrypt cost (12)")
    a.set_defaults(fn=cmd_add_user)
