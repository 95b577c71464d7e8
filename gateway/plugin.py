"""Options and service maker behind the `twist gateway` plugin."""

from twisted.python import usage

from gateway import config as configmod


class Options(usage.Options):
    optParameters = [["config", "c", None, "the daemon's TOML file, e.g. conf/gateway.toml"]]

    def postOptions(self) -> None:  # noqa: N802
        if not self["config"]:
            raise usage.UsageError("--config is required")


def makeService(options):  # noqa: N802
    from gateway.service import make_service
    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        raise SystemExit(str(e)) from None
    return make_service(cfg)
