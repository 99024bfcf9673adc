"""
The virtual host's life cycle: what its modules attach when it starts is
detached when it stops, so a host can be stopped and started again (an
embedding application reloading it, the tests) without handlers piling up
and answering twice.
"""

from __future__ import annotations

import pytest_twisted
from streamharness import ClientConnection, addAccount, login

from invitesrv.config import DEFAULT_MODULES


def attached(host) -> tuple[int, int]:
    """The number of observers on the host's stream and of callbacks on its hooks."""
    stream = host.stream
    observers = sum(len(observer.callbacks)
                    for table in (stream._eventObservers, stream._xpathObservers)
                    for byPriority in table.values() for observer in byPriority.values())
    hooks = sum(len(host.hooks.callbacks(name)) for name in list(host.hooks._hooks))
    return observers, hooks


@pytest_twisted.inlineCallbacks
def test_stopDetachesEveryModule(servers):
    """
    With every default module loaded, the observers and hooks after a stop
    are those before the start (no module leaves anything behind), and the
    host started again answers exactly once: a ping gets one reply.
    """
    server = servers()
    host = server.hosts["localhost"]
    host.loadModules(DEFAULT_MODULES)
    before = attached(host)
    host.start()
    assert attached(host)[0] > before[0] and attached(host)[1] > before[1]
    host.stop()
    assert attached(host) == before
    host.start()
    yield addAccount(server, "una", "una password")
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "una", "una password")
    connection.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = yield connection.nextNamed("iq")
    assert reply["type"] == "result" and reply["id"] == "p1"
    assert [e for e in connection.received() if e.name == "iq"] == []
    host.stop()
    assert attached(host) == before
