"""
slixmpp, an independent XMPP client library, set up for the test server:
STARTTLS only (no direct-TLS attempt first), the self-signed certificate
accepted, and every wait bounded.
"""

from __future__ import annotations

import asyncio
import ssl

import slixmpp


class Client(slixmpp.ClientXMPP):
    """A slixmpp client whose C{login()} waits for the session or the failure."""

    def __init__(self, address: str, password: str, mechanism: str | None = None,
                 plugins: tuple[str, ...] = ("xep_0030", "xep_0199")):
        super().__init__(address, password, sasl_mech=mechanism)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_starttls = True
        for plugin in plugins:
            self.register_plugin(plugin)
        self.sessionStarted = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._onSession)
        self.add_event_handler("failed_all_auth", self._onFailed)
        self.add_event_handler("connection_failed", self._onFailed)

    def _onSession(self, event):
        if not self.sessionStarted.done():
            self.sessionStarted.set_result(True)

    def _onFailed(self, event):
        if not self.sessionStarted.done():
            self.sessionStarted.set_result(False)

    async def login(self, port: int, timeout: float = 15.0, presence: bool = True) -> bool:
        """Connect over STARTTLS and wait; True once the session started."""
        self.connect("127.0.0.1", port)
        ok = await asyncio.wait_for(self.sessionStarted, timeout)
        if ok and presence:
            self.send_presence()
        return ok

    async def logout(self, timeout: float = 10.0) -> None:
        self.disconnect()
        try:
            await asyncio.wait_for(self.disconnected, timeout)
        except TimeoutError:
            pass


def run(coroutine, timeout: float = 60.0):
    """Run a test coroutine on a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))
