"""Options and service maker behind the `twist gateway` plugin."""

import sys

from twisted.python import usage

from gateway import config as configmod


class Options(usage.Options):
    optParameters = [["config", "c", None, "the daemon's TOML file, e.g. conf/gateway.toml"]]

    def postOptions(self) -> None:  # noqa: N802
        if not self["config"]:
            raise usage.UsageError("--config is required")


def makeService(options):  # noqa: N802
    from gateway import filemodes
    from gateway.service import make_service
    filemodes.secure_process()   # twist sets no umask: files 0600, folders 0700 (gateway/filemodes.py)
    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        raise SystemExit(str(e)) from None
    try:
        for line in filemodes.secure_data_dirs(cfg.work_dir, cfg.journal_archive_dir, cfg.database_url):
            print(f"gateway: took group/other access away: {line}", file=sys.stderr)
    except OSError as e:
        raise SystemExit(f"{cfg.file}: cannot secure the data folders: {e}") from None
    from gateway.service import StartupError
    try:
        return make_service(cfg)
    except StartupError as e:
        raise SystemExit(f"gateway: {e}") from None   # a message for the operator, not a traceback
