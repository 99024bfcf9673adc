"""
The HTTP listener of the real server (C{twistd -n invitesrv}) under the
attacks of an outside audit: hundreds of connections that drip a header line
now and then, from several addresses, against a process with few file
descriptors, while a client logs in over XMPP; and 500 MB request bodies
sent to the admin API without a key, with the server's memory and temporary
directory watched.
"""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import ssl
import time
from pathlib import Path

import pytest
from conftest import RunningServer
from rawxmpp import RawClient, readFor

PASSWORD = "a long password"
FILES = 256  # the server's open-files limit in the flood test: fewer than the flood
FLOOD_CONFIG = """http = ["tcp:0:interface=127.0.0.1"]
https = ["tcp:0:interface=127.0.0.1"]
[limits]
allowlist = []
http_max_connections = 40
http_max_connections_per_address = 15
http_connection_rate = 0
http_header_timeout = "3s"
"""


def fewFiles() -> None:
    """In the server's process, before it starts: a low open-files limit, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


def httpsPort(server: RunningServer) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"HTTPS listening on [\d.]+:(\d+)", server.log())
        if match:
            return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError("no HTTPS listener")


def tlsHandshake(port: int, source: str = "127.0.0.1") -> bool:
    """Does a TLS handshake with the HTTPS listener succeed?"""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=(source, 0)) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return tls.recv(12).startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False


def get(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                     .encode())
        return sock.recv(12)


def test_httpFloodLeavesXMPPLogins(tmp_path):
    """
    300 connections from three addresses, each dripping a header line every
    half second, against a server that may open only 256 files: the HTTP
    caps (15 per address, 40 in all) admit 40 and refuse the rest at once
    (429 or 503), and the deadline cuts the admitted ones at 3 s (408)
    however they drip. Meanwhile a client logs in over XMPP, and HTTPS
    refuses connections too (the same pool). The log has one line for the
    refusals and one for the slow requests, not one per connection, and no
    "Too many open files". Afterwards HTTP and HTTPS answer again.
    """
    server = RunningServer(tmp_path, FLOOD_CONFIG, preexec=fewFiles)
    server.start()
    try:
        server.adduser("alice@localhost", PASSWORD)
        tlsPort = httpsPort(server)
        target = ("127.0.0.1", server.ports["HTTP"])
        socks = []
        for n in range(300):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + n % 3}", 0))
            sock.setblocking(False)
            sock.connect_ex(target)
            socks.append(sock)
        started = time.monotonic()
        received = {sock: b"" for sock in socks}
        lines = {sock: 0 for sock in socks}
        closedAt: dict[socket.socket, float] = {}
        login = httpsDuringFlood = None
        while len(closedAt) < len(socks) and time.monotonic() - started < 15:
            for sock in socks:
                if sock in closedAt:
                    continue
                line = b"GET / HTTP/1.1\r\n" if not lines[sock] else b"X-Drip: %d\r\n" % lines[sock]
                try:
                    sock.send(line)
                    lines[sock] += 1
                except BlockingIOError:
                    pass  # not connected yet
                except OSError:
                    closedAt[sock] = time.monotonic() - started
            readFor(0.5, received, closedAt, started)
            if login is None and time.monotonic() - started > 1.5:
                with RawClient(server.port) as client:
                    login = client.login("alice", PASSWORD, "flood")
                httpsDuringFlood = tlsHandshake(tlsPort, "127.0.0.5")
        for sock in socks:
            sock.close()
        assert login == "alice@localhost/flood"
        assert httpsDuringFlood is False, "the HTTPS listener shares the full pool"
        assert len(closedAt) == 300, f"{300 - len(closedAt)} dripping connections still open"
        refused = [s for s in socks if re.match(rb"HTTP/1.1 (429|503) ", received[s])]
        cut = [s for s in socks if received[s].startswith(b"HTTP/1.1 408 ")]
        assert 0 < len(cut) <= 40 and len(refused) >= 250, (len(cut), len(refused))
        assert all(2.5 < closedAt[s] < 9 for s in cut), sorted(closedAt[s] for s in cut)
        assert all(lines[s] >= 5 for s in cut), "they dripped until the deadline"
        log = server.log()
        assert log.count("Refusing HTTP connections:") == 1, log
        assert log.count("Closing HTTP connections too slow") == 1
        assert "Too many open files" not in log and "EMFILE" not in log
        assert get(server.ports["HTTP"]) == b"HTTP/1.1 200"
        assert tlsHandshake(tlsPort)
    finally:
        server.stop()


# -- bodies ------------------------------------------------------------------

BODY = 500 * 1024 * 1024
BLOCK = 64 * 1024


def vm(pid: int, field: str) -> int:
    """A memory figure of a process from /proc (VmRSS, VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1)) * 1024


def filesIn(pid: int, directory: Path) -> list[str]:
    """The files (deleted or not) the process has open in C{directory}."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def blocks(chunked: bool):
    """500 MB of a URL-encoded form, made as it is sent; chunk-framed if C{chunked}."""
    block = b"a=" + b"x" * (BLOCK - 3) + b"&"
    for _ in range(BODY // BLOCK):
        yield b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
    if chunked:
        yield b"0\r\n\r\n"


def post(server: RunningServer, path: str, headers: dict[str, str], body) -> tuple[bytes, int]:
    """
    Send a request whose body comes from the iterable C{body}, reading any
    answer between blocks: (the answer, body bytes the server let us send).
    Temporary files the server opens meanwhile fail the test at once.
    """
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    answer, sent = b"", 0
    with socket.create_connection(("127.0.0.1", server.ports["HTTP"]), timeout=10) as sock:
        sock.sendall(head.encode())
        for n, block in enumerate(body):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(block)
            except OSError:
                break
            sent += len(block)
            if n % 256 == 0:
                assert filesIn(server.process.pid, server.tmp) == []
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, sent


@pytest.fixture
def bodyServer(tmp_path):
    """A server whose TMPDIR is a directory of the test's, with an API key."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = RunningServer(tmp_path, 'http = ["tcp:0:interface=127.0.0.1"]\n',
                           env={**os.environ, "TMPDIR": str(tmp)})
    server.tmp = tmp
    server.start()
    server.key = server.ctl("apikey", "create", "localhost", "--name", "tests"
                            ).stdout.strip().splitlines()[-1]
    yield server
    server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_hugeBodyWithoutKey(bodyServer, chunked):
    """
    A 500 MB form POST to /api/v1/invites without a key (announced by its
    Content-Length, or chunked) is refused before it is read: 413 by its
    length, 401 or 413 when chunked; the server's peak memory grows by less
    than 20 MB, it never opens a temporary file, and it answers afterwards.
    """
    server = bodyServer
    pid = server.process.pid
    before = vm(pid, "VmHWM")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(BODY)
    answer, sent = post(server, "/api/v1/invites", headers, blocks(chunked))
    assert re.match(rb"HTTP/1.1 (401|413) ", answer), answer[:200]
    assert b"HTTP/1.1 413 " in answer if not chunked else True
    assert sent < BODY
    assert vm(pid, "VmHWM") - before < 20 * 1024 * 1024, (before, vm(pid, "VmHWM"))
    assert filesIn(pid, server.tmp) == [] and list(server.tmp.iterdir()) == []
    assert get(server.ports["HTTP"], "/api/v1/openapi.json") == b"HTTP/1.1 200"


def test_bodyOverTheCapWithAKey(bodyServer):
    """
    With a valid key, a Content-Length over the API's 64 KiB is answered 413
    right after the headers (nothing of the body sent); a chunked body is
    answered 413 once it passes the cap.
    """
    server = bodyServer
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    with socket.create_connection(("127.0.0.1", server.ports["HTTP"]), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/invites HTTP/1.1\r\nHost: localhost\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()).encode()
            + b"Content-Length: 10000000\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"too-large"' in answer
    answer, sent = post(server, "/api/v1/invites", {**headers, "Transfer-Encoding": "chunked"},
                        (b"%x\r\n%s\r\n" % (BLOCK, b" " * BLOCK) for _ in range(100)))
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"too-large"' in answer
    assert sent < 100 * BLOCK
