"""The console's listener: a twisted.web Site on [console] listen, TLS off loopback."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server

from gateway import db as dbmod
from gateway.console.auth import Auth, DbStore, read_users
from gateway.console.web import Console

log = Logger()


class ConsoleService(service.Service):
    """Serves the console with its own engine and thread pool (2 threads): pages read apart
    from the flows' database work, so a slow page never holds a bank step up. Sessions and
    lockouts are kept in the database (DbStore): they outlive a restart and are shared with
    a standby daemon."""

    def __init__(self, reactor, settings, database_url: str, gateway, journal, journal_key=None):
        self.reactor, self.settings, self.gw, self.journal = reactor, settings, gateway, journal
        self.users = read_users(settings.users_file)   # UsersFileError names the file and line
        self.database = dbmod.Database(reactor, dbmod.make_engine(database_url), 2)
        self.auth = Auth(self.users, reactor.seconds, settings.session_s, settings.lockout_after, settings.lockout_s,
                         DbStore(self.database.engine))
        self.resource = Console(reactor, self.auth, self.database, gateway, journal, journal_key,
                                secure_cookies=bool(settings.tls_cert))
        self.port = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.database.start()
        site = server.Site(self.resource)
        site.displayTracebacks = False
        if self.settings.tls_cert:
            from twisted.internet import ssl
            cert = ssl.PrivateCertificate.loadPEM(
                open(self.settings.tls_cert).read() + open(self.settings.tls_key).read())
            self.port = self.reactor.listenSSL(self.settings.port, site, cert.options(),
                                               interface=self.settings.host)
            scheme = "https"
        else:
            self.port = self.reactor.listenTCP(self.settings.port, site, interface=self.settings.host)
            scheme = "http"
        log.info("console on {scheme}://{host}:{port}/", scheme=scheme, host=self.settings.host,
                 port=self.port.getHost().port)

    def stopService(self):  # noqa: N802
        super().stopService()
        d = defer.succeed(None)
        if self.port is not None:
            port, self.port = self.port, None
            d = defer.maybeDeferred(port.stopListening)
        d.addBoth(lambda _: self.database.stop())
        return d
