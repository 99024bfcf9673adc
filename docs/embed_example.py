"""
An existing Twisted application that embeds invitesrv, without twistd.

The application stands in for yours: it has its own root C{MultiService}
and its own web page. It builds the XMPP server around its own reactor with
L{invitesrv.service.makeService}, attaches it to its root service, provisions
accounts from its own user list through the host's registrar, follows
sessions through the C{session-bound} and C{session-closed} hooks, and shows
who is online on its page. See C{docs/embedding.md}.

Run it from the repository (the account password is read from standard input)::

    echo 'a good password' | python docs/embed_example.py --provision alice \\
        --c2s tcp:5222 --web tcp:8080:interface=127.0.0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web import resource, server

from invitesrv.config import Config, HostOptions
from invitesrv.service import ListenerService, makeService

log = Logger()


class OnlinePage(resource.Resource):
    """The application's own page: who is connected to the embedded XMPP server."""

    isLeaf = True

    def __init__(self, router):
        resource.Resource.__init__(self)
        self.router = router

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        online = sorted(self.router.sessions)
        return "".join(f"{bare}\n" for bare in online).encode("utf-8") or b"nobody\n"


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--domain", default="localhost", help="the XMPP domain to serve")
    parser.add_argument("--data-dir", default="data", help="database, certificate and secret")
    parser.add_argument("--c2s", default="tcp:5222", help="client listener endpoint")
    parser.add_argument("--web", default="tcp:8080:interface=127.0.0.1",
                        help="endpoint of the application's own web page")
    parser.add_argument("--provision", action="append", default=[], metavar="USERNAME",
                        help="create this account if missing (password from standard input)")
    return parser.parse_args(argv)


@defer.inlineCallbacks
def provision(host, usernames: list[str], password: str):
    """Create the application's users that do not have an account yet."""
    for username in usernames:
        if not (yield host.store.accountExists(host.name, username)):
            yield host.registrar.register(username, password, "api", trusted=True)
            log.info("Provisioned {user}@{host}", user=username, host=host.name)


@defer.inlineCallbacks
def main(reactor, *argv: str):
    args = parseArguments(list(argv))
    password = sys.stdin.readline().rstrip("\n") if args.provision else ""
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])

    # The application's own services, as it had them before adding XMPP.
    application = service.MultiService()

    # The XMPP server: configured in code, built around this reactor, and
    # attached as one child service named "xmpp".
    config = Config(hosts={args.domain: HostOptions()}, data_dir=Path(args.data_dir),
                    c2s=(args.c2s,), source="embed_example.py")
    xmpp = makeService(config, reactor=reactor)
    xmpp.setName("xmpp")
    xmpp.setServiceParent(application)

    # Its pieces are there to use: the shared router and each virtual host.
    router = xmpp.server.router
    host = xmpp.server.hosts[args.domain]
    host.hooks.add("session-bound", lambda session: log.info("{jid} is online", jid=session.full))
    host.hooks.add("session-closed", lambda session: log.info("{jid} left", jid=session.full))

    page = server.Site(OnlinePage(router))
    ListenerService(endpoints.serverFromString(reactor, args.web), page,
                    "Status page").setServiceParent(application)

    application.startService()
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    yield provision(host, args.provision, password)
    log.info("Ready")
    yield defer.Deferred()  # serve until the process is stopped


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
