"""
The data directory holds SCRAM keys, API key hashes, invite hashes, the TLS
key and the server secret: the real server keeps it to its own user, for
what it creates (directory 0700, files 0600, the database's WAL and
shared-memory files and upgrade backups included) and for what an older
installation left open, which it fixes at start with a log line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conftest import RunningServer


def modes(directory: Path) -> dict[str, int]:
    """The permission bits of the directory ('.') and of everything in it, by relative path."""
    found = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        if not path.is_symlink():  # the control socket's lock: a link to the server's pid
            found[str(path.relative_to(directory))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assertPrivate(directory: Path) -> None:
    for name, mode in modes(directory).items():
        private = 0o700 if name == "." or (directory / name).is_dir() else 0o600
        assert mode & 0o077 == 0 and mode & private == mode, f"{name}: {oct(mode)}"


def test_createdPrivate(tmp_path):
    """
    A first start under the usual umask 022: directory 0700, and the
    database, its -wal and -shm, the secret and the generated key and
    certificate 0600; so is a database the command line creates first.
    """
    old = os.umask(0o022)
    try:
        for name in ("cli", "server"):
            (tmp_path / name).mkdir()
        cli = RunningServer(tmp_path / "cli")
        cli.adduser("first@localhost", "first password")
        assertPrivate(cli.dataDir)
        server = RunningServer(tmp_path / "server").start()
        try:
            server.adduser("una@localhost", "una password")
            names = set(modes(server.dataDir))
            assert {"invitesrv.sqlite3", "invitesrv.sqlite3-wal", "invitesrv.sqlite3-shm",
                    "server.secret", "tls/server.key", "tls/server.crt"} <= names, names
            assertPrivate(server.dataDir)
        finally:
            server.stop()
    finally:
        os.umask(old)


def test_openFilesFixedAtStart(tmp_path):
    """
    What an older installation left readable (directory 0755, database and
    an upgrade backup 0644, a world-writable key) is private after a start,
    and the log says which entries were changed.
    """
    server = RunningServer(tmp_path).start()
    server.adduser("una@localhost", "una password")
    server.stop()
    backup = server.dataDir / "invitesrv.sqlite3.v1.bak"
    backup.write_bytes(b"an old copy")
    server.dataDir.chmod(0o755)
    (server.dataDir / "tls").chmod(0o755)
    for name in ("invitesrv.sqlite3", "invitesrv.sqlite3.v1.bak", "server.secret"):
        (server.dataDir / name).chmod(0o644)
    (server.dataDir / "tls" / "server.key").chmod(0o666)
    server.start()
    try:
        assertPrivate(server.dataDir)
        line = next(line for line in server.log().splitlines() if "open to other users" in line)
        listed = set(line.rsplit("(", 1)[1].rstrip(")").split(", "))
        assert listed == {".", "tls", "invitesrv.sqlite3", "invitesrv.sqlite3.v1.bak",
                          "server.secret", "tls/server.key"}, line
        server.adduser("otto@localhost", "otto password")  # still works, now privately
    finally:
        server.stop()
    assertPrivate(server.dataDir)
