"""
XEP-0386 Bind 2: the resource bound inside SASL2's success, with what the
client wants of the new session (carbons enabled, inactive, stream
management) in the same round trip.

The resource is generated: the client's C{<tag/>} (its name, say) and a
part derived from the account and the SASL2 user-agent id, so that a
device reconnecting gets its resource back (and replaces its stale
session), and one without an id gets a random one. The session is bound as
RFC 6120's bind does it (C{bindSession}); roster and presence are left to
the client.

Other modules handle their part of C{<bind/>}: they name their namespace
through the C{bind2-features} hook (it is offered in C{<inline/>}) and act
on the request in C{bind2-inline}, adding any answer to C{<bound/>}.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from invitesrv.modules.base import HostModule
from invitesrv.modules.sasl2 import AGENT

NS_BIND2 = "urn:xmpp:bind:0"
MAX_TAG = 32


def resourceFor(username: str, tag: str, agentId: str | None) -> str:
    """C{tag.XXXXXXXX}: stable per account and device when there is an id, random otherwise."""
    tag = re.sub(r"[^\w.-]", "", tag, flags=re.ASCII)[:MAX_TAG] or "bind2"
    if agentId is None:
        return f"{tag}.{secrets.token_hex(4)}"
    digest = hashlib.sha256(f"{username}\0{agentId}".encode()).digest()
    return f"{tag}.{base64.b32encode(digest[:5]).decode('ascii').lower()}"


class Bind2Module(HostModule):
    """Binds a resource inline in SASL2, and lets modules set the session up there too."""

    name = "bind2"
    depends = ("sasl2",)
    features = (NS_BIND2,)
    hooks = (("sasl2-features", "onFeatures"), ("sasl2-inline", "onInline", -10))

    def onFeatures(self, stream, inline) -> None:
        offered = inline.addElement((NS_BIND2, "bind")).addElement("inline")
        for namespace in sorted({ns for ns in self.host.hooks.run("bind2-features", stream) if ns}):
            offered.addElement("feature")["var"] = namespace

    def onInline(self, stream, request, success):
        """Bind, unless the request has no C{<bind/>} or a session was resumed instead."""
        bind = next(request.elements(NS_BIND2, "bind"), None)
        if bind is None or stream.session is not None:
            return None
        tag = next(bind.elements(NS_BIND2, "tag"), None)
        agent = AGENT.get(stream)
        session = stream.bindSession(resourceFor(stream.username, str(tag or "").strip(),
                                                 agent.id if agent else None))
        bound = success.addElement((NS_BIND2, "bound"))
        self.host.hooks.run("bind2-inline", session, bind, bound)
        return lambda: self.host.hooks.run("session-bound", session)
