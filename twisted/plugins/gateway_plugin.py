"""`twist gateway --config conf/gateway.toml`: the daemon as a Twisted application plugin."""

from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "subsidy bank gateway",
    "gateway.plugin",
    "Bank gateway and file exchange daemon for the subsidy one-card system",
    "gateway",
)
