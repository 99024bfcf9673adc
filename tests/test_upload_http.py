"""
XEP-0363 uploads against the real server (C{twistd -n invitesrv --http …}):
slixmpp's upload plugin end to end, then raw HTTP for what the PUT and GET
URLs allow and refuse, a cut upload, twenty uploads at once, an account's
files going with it, and the invite pages on the same listener.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from conftest import RunningServer
from slix import Client, run
from slixmpp.jid import JID
from test_s2s import freePort
from test_web_e2e import registerOnTheWeb

HOST = "localhost"
PASSWORD = "a long password"
MAX = 64 * 1_048_576


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: HTTP on a known port (the public URL names it), three users."""
    port = freePort()
    running = RunningServer(tmp_path_factory.mktemp("upload"),
                            f"[modules.upload]\nmax_file_size = {MAX}\n",
                            ("--http", f"tcp:{port}:interface=127.0.0.1",
                             "--public-url", f"http://127.0.0.1:{port}"))
    running.start()
    running.httpPort = port
    for name in ("alice", "bob", "carol"):
        running.adduser(f"{name}@{HOST}", PASSWORD)
    yield running
    running.stop()


def uploads(server) -> list[str]:
    """The names in the host's upload directory."""
    return sorted(path.name for path in (server.dataDir / "uploads" / HOST).iterdir())


def slots(server, *requests, user: str = "alice") -> list[tuple[str, str]]:
    """(PUT URL, GET URL) for each (filename, size, content type), asked over XMPP by C{user}."""
    async def ask():
        client = Client(f"{user}@{HOST}", PASSWORD, plugins=("xep_0030", "xep_0363"))
        assert await client.login(server.port, presence=False)
        try:
            answers = []
            for filename, size, contentType in requests:
                iq = await client.plugin["xep_0363"].request_slot(
                    JID(f"share.{HOST}"), filename, size, contentType, timeout=10)
                slot = iq["http_upload_slot"]
                answers.append((slot["put"]["url"], slot["get"]["url"]))
            return answers
        finally:
            await client.logout()
    return run(ask())


def request(server, method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None):
    """One request to the HTTP listener; (status, headers, body)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", server.httpPort, timeout=30)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def put(server, url: str, data, contentType: str = "text/plain", **headers) -> int:
    """PUT C{data} (bytes or a file) to C{url}; the status."""
    return request(server, "PUT", url, data, {"Content-Type": contentType, **headers})[0]


def test_slixmppRoundTrip(server, tmp_path):
    """slixmpp finds share.localhost, learns the size limit, uploads; the GET URL gives the bytes."""
    photo = tmp_path / "holiday photo.jpg"
    photo.write_bytes(bytes(range(256)) * 400)

    async def scenario():
        client = Client(f"bob@{HOST}", PASSWORD, plugins=("xep_0030", "xep_0363"))
        assert await client.login(server.port, presence=False)
        try:
            url = await client.plugin["xep_0363"].upload_file(photo, domain=JID(HOST), timeout=10)
            assert client.plugin["xep_0363"].max_file_size == MAX
            return url
        finally:
            await client.logout()
    url = run(scenario())
    assert url.startswith(f"http://127.0.0.1:{server.httpPort}/share/")
    assert url.endswith("/holiday%20photo.jpg")
    status, headers, body = request(server, "GET", url)
    assert (status, body) == (200, photo.read_bytes())
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Disposition"] == "inline; filename*=UTF-8''holiday%20photo.jpg"


def test_putOnceThenGet(server):
    """A PUT stores the file once; a second PUT to the URL is refused; GET and HEAD serve it."""
    (putURL, getURL), = slots(server, ("notes.txt", 11, "text/plain"))
    assert request(server, "GET", getURL)[0] == 404  # not uploaded yet
    assert put(server, putURL, b"hello world") == 201
    assert put(server, putURL, b"HELLO WORLD") == 409
    status, headers, body = request(server, "GET", getURL)
    assert (status, body) == (200, b"hello world")
    assert headers["Cache-Control"].startswith("public, max-age=")
    assert headers["Access-Control-Allow-Origin"] == "*"
    status, headers, body = request(server, "HEAD", getURL)
    assert (status, headers["Content-Length"], body) == (200, "11", b"")
    assert "/share/[token]" in server.log() and urlsplit(getURL).path not in server.log()


def test_forgedURLs(server):
    """A PUT URL changed anywhere, or a GET URL with a wrong HMAC, gets nothing."""
    (putURL, getURL), = slots(server, ("a.txt", 5, "text/plain"))
    base, _, query = putURL.partition("?")
    expires, signature = (part.split("=", 1)[1] for part in query.split("&"))
    other = ("B" if signature[0] != "B" else "C") + signature[1:]
    forged = [f"{base}?expires={expires}&sig={other}",
              f"{base}?expires={int(expires) + 3600}&sig={signature}",
              f"{base}?expires={expires}"]
    for url in forged:
        assert put(server, url, b"12345") == 403, url
    segments = urlsplit(getURL).path.split("/")
    segments[3] = segments[3][:-1] + ("A" if segments[3][-1] != "A" else "B")
    wrongMAC = "/".join(segments)
    assert put(server, wrongMAC + f"?{query}", b"12345") == 404
    assert put(server, putURL, b"12345") == 201
    assert request(server, "GET", wrongMAC)[0] == 404
    assert request(server, "GET", "/share/nothing/here/at-all")[0] == 404


def test_sizeAndTypeBound(server):
    """The PUT must send the slot's size and type; a body over every limit is refused unread."""
    (putURL, getURL), (anyURL, anyGetURL) = slots(server, ("b.txt", 10, "text/plain"),
                                                  ("c.bin", 10, "application/octet-stream"))
    assert put(server, putURL, b"x" * 11) == 413
    assert put(server, putURL, b"x" * 9) == 413
    assert put(server, putURL, b"x" * 10, "text/html") == 415
    assert put(server, putURL, b"x" * 10, "text/plain; charset=utf-8") == 201
    assert put(server, anyURL, b"<b>x</b>!!", "text/html") == 201  # a slot without a type
    assert request(server, "GET", anyGetURL)[1]["Content-Type"] == "application/octet-stream"
    with socket.create_connection(("127.0.0.1", server.httpPort), timeout=30) as raw:
        raw.sendall(f"PUT {urlsplit(putURL).path} HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Length: {MAX + 1}\r\n\r\n".encode())
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 "), answer


def rss(pid: int) -> int:
    """The resident set size of process C{pid}, in bytes."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_bodyStreamedToDisk(server, tmp_path):
    """A 60 MB upload is never held in memory: the server grows by less than 20 MB."""
    size = 60 * 1_048_576
    (putURL, getURL), = slots(server, ("big.bin", size, "application/octet-stream"))
    before = rss(server.process.pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(server.process.pid))
            time.sleep(0.01)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(tmp_path / "zeros", "wb+") as body:
            body.truncate(size)
            body.seek(0)
            code = put(server, putURL, body, "application/octet-stream",
                       **{"Content-Length": str(size)})
    finally:
        done.set()
        sampler.join()
    assert code == 201
    assert peak[0] - before < 20 * 1_048_576, (before, peak[0])
    stored = server.dataDir / "uploads" / HOST / urlsplit(getURL).path.split("/")[2]
    assert stored.stat().st_size == size


def test_htmlServedInert(server):
    """An uploaded HTML page is served as a download that cannot run on the server's origin."""
    page = b"<html><script>document.cookie</script></html>"
    (putURL, getURL), = slots(server, ("page.html", len(page), "text/html"))
    assert put(server, putURL, page, "text/html") == 201
    status, headers, body = request(server, "GET", getURL)
    assert (status, body) == (200, page)
    assert headers["Content-Type"] == "text/html"
    assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''page.html"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = [p.strip() for p in headers["Content-Security-Policy"].split(";")]
    assert "sandbox" in policy and "default-src 'none'" in policy
    assert not any("script" in p for p in policy)


def test_rangesAndETag(server):
    """Range gives part of the file (206, 416 past the end); If-None-Match a 304."""
    data = bytes(range(100))
    (putURL, getURL), = slots(server, ("r.bin", 100, "application/octet-stream"))
    assert put(server, putURL, data, "application/octet-stream") == 201
    status, headers, body = request(server, "GET", getURL, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/100")
    status, headers, body = request(server, "GET", getURL, headers={"Range": "bytes=90-"})
    assert (status, body) == (206, data[90:])
    assert request(server, "GET", getURL, headers={"Range": "bytes=200-"})[0] == 416
    etag = request(server, "GET", getURL)[1]["ETag"]
    assert request(server, "GET", getURL, headers={"If-None-Match": etag})[0] == 304


def test_cutUploadLeavesNothing(server):
    """A PUT whose connection dies leaves no file; the slot can be used again."""
    (putURL, getURL), = slots(server, ("cut.bin", 100_000, "application/octet-stream"))
    before = uploads(server)
    parts = urlsplit(putURL)
    with socket.create_connection(("127.0.0.1", server.httpPort), timeout=30) as raw:
        raw.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
                    .encode() + b"x" * 50_000)
        deadline = time.monotonic() + 10
        while uploads(server) == before and time.monotonic() < deadline:
            time.sleep(0.02)  # the partial file appears
        assert any(name.endswith(".part") for name in uploads(server))
    deadline = time.monotonic() + 10
    while uploads(server) != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uploads(server) == before
    assert put(server, putURL, b"y" * 100_000, "application/octet-stream") == 201
    assert request(server, "GET", getURL)[2] == b"y" * 100_000


def test_twentyAtOnce(server):
    """Twenty uploads at the same time all arrive whole, and no partial file is left."""
    files = [bytes([n]) * 65_536 for n in range(20)]
    urls = slots(server, *[(f"f{n}.bin", len(data), "application/octet-stream")
                           for n, data in enumerate(files)], user="carol")
    before = set(uploads(server))
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda pair: put(server, pair[0][0], pair[1],
                                               "application/octet-stream"),
                              zip(urls, files, strict=True)))
    assert codes == [201] * 20
    new = set(uploads(server)) - before
    assert len(new) == 20 and not any(name.endswith(".part") for name in uploads(server))
    for (_, getURL), data in zip(urls, files, strict=True):
        assert request(server, "GET", getURL)[2] == data


def test_accountDeletedWithItsFiles(server):
    """Deleting an account (invitesrvctl deluser, on the running server) deletes its files."""
    server.adduser(f"dave@{HOST}", PASSWORD)
    (putURL, getURL), = slots(server, ("d.txt", 4, "text/plain"), user="dave")
    assert put(server, putURL, b"dave") == 201
    assert request(server, "GET", getURL)[0] == 200
    server.ctl("deluser", f"dave@{HOST}")
    assert request(server, "GET", getURL)[0] == 404
    fileName = urlsplit(getURL).path.split("/")[2]
    assert fileName not in uploads(server)


def test_usageFromTheCommandLine(server):
    """invitesrvctl uploads: each account's files, bytes and unused slots."""
    server.adduser(f"frank@{HOST}", PASSWORD)
    (putURL, _), _ = slots(server, ("f.txt", 3, "text/plain"), ("g.txt", 4, "text/plain"),
                           user="frank")
    assert put(server, putURL, b"abc") == 201
    lines = server.ctl("uploads", HOST).stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "FILES", "BYTES", "PENDING", "SLOTS"]
    assert f"frank@{HOST}  1      3      1".split() in [line.split() for line in lines]
    assert "unknown host" in server.ctl("uploads", "nowhere.example", check=False).stderr


def test_invitePagesBesideUploads(server):
    """The landing page and the web registration form work on the listener that serves uploads."""
    link = next(line.split(" ", 1)[1].strip() for line in server.ctl(
        "invite", "create", HOST).stdout.splitlines() if line.startswith("Link:"))
    token = link.rsplit("/", 1)[1]
    status, _, page = request(server, "GET", f"/invite/{token}")
    assert status == 200 and b"register" in page
    server.ports["HTTP"] = server.httpPort
    done = registerOnTheWeb(server, f"/register/{token}", PASSWORD, "erin")
    assert done.code == 200 and f"erin@{HOST}".encode() in done.body
    assert slots(server, ("e.txt", 1, "text/plain"), user="erin")  # the new account uploads


