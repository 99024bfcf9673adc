"""
The restricted XML parser every client stream is read with.

RFC 6120 section 11.1 forbids comments, processing instructions, DTDs and
entity declarations in XMPP; accepting them invites entity-expansion and
parser-confusion attacks. This parser refuses them the moment expat reports
them, and it bounds what a peer can make the server hold: stanza size, element
depth and attribute count and length. Each violation raises L{StreamViolation}
carrying the stream error condition to send. It builds the same
L{domish.Element} trees as Twisted's own expat stream, so handlers are unaware
of it.
"""

from __future__ import annotations

import pyexpat
from xml.sax.saxutils import quoteattr

from twisted.words.xish import domish

_STREAM_HEADER = "http://etherx.jabber.org/streams stream"


class StreamViolation(Exception):
    """The peer broke a rule of the stream; C{condition} is the stream error."""

    def __init__(self, condition: str, text: str):
        Exception.__init__(self, text)
        self.condition = condition
        self.text = text


def _refuser(what: str):
    """A handler for an XML construct XMPP forbids (RFC 6120 section 11.1)."""
    def refuse(*args):
        raise StreamViolation("restricted-xml", f"XMPP does not allow {what}")
    return refuse


_REFUSE_DOCTYPE = _refuser("a DOCTYPE")
_REFUSE_ENTITY = _refuser("an entity declaration")
_REFUSE_COMMENT = _refuser("a comment")
_REFUSE_PI = _refuser("a processing instruction")


def _standIn(name: str, declarations: tuple) -> bytes | None:
    """
    An opening tag equivalent to a stream header (element C{name}, as expat
    gives it, and the namespace C{declarations} it made), for a new parser
    to go on from; None when the header's own prefix cannot be told.
    """
    uri, _, local = name.rpartition(" ")
    prefixes = [prefix for prefix, declared in declarations if declared == uri]
    if not uri or len(prefixes) != 1:
        return None
    qualified = local if prefixes[0] is None else f"{prefixes[0]}:{local}"
    attributes = "".join(f" xmlns={quoteattr(declared)}" if prefix is None
                         else f" xmlns:{prefix}={quoteattr(declared)}"
                         for prefix, declared in declarations)
    return f"<{qualified}{attributes}>".encode()


# Stream headers are alike: the streams that rest share the stand-in's bytes.
_standIns: dict[tuple, bytes | None] = {}
_STAND_INS_KEPT = 16


def speaksXMPP1(root) -> bool:
    """Does a stream header announce version 1.0 or later (RFC 6120 section 4.7.5)?"""
    try:
        major, minor = (int(part) for part in root.getAttribute("version", "0.0").split("."))
    except ValueError:
        return False
    return (major, minor) >= (1, 0)


class RestrictedElementStream:
    """
    Incremental parser for one XML stream, emitting each top-level stanza.

    @ivar DocumentStartEvent: called with the root element (the stream header).
    @ivar ElementEvent: called with each complete stanza.
    @ivar DocumentEndEvent: called when the root element closes.

    Between stanzas, an idle stream's parser may L{rest}: expat's state (about
    15 KB once it has parsed a few stanzas) is freed, and the next bytes go to
    a new parser that is first given a stand-in for the stream header with
    the same namespace declarations, so that the stanzas and the closing tag
    read as before. Connections spend most of their life idle.
    """

    __slots__ = ("maxStanzaSize", "maxDepth", "maxAttributes", "maxAttributeLength",
                 "DocumentStartEvent", "ElementEvent", "DocumentEndEvent", "_parser", "_current",
                 "_depth", "_defaultNs", "_localPrefixes", "_fed", "_boundary", "_stanzaStart",
                 "_between", "_declarations", "_header", "_waking", "__weakref__")

    def __init__(self, maxStanzaSize: int, maxDepth: int = 100, maxAttributes: int = 64,
                 maxAttributeLength: int = 8192):
        self.maxStanzaSize = maxStanzaSize
        self.maxDepth = maxDepth
        self.maxAttributes = maxAttributes
        self.maxAttributeLength = maxAttributeLength
        self.DocumentStartEvent = None
        self.ElementEvent = None
        self.DocumentEndEvent = None
        self._parser = self._newParser()
        self._current: domish.Element | None = None
        self._depth = 0
        self._defaultNs = [""]
        self._localPrefixes: dict[str, str] = {}
        self._fed = 0  # bytes given to the parser
        self._boundary = 0  # byte offset where the current stanza may begin
        self._stanzaStart = 0
        self._between = 0  # bytes of text (keepalives) since the last stanza ended
        self._declarations: list | None = []  # the header's namespace declarations, while read
        self._header: bytes | None = None  # the stand-in for the header, once read
        self._waking = False  # the stand-in is being parsed

    def _newParser(self):
        # No buffer_text: its 8 KB buffer per connection costs more than the
        # rare split of a text node into two addContent calls.
        parser = pyexpat.ParserCreate("UTF-8", " ")
        parser.StartElementHandler = self._onStartElement
        parser.EndElementHandler = self._onEndElement
        parser.CharacterDataHandler = self._onCdata
        parser.StartNamespaceDeclHandler = self._onStartNamespace
        parser.EndNamespaceDeclHandler = self._onEndNamespace
        # Shared refusers: four closures per parser were 800 bytes a connection.
        parser.StartDoctypeDeclHandler = _REFUSE_DOCTYPE
        parser.EntityDeclHandler = _REFUSE_ENTITY
        parser.CommentHandler = _REFUSE_COMMENT
        parser.ProcessingInstructionHandler = _REFUSE_PI
        parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        return parser

    def close(self) -> None:
        """
        Parse no more (the stream restarted with a new parser, or the
        connection is gone). The expat parser's handlers are what refers
        back to this object: without them it is freed at once, with the
        ~10 KB it holds once it has parsed a header, rather than by a later
        garbage collection. Bytes still in a parse under way are ignored.
        """
        parser = self._parser
        if parser is None:
            return
        parser.StartElementHandler = parser.EndElementHandler = None
        parser.CharacterDataHandler = None
        parser.StartNamespaceDeclHandler = parser.EndNamespaceDeclHandler = None

    @property
    def resting(self) -> bool:
        """Has the parser been let go (L{rest}) until more bytes come?"""
        return self._parser is None

    def rest(self) -> bool:
        """
        Free the parser if the stream is between stanzas with every byte
        given to it read (not in the middle of a tag or a character); the
        next L{parse} starts a new one. Return whether it rests.
        """
        parser = self._parser
        if (parser is None or self._header is None or self._depth != 1
                or parser.CurrentByteIndex != self._fed):
            return parser is None
        self.close()
        self._parser = None
        return True

    def _wake(self) -> None:
        """A new parser, in the state the old one was in after the stream header."""
        self._parser = self._newParser()
        self._depth = 0
        self._defaultNs = [""]
        self._waking = True
        header = self._header
        self._parser.Parse(header)
        self._waking = False
        self._fed = self._boundary = len(header)
        self._between = 0

    def parse(self, data: bytes) -> None:
        """Feed bytes; raise L{StreamViolation} on any error."""
        if self._parser is None:
            self._wake()
        self._fed += len(data)
        try:
            self._parser.Parse(data)
        except pyexpat.ExpatError as e:
            raise StreamViolation("not-well-formed", str(e)) from None
        if self._fed - self._boundary - self._between > self.maxStanzaSize and self._depth > 0:
            raise StreamViolation("policy-violation",
                                  f"Stanza larger than {self.maxStanzaSize} bytes")

    def _onStartNamespace(self, prefix, uri):
        if self._declarations is not None and self._depth == 0:
            self._declarations.append((prefix, uri))
        if prefix is None:
            self._defaultNs.append(uri)
        else:
            self._localPrefixes[prefix] = uri

    def _onEndNamespace(self, prefix):
        if prefix is None:
            self._defaultNs.pop()

    def _onStartElement(self, name, attrs):
        depth = self._depth = self._depth + 1
        if depth > self.maxDepth:
            raise StreamViolation("policy-violation", f"Elements nested deeper than {self.maxDepth}")
        if len(attrs) > self.maxAttributes:
            raise StreamViolation("policy-violation", f"More than {self.maxAttributes} attributes")
        for key in list(attrs):
            value = attrs[key]
            if len(value) > self.maxAttributeLength:
                raise StreamViolation("policy-violation", "Attribute value too long")
            if " " in key:
                del attrs[key]
                attrs[tuple(key.rsplit(" ", 1))] = value
        uri, _, local = name.rpartition(" ")
        element = domish.Element((uri, local), self._defaultNs[-1], attrs, self._localPrefixes)
        self._localPrefixes = {}
        if depth == 1:
            if self._waking:
                return
            key = (name, tuple(self._declarations))
            header = _standIns.get(key, False)
            if header is False:
                header = _standIn(*key)
                if len(_standIns) < _STAND_INS_KEPT:  # a peer's odd headers are not kept
                    _standIns[key] = header
            self._header = header
            self._declarations = None
            self.DocumentStartEvent(element)
            self._boundary = self._parser.CurrentByteIndex
            return
        if depth == 2:
            if name == _STREAM_HEADER:
                raise StreamViolation("unsupported-stanza-type", "A stream header inside an open stream")
            self._stanzaStart = self._parser.CurrentByteIndex
        elif self._parser.CurrentByteIndex - self._stanzaStart > self.maxStanzaSize:
            raise StreamViolation("policy-violation", f"Stanza larger than {self.maxStanzaSize} bytes")
        else:
            element.parent = self._current
            self._current.children.append(element)
        self._current = element

    def _onEndElement(self, name):
        depth = self._depth
        self._depth = depth - 1
        if depth == 1:
            self.DocumentEndEvent()
            return
        element = self._current
        if depth == 2:
            index = self._parser.CurrentByteIndex
            if index - self._stanzaStart > self.maxStanzaSize:
                raise StreamViolation("policy-violation", f"Stanza larger than {self.maxStanzaSize} bytes")
            self._boundary = index
            self._between = 0
            self._current = None
            self.ElementEvent(element)
        else:
            self._current = element.parent

    def _onCdata(self, data):
        if self._current is not None:
            self._current.addContent(data)
        else:
            # Whitespace keepalives between stanzas are no stanza's bytes.
            self._between += len(data.encode("utf-8"))
