"""
XEP-0363 HTTP File Upload (L{invitesrv.modules.upload}, L{invitesrv.web.share}).

In memory on a L{task.Clock}: the component in the host's disco, slot
requests and their errors, expiry and account deletion. Over real sockets
against a running server: slixmpp's upload plugin, and raw HTTP for what
a client must not be able to do (a forged, reused or wrong-sized PUT), an
HTML file served inert, Range and ETag, a cut upload and twenty at once.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from streamharness import Client, addAccounts
from synchronous import result
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.words.xish import domish

from invitesrv.modules.upload import NS_UPLOAD, UploadFailed
from invitesrv.web.site import makeSite

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
PUBLIC = "https://chat.example"
WEEK = 7 * 86400


def uploadServer(servers, tmp_path, **config):
    """An in-memory server for localhost with the upload module (and what it needs to log in)."""
    config.setdefault("modules", ("roster", "presence", "disco", "upload"))
    return servers(data_dir=tmp_path / "data", public_url=PUBLIC, **config)


def slotRequest(client, filename="cat.jpg", size=1000, contentType="image/jpeg",
                to="share.localhost"):
    """Ask for a slot; return the reply."""
    typeAttribute = f" content-type='{contentType}'" if contentType else ""
    return client.request(f"<request xmlns='{NS_UPLOAD}' filename='{filename}' size='{size}'"
                          f"{typeAttribute}/>", to=to)


def slotURLs(reply) -> tuple[str, str]:
    """The (PUT, GET) URLs of a successful slot reply."""
    assert reply["type"] == "result", reply.toXml()
    return str(reply.slot.put["url"]), str(reply.slot.get["url"])


def errorOf(reply) -> tuple[str, str, str]:
    """(type, condition, text) of an error reply."""
    assert reply["type"] == "error", reply.toXml()
    element = reply.error
    condition = next(c.name for c in element.elements() if c.name != "text"
                     and c.uri == "urn:ietf:params:xml:ns:xmpp-stanzas")
    text = next((str(c) for c in element.elements() if c.name == "text"), "")
    return element["type"], condition, text


def uploadIn(server, client, data: bytes, **kwargs):
    """Take a slot and store C{data} as its PUT would (through the module's own file)."""
    put, get = slotURLs(slotRequest(client, size=len(data), **kwargs))
    module = server.hosts["localhost"].modules["upload"]
    store = server.store
    upload = result(store.getUpload(urlsplit(get).path.split("/")[2]))
    assert result(store.beginUpload(upload.id, module.host.now()))
    partial = module.receive(upload)
    partial.write(data)
    result(module.complete(partial))
    return module, upload


# -- in memory ------------------------------------------------------------------


def test_discovery(servers, tmp_path):
    """share.HOST is in the host's items, a store/file service with its size limit."""
    server = uploadServer(servers, tmp_path)
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    items = alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", to="localhost")
    assert [(i["jid"], i.getAttribute("name")) for i in items.query.elements()] == [
        ("share.localhost", "File sharing")]
    info = alice.request(f"<query xmlns='{DISCO_INFO}'/>", to="share.localhost")
    identities = [(i["category"], i["type"]) for i in info.query.elements(DISCO_INFO, "identity")]
    assert identities == [("store", "file")]
    assert NS_UPLOAD in [f["var"] for f in info.query.elements(DISCO_INFO, "feature")]
    form = next(info.query.elements("jabber:x:data", "x"))
    fields = {f["var"]: str(f.value) for f in form.elements("jabber:x:data", "field")}
    assert fields == {"FORM_TYPE": NS_UPLOAD, "max-file-size": str(100 * 1024 * 1024)}


def test_slot(servers, tmp_path):
    """A slot's URLs are under the public URL, unguessable, and the PUT one is signed."""
    server = uploadServer(servers, tmp_path)
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    put, get = slotURLs(slotRequest(alice, filename="my cat.jpg"))
    match = re.fullmatch(rf"{PUBLIC}/share/([\w-]{{16}})/([\w-]{{43}})/my%20cat\.jpg", get)
    assert match, get
    assert re.fullmatch(re.escape(get) + r"\?expires=\d+&sig=[\w-]{43}", put), put
    upload = result(server.store.getUpload(match.group(1)))
    assert (upload.username, upload.filename, upload.size, upload.contentType, upload.state) == (
        "alice", "my cat.jpg", 1000, "image/jpeg", "slot")
    other = slotURLs(slotRequest(alice, filename="my cat.jpg"))
    assert other[1] != get


def test_slotErrors(servers, tmp_path):
    """Too large (with the limit), quotas, bad names and sizes: the XEP's errors."""
    server = uploadServer(servers, tmp_path, module_options={"upload": {
        "max_file_size": 1000, "quota": 2500, "daily_quota": 2000}})
    addAccounts(server, "alice", "bob")
    alice = Client(server, "alice")
    reply = slotRequest(alice, size=1001)
    assert errorOf(reply)[:2] == ("modify", "not-acceptable")
    tooLarge = next(reply.error.elements(NS_UPLOAD, "file-too-large"))
    assert str(next(tooLarge.elements(NS_UPLOAD, "max-file-size"))) == "1000"
    slotURLs(slotRequest(alice, size=1000))
    slotURLs(slotRequest(alice, size=1000))
    assert errorOf(slotRequest(alice, size=1)) == ("wait", "resource-constraint",
                                                   "Upload daily limit of 2000 bytes reached")
    for name in ("a/b", "..", "tab&#9;", "x" * 256):
        assert errorOf(slotRequest(alice, filename=name))[1] == "bad-request", name
    for size in ("0", "-1", "ten"):
        assert errorOf(slotRequest(alice, size=size))[1] == "bad-request", size
    assert errorOf(slotRequest(alice, contentType="text/html; charset=utf-8"))[1] == "bad-request"
    bob = Client(server, "bob")
    slotURLs(slotRequest(bob, size=1000, contentType=""))  # others are not affected


def test_quota(servers, tmp_path):
    """The quota counts what an account keeps; a file that expires gives its bytes back."""
    server = uploadServer(servers, tmp_path, module_options={"upload": {
        "max_file_size": 1000, "quota": 1500, "daily_quota": 0}})
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    uploadIn(server, alice, b"x" * 1000)
    assert errorOf(slotRequest(alice, size=501)) == ("wait", "resource-constraint",
                                                     "Upload quota of 1500 bytes reached")
    slotURLs(slotRequest(alice, size=500))
    server.clock.advance(WEEK + 3600)
    slotURLs(slotRequest(alice, size=1000))


def test_notLocal(servers, tmp_path):
    """A user of another server gets not-allowed: uploads are for the host's own accounts."""
    server = uploadServer(servers, tmp_path)
    sent = []

    class Remote:
        """The default route (federation), recording what goes out."""

        def route(self, stanza, target):
            sent.append(stanza)

    server.router.remote = Remote()
    request = domish.Element((None, "iq"))
    request["type"], request["id"] = "get", "s1"
    request["from"], request["to"] = "eve@remote.example/x", "share.localhost"
    slot = request.addElement((NS_UPLOAD, "request"))
    slot["filename"], slot["size"] = "a.txt", "10"
    server.router.route(request)
    assert [errorOf(reply) for reply in sent] == [
        ("cancel", "not-allowed", "Only accounts of localhost may upload here")]


def test_expiry(servers, tmp_path):
    """A file goes a week after its upload, an unused slot once its URL has expired."""
    server = uploadServer(servers, tmp_path)
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    module, upload = uploadIn(server, alice, b"hello")
    assert module.path(upload.id).read_bytes() == b"hello"
    unused = urlsplit(slotURLs(slotRequest(alice))[1]).path.split("/")[2]
    server.clock.advance(3600)
    assert result(server.store.getUpload(unused)) is None
    assert module.path(upload.id).exists()
    server.clock.advance(WEEK - 3600)
    assert not module.path(upload.id).exists()
    assert result(server.store.getUpload(upload.id)) is None
    assert list(module.directory.iterdir()) == []


def test_sweepInBatches(servers, tmp_path):
    """A sweep deletes everything expired, a batch at a time."""
    server = uploadServer(servers, tmp_path, module_options={"upload": {"sweep_batch": 2}})
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    module = server.hosts["localhost"].modules["upload"]
    for number in range(5):
        uploadIn(server, alice, b"%d" % number)
    calls = []
    expired = server.store.expiredUploads
    server.store.expiredUploads = lambda *args: calls.append(args) or expired(*args)
    server.clock.advance(WEEK + 3600)
    assert list(module.directory.iterdir()) == []
    assert [limit for _, _, limit in calls] == [2, 2, 2]


def test_accountDeletion(servers, tmp_path):
    """Deleting an account deletes its files; with delete_with_account off they stay."""
    for keep in (False, True):
        data = tmp_path / f"keep-{keep}"
        server = uploadServer(servers, data, module_options={"upload": {
            "delete_with_account": not keep}})
        addAccounts(server, "alice", "bob")
        alice, bob = Client(server, "alice"), Client(server, "bob")
        module, mine = uploadIn(server, alice, b"alice's")
        _, theirs = uploadIn(server, bob, b"bob's")
        assert result(server.hosts["localhost"].registrar.deleteAccount("alice"))
        assert module.path(mine.id).exists() is keep
        assert (result(server.store.getUpload(mine.id)) is not None) is keep
        assert module.path(theirs.id).read_bytes() == b"bob's"


def test_partialFile(servers, tmp_path):
    """A body short of, or over, the slot's size never becomes the file; the slot is given back."""
    server = uploadServer(servers, tmp_path)
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    module = server.hosts["localhost"].modules["upload"]
    put, get = slotURLs(slotRequest(alice, size=10))
    upload = result(server.store.getUpload(urlsplit(get).path.split("/")[2]))
    for data, why in ((b"short", "5 bytes, not 10"), (b"much too long", "more bytes than the slot's size")):
        assert result(server.store.beginUpload(upload.id, module.host.now()))
        partial = module.receive(upload)
        partial.write(data)
        failed = module.complete(partial)
        failed.addErrback(lambda failure: failure.trap(UploadFailed) and str(failure.value))
        assert result(failed) == why
        assert list(module.directory.iterdir()) == []
        assert result(server.store.getUpload(upload.id)).state == "slot"
    assert result(server.store.beginUpload(upload.id, module.host.now()))
    partial = module.receive(upload)
    partial.write(b"0123")
    partial.close()  # the connection was lost
    assert list(module.directory.iterdir()) == []
    assert result(server.store.getUpload(upload.id)).state == "slot"


def test_noPublicURL(servers, tmp_path):
    """Without a public URL no file could be reached: no component is served or listed."""
    server = servers(data_dir=tmp_path / "data", modules=("roster", "presence", "disco", "upload"))
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    items = alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", to="localhost")
    assert list(items.query.elements()) == []
    assert errorOf(slotRequest(alice))[1] == "remote-server-not-found"  # not served here



# -- the HTTP channel, byte by byte ---------------------------------------------------


def putConnection(server, putURL: str, length: int):
    """A connection to the server's site that has sent a PUT's head for C{putURL}: (channel, transport)."""
    site = makeSite(server)
    peer = IPv4Address("TCP", "192.0.2.1", 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 80), peer)
    channel.makeConnection(transport)
    parts = urlsplit(putURL)
    channel.dataReceived(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: chat.example\r\n"
                         f"Content-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n".encode())
    return channel, transport


def lose(channel) -> None:
    """The client's connection ends."""
    channel.connectionLost(failure.Failure(error.ConnectionDone()))


def test_uploadDeadlineGrowsWithTheSize(servers, tmp_path):
    """
    A PUT's body gets http_body_timeout (30 s) plus a second per
    http_upload_min_rate bytes (16 KiB): 1 600 KiB may take 130 s, no more;
    one cut at its deadline leaves no file and its slot can be used again.
    """
    server = uploadServer(servers, tmp_path)
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    size = 100 * 16_384
    putURL, getURL = slotURLs(slotRequest(alice, size=size))
    module = server.hosts["localhost"].modules["upload"]
    channel, transport = putConnection(server, putURL, size)
    for _ in range(12):
        server.clock.advance(10)
        channel.dataReceived(b"x" * 16_384)
    assert not transport.disconnecting
    assert [p.name.endswith(".part") for p in module.directory.iterdir()] == [True]
    server.clock.advance(10)
    assert transport.disconnecting and transport.value().startswith(b"HTTP/1.1 408 ")
    lose(channel)
    assert list(module.directory.iterdir()) == []
    uploadId = urlsplit(getURL).path.split("/")[2]
    assert result(server.store.getUpload(uploadId)).state == "slot"
    channel, transport = putConnection(server, putURL, size)
    channel.dataReceived(b"y" * size)
    assert transport.value().startswith(b"HTTP/1.1 201 ")
    assert module.path(uploadId).read_bytes() == b"y" * size


def test_lostWhileTheSlotIsTaken(servers, tmp_path):
    """A connection lost while the store takes the slot leaves no file, and the slot free."""
    server = uploadServer(servers, tmp_path)
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    putURL, getURL = slotURLs(slotRequest(alice, size=10))
    module = server.hosts["localhost"].modules["upload"]
    taking = defer.Deferred()
    begin = server.store.beginUpload
    server.store.beginUpload = lambda *args: taking.addCallback(lambda _: begin(*args))
    channel, transport = putConnection(server, putURL, 10)
    lose(channel)
    taking.callback(None)
    assert list(module.directory.iterdir()) == []
    assert result(server.store.getUpload(urlsplit(getURL).path.split("/")[2])).state == "slot"


def test_expiredFileNotServed(servers, tmp_path):
    """A file past its expiry is not served, even before a sweep deletes it."""
    server = uploadServer(servers, tmp_path, module_options={"upload": {"sweep_interval": 0}})
    addAccounts(server, "alice")
    alice = Client(server, "alice")
    module, upload = uploadIn(server, alice, b"soon gone")
    get = module.getURL(upload)
    site = makeSite(server)

    def fetch() -> bytes:
        """The answer to a HEAD of the GET URL (a GET's body would come from a pull producer)."""
        peer = IPv4Address("TCP", "192.0.2.1", 40000)
        channel = site.buildProtocol(peer)
        transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 80), peer)
        channel.makeConnection(transport)
        channel.dataReceived(f"HEAD {urlsplit(get).path} HTTP/1.1\r\nHost: chat.example\r\n\r\n"
                             .encode())
        lose(channel)
        return transport.value()

    answer = fetch()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 9\r\n" in answer
    assert f"max-age={WEEK}, immutable".encode() in answer
    server.clock.advance(WEEK)
    assert fetch().startswith(b"HTTP/1.1 404 ")
    assert module.path(upload.id).exists()  # no sweep ran
