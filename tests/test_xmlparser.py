"""
The restricted XML parser, through a real client stream in memory: what RFC
6120 forbids (DTDs, entities, comments, processing instructions) and what a
hostile peer could make the server hold (huge, deep or attribute-laden
stanzas) ends the stream with the right error; byte boundaries never change
what is parsed.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from streamharness import HEADER, NS_STREAMS, ClientConnection, addAccount, login
from twisted.words.xish import domish

from invitesrv.xmpp.xmlparser import RestrictedElementStream, StreamViolation


@pytest.fixture
def server(servers):
    return servers()


def opened(server, **kwargs) -> ClientConnection:
    """A connection whose stream is open (header and features already read)."""
    connection = ClientConnection(server, **kwargs)
    connection.openStream()
    names = [element.name for element in connection.received()]
    assert names == ["stream", "features"]
    return connection


def assertClosedWith(connection: ClientConnection, condition: str) -> None:
    assert connection.streamError() == condition
    assert connection.ended, "no </stream:stream> after the error"
    assert connection.closed


# -- what XMPP forbids ----------------------------------------------------------


@pytest.mark.parametrize("data", [
    "<!DOCTYPE stream:stream>",
    "<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>",
    "<!-- a comment before the stream -->",
    "<?php echo 1; ?>",
])
def test_restrictedBeforeHeader(server, data):
    """A DTD, entity declarations, a comment or a PI before the header: restricted-xml."""
    connection = ClientConnection(server)
    connection.send("<?xml version='1.0'?>" + data)
    assertClosedWith(connection, "restricted-xml")


@pytest.mark.parametrize("data", [
    "<!-- between stanzas -->",
    "<message to='localhost'><!-- inside --><body>x</body></message>",
    "<message to='localhost'><?target data?></message>",
    "<?target data?>",
])
def test_restrictedInStream(server, data):
    """A comment or processing instruction anywhere in the stream: restricted-xml."""
    connection = opened(server)
    connection.send(data)
    assertClosedWith(connection, "restricted-xml")


def test_undefinedEntity(server):
    """With no DTD there are no entities to expand: a reference is not well-formed."""
    connection = opened(server)
    connection.send("<message><body>&lol;</body></message>")
    assertClosedWith(connection, "not-well-formed")


def test_invalidUTF8(server):
    """Bytes that are not UTF-8 end the stream as not-well-formed."""
    connection = opened(server)
    connection.send(b"<message><body>\xff\xfe</body></message>")
    assertClosedWith(connection, "not-well-formed")


def test_mismatchedTag(server):
    connection = opened(server)
    connection.send("<message><body></message>")
    assertClosedWith(connection, "not-well-formed")


def test_headerInsideStream(server):
    """A second stream header inside the open stream is refused."""
    connection = opened(server)
    connection.send(HEADER.format(to="localhost").replace("<?xml version='1.0'?>", ""))
    assertClosedWith(connection, "unsupported-stanza-type")


# -- limits -----------------------------------------------------------------------


def test_stanzaOverPreauthLimit(server):
    """Before authentication a stanza of more than stanza_size_preauth bytes is refused."""
    connection = opened(server)
    connection.send(f"<iq type='get' id='1'><query xmlns='x'>{'a' * 10_000}</query></iq>")
    assertClosedWith(connection, "policy-violation")


def test_stanzaGrowingSlowly(servers):
    """
    An unfinished stanza sent in small pieces is refused as soon as it is
    too large, not when (if ever) it ends.
    """
    connection = opened(servers(limits={"stanza_size_preauth": 1000}))
    connection.send("<message><body>")
    for _ in range(15):
        if connection.closed:
            break
        connection.send("a" * 100)
    assertClosedWith(connection, "policy-violation")


def test_unfinishedStartTag(servers):
    """A start tag that never ends (expat buffers it) counts against the limit too."""
    connection = opened(servers(limits={"stanza_size_preauth": 1000}))
    connection.send("<message ")
    for number in range(30):
        if connection.closed:
            break
        connection.send(f"a{number}='{'x' * 50}' ")
    assertClosedWith(connection, "policy-violation")


def test_stanzaJustUnderLimit(servers):
    """A stanza within the limit is read; the limit is about stanzas, not streams."""
    server = servers(limits={"stanza_size_preauth": 1000})
    connection = opened(server)
    for number in range(5):
        stanza = f"<iq type='get' id='{number}' to='nowhere.example'><q xmlns='x'/></iq>"
        connection.send(stanza + " " * (900 - len(stanza)))
    received = connection.received()
    assert [e.name for e in received] == ["iq"] * 5
    assert all(e["type"] == "error" for e in received)
    assert not connection.closed


@pytest_twisted.inlineCallbacks
def test_largerStanzasAfterAuthentication(server):
    """Once authenticated, stanza_size applies instead of the pre-auth limit."""
    yield addAccount(server, "alice", "correct horse")
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "alice", "correct horse")
    connection.send(f"<message to='alice@localhost/test'><body>{'b' * 50_000}</body></message>")
    message = yield connection.nextNamed("message")
    assert len(str(message.body)) == 50_000
    assert not connection.closed
    connection.send(f"<message to='alice@localhost/test'><body>{'b' * 270_000}</body></message>")
    assertClosedWith(connection, "policy-violation")


def test_depthLimit(servers):
    """Nesting beyond max_depth (the stream element counts as 1) is refused."""
    server = servers(limits={"max_depth": 5})
    connection = opened(server)
    connection.send("<iq type='get' id='1' to='nowhere.example'><a xmlns='x'><b><c/></b></a></iq>")
    assert [e.name for e in connection.received()] == ["iq"]
    connection.send("<iq type='get' id='2'><a xmlns='x'><b><c><d/></c></b></a></iq>")
    assertClosedWith(connection, "policy-violation")


def test_defaultDepthLimit(server):
    connection = opened(server)
    connection.send("<message>" + "<a>" * 100)
    assertClosedWith(connection, "policy-violation")


def test_attributeCountLimit(server):
    """More than max_attributes attributes on one element is refused."""
    connection = opened(server)
    attributes = " ".join(f"a{n}='1'" for n in range(65))
    connection.send(f"<message {attributes}/>")
    assertClosedWith(connection, "policy-violation")


def test_attributeLengthLimit(servers):
    server = servers(limits={"max_attribute_length": 100})
    connection = opened(server)
    connection.send(f"<iq type='get' id='{'x' * 100}' to='nowhere.example'><q xmlns='x'/></iq>")
    assert [e.name for e in connection.received()] == ["iq"]
    assert not connection.closed
    connection.send(f"<iq type='get' id='{'x' * 101}' to='nowhere.example'><q xmlns='x'/></iq>")
    assertClosedWith(connection, "policy-violation")


# -- ordinary streams -------------------------------------------------------------


def test_whitespaceKeepalives(servers):
    """
    Whitespace between stanzas is a keepalive: nothing is answered, nothing
    is closed, and however much of it a long session sends, it never counts
    towards the next stanza's size.
    """
    connection = opened(servers(limits={"stanza_size_preauth": 1000}))
    for _ in range(100):
        connection.send(" ")
    connection.send("\n\t " * 1000)
    assert connection.received() == []
    stanza = "<iq type='get' id='1' to='nowhere.example'><q xmlns='x'/></iq>"
    connection.send(stanza + " " * 2000 + stanza.replace("'1'", "'2'"))
    assert [e["id"] for e in connection.received()] == ["1", "2"]
    assert not connection.closed


def test_clientClosesStream(server):
    """The client's </stream:stream> is answered with ours and the connection ends."""
    connection = opened(server)
    connection.send("</stream:stream>")
    assert connection.received() == []
    assert connection.ended and connection.closed


# -- the parser on its own ----------------------------------------------------------


STREAM = (
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    " to='localhost' version='1.0'>"
    "<message to='bob@localhost' xml:lang='fr' type='chat'><body>Grüße ☃ 𝄞 &amp; &lt;ok&gt;"
    "</body><x xmlns='urn:example' a='1'><y b='2'/></x></message>"
    "   "
    "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"
    "<foo:bar xmlns:foo='urn:foo' foo:attr='v'><foo:baz/></foo:bar>"
    "</stream:stream>"
).encode()


def parseAll(chunks, rest: bool = False) -> tuple[object, list[str], bool]:
    """
    Parse C{chunks}; return the root, the stanzas serialised, and whether it
    ended. With C{rest}, the parser is told to rest after every chunk.
    """
    parser = RestrictedElementStream(10_000)
    found: dict = {"root": None, "stanzas": [], "ended": False, "starts": 0}

    def started(root):
        found.update(root=root, starts=found["starts"] + 1)

    parser.DocumentStartEvent = started
    parser.ElementEvent = lambda element: found["stanzas"].append(element.toXml())
    parser.DocumentEndEvent = lambda: found.update(ended=True)
    for chunk in chunks:
        parser.parse(chunk)
        if rest:
            parser.rest()
    assert found["starts"] == 1
    return found["root"], found["stanzas"], found["ended"]


def test_sameTreesAsTwisted():
    """
    The parser builds the same domish trees as Twisted's own expat stream
    (namespaces, prefixes, xml:lang, text), so handlers cannot tell them apart.
    """
    twisted = domish.ExpatElementStream()
    expected: list[str] = []
    twisted.DocumentStartEvent = lambda root: None
    twisted.ElementEvent = lambda element: expected.append(element.toXml())
    twisted.DocumentEndEvent = lambda: expected.append("end")
    twisted.parse(STREAM)
    root, stanzas, ended = parseAll([STREAM])
    assert (root.uri, root.name, root.defaultUri, root["to"]) == (NS_STREAMS, "stream",
                                                                  "jabber:client", "localhost")
    assert [*stanzas, "end" if ended else ""] == expected
    assert len(stanzas) == 3 and "Grüße ☃ 𝄞 &amp; &lt;ok&gt;" in stanzas[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_chunkBoundariesDoNotMatter(cuts):
    """Split anywhere, even inside a UTF-8 sequence or a tag, the stream parses the same."""
    positions = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *positions], [*positions, len(STREAM)], strict=True)]
    root, stanzas, ended = parseAll(chunks)
    _, expected, _ = parseAll([STREAM])
    assert stanzas == expected and ended and root.name == "stream"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_restingChangesNothing(cuts):
    """
    A parser told to rest after every chunk, wherever the chunks end (inside
    a tag, an attribute value, a UTF-8 sequence or between stanzas), parses
    the stream exactly as one that never rests: it rests only where nothing
    is pending, and the stand-in header restores every namespace.
    """
    positions = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *positions], [*positions, len(STREAM)], strict=True)]
    root, stanzas, ended = parseAll(chunks, rest=True)
    _, expected, _ = parseAll([STREAM])
    assert stanzas == expected and ended and root.name == "stream"


def restingParser(header: bytes) -> tuple[RestrictedElementStream, list]:
    """A parser that has read C{header} and a stanza; its events go to the list."""
    parser = RestrictedElementStream(1000)
    events: list = []
    parser.DocumentStartEvent = lambda root: events.append(("start", root.name))
    parser.ElementEvent = events.append
    parser.DocumentEndEvent = lambda: events.append("end")
    parser.parse(header + b"<presence/>")
    return parser, events


def test_restFreesTheParser():
    """Between stanzas the expat parser goes; the next bytes bring a new one."""
    parser, events = restingParser(STREAM[:STREAM.index(b"<message")])
    assert parser.rest() and parser.resting
    parser.parse(b"<iq type='get' id='1'/></stream:stream>")
    assert not parser.resting
    assert events[0] == ("start", "stream") and events[-1] == "end"
    assert [(e.name, e.uri) for e in events[1:-1]] == [("presence", "jabber:client"),
                                                        ("iq", "jabber:client")]


@pytest.mark.parametrize("pending", [b"<message to='a>", b"<message><body>", b"<iq", b"\xc3"])
def test_noRestWithBytesPending(pending):
    """Inside a stanza, a tag, or a character, the parser keeps what it holds."""
    parser, events = restingParser(STREAM[:STREAM.index(b"<message")])
    parser.parse(pending)
    assert not parser.rest() and not parser.resting


def test_noRestBeforeTheHeader():
    """Without a complete stream header there is nothing to go on from."""
    parser = RestrictedElementStream(1000)
    parser.parse(b"<?xml version='1.0'?>")
    assert not parser.rest()


def test_restKeepsTheHeadersPrefixes():
    """
    A server stream's header declares dialback's prefix: after a rest, a
    C{<db:result/>} is still in dialback's namespace, and the closing tag of
    a header with an unusual prefix still matches.
    """
    header = (b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server'"
              b" xmlns:db='jabber:server:dialback'>")
    parser, events = restingParser(header)
    assert parser.rest()
    parser.parse(b"<db:result to='a' from='b'>key</db:result>")
    assert parser.rest()
    parser.parse(b"</s:stream>")
    assert (events[2].uri, events[2].name) == ("jabber:server:dialback", "result")
    assert events[-1] == "end"


def test_ambiguousHeaderNeverRests():
    """A header whose own prefix cannot be told from its declarations keeps its parser."""
    header = (b"<a:stream xmlns:a='http://etherx.jabber.org/streams'"
              b" xmlns:b='http://etherx.jabber.org/streams' xmlns='jabber:client'>")
    parser, events = restingParser(header)
    assert not parser.rest()
    parser.parse(b"</a:stream>")
    assert events[-1] == "end"


def test_limitsHoldAfterRest():
    """A stanza over the size limit is refused after a rest as before."""
    parser, _ = restingParser(STREAM[:STREAM.index(b"<message")])
    assert parser.rest()
    with pytest.raises(StreamViolation) as caught:
        parser.parse(b"<message><body>" + b"x" * 2000 + b"</body></message>")
    assert caught.value.condition == "policy-violation"


def test_violationCarriesCondition():
    """Each violation is a L{StreamViolation} with the condition to send."""
    parser = RestrictedElementStream(1000, maxDepth=3)
    parser.DocumentStartEvent = parser.ElementEvent = lambda element: None
    parser.parse(STREAM[:STREAM.index(b"<message")])
    with pytest.raises(StreamViolation) as caught:
        parser.parse(b"<a><b><c/></b></a>")
    assert caught.value.condition == "policy-violation"
