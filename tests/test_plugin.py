"""
How invitesrv is found and extended from outside: twistd lists the
C{invitesrv} plugin, and a third-party package that declares an entry point
in the C{invitesrv.modules} group is loaded by name from the config, exactly
like a built-in module, and answers over the wire.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import textwrap

import pytest
from conftest import TWISTD, RunningServer
from rawxmpp import RawClient

from invitesrv.tap import GC_THRESHOLDS, TwistdService

GREETER = '''\
"""A third-party invitesrv module: answers <greeting xmlns='urn:example:greeter'/>."""

from twisted.words.protocols.jabber import error
from twisted.words.xish import domish
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import IQHandlerMixin, XMPPHandler
from zope.interface import implementer

NS_GREETER = "urn:example:greeter"
GREETING = f"/iq[@type='get']/greeting[@xmlns='{NS_GREETER}']"


@implementer(IDisco)
class GreeterModule(XMPPHandler, IQHandlerMixin):
    """Greets whoever asks the server, counting sessions through a hook."""

    iqHandlers = {GREETING: "onGreeting"}

    def connectionInitialized(self):
        self.sessionsBound = 0
        self.parent.hooks.add("session-bound", self.onSessionBound)
        self.xmlstream.addObserver(GREETING, self.handleRequest)

    def onSessionBound(self, session):
        self.sessionsBound += 1

    def onGreeting(self, iq):
        if iq.getAttribute("to") != self.parent.name:
            raise error.StanzaError("service-unavailable")
        greeting = domish.Element((NS_GREETER, "greeting"))
        greeting.addContent(f"Hello {iq['from']} from {self.parent.name},"
                            f" session {self.sessionsBound}")
        return greeting

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user is None and not nodeIdentifier:
            return [disco.DiscoFeature(NS_GREETER)]
        return []

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []
'''


def test_twistdListsPlugin():
    """C{twistd --help} (of this Python) lists the invitesrv plugin with its description."""
    result = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+invitesrv\s+An invite-based XMPP server", result.stdout, re.MULTILINE), \
        result.stdout


def test_pluginHelp():
    """C{twistd invitesrv --help} shows the server's own options."""
    result = subprocess.run([TWISTD, "invitesrv", "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--data-dir", "--domain", "--c2s", "--s2s", "--admin"):
        assert option in result.stdout


@pytest.fixture(scope="module")
def greeterServer(tmp_path_factory):
    """
    A server whose config enables "greeter", a module that lives in a
    separate distribution (a package plus its dist-info) on PYTHONPATH only.
    """
    site = tmp_path_factory.mktemp("site-packages")
    (site / "greeter_plugin").mkdir()
    (site / "greeter_plugin" / "__init__.py").write_text(GREETER)
    info = site / "greeter_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: greeter-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [invitesrv.modules]
        greeter = greeter_plugin:GreeterModule
        """))
    server = RunningServer(tmp_path_factory.mktemp("greeter"), "")
    config = server.configPath.read_text()
    server.configPath.write_text(config.replace(
        "[server]\n", '[server]\nmodules = ["disco", "ping", "greeter"]\n', 1))
    with pytest.MonkeyPatch.context() as patch:
        path = os.environ.get("PYTHONPATH")
        patch.setenv("PYTHONPATH", f"{site}{os.pathsep}{path}" if path else str(site))
        server.start()
    server.adduser("alice@localhost", "alice password")
    yield server
    server.stop()


def test_thirdPartyModule(greeterServer):
    """The entry-point module is loaded and answers its own IQ namespace over the wire."""
    assert "greeter" in greeterServer.log()
    with RawClient(greeterServer.port) as client:
        full = client.login("alice", "alice password", "desk")
        client.send("<iq type='get' id='g1' to='localhost'><greeting xmlns='urn:example:greeter'/></iq>")
        reply = client.recvUntil(r"<iq[^>]*id='g1'.*?</iq>")
        assert "type='result'" in reply
        assert f"Hello {full} from localhost, session 1</greeting>" in reply


def test_thirdPartyModuleInDisco(greeterServer):
    """Its feature shows in the server's disco#info next to the built-in ones'."""
    with RawClient(greeterServer.port) as client:
        client.login("alice", "alice password", "desk")
        client.send("<iq type='get' id='d1' to='localhost'>"
                    "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        reply = client.recvUntil(r"<iq[^>]*id='d1'.*?</iq>")
        assert "<feature var='urn:example:greeter'/>" in reply
        assert "<feature var='urn:xmpp:ping'/>" in reply


def test_moduleNotInstalled(tmp_path):
    """Without the package on the path, the same config stops twistd with a clear message."""
    config = tmp_path / "invitesrv.toml"
    config.write_text('[server]\nmodules = ["disco", "greeter"]\n')
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "invitesrv", "--config", str(config)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no module named 'greeter'" in output and str(config) in output, output


def test_twistdServiceTunesTheCollector():
    """
    The server's own process (twistd) collects young objects less often
    than Python's default does; building the service changes nothing yet.
    """
    default = gc.get_threshold()
    assert default != GC_THRESHOLDS
    server = TwistdService()
    assert gc.get_threshold() == default
    try:
        server.startService()
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        server.stopService()
        gc.set_threshold(*default)
