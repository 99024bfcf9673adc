"""
A private PostgreSQL for the tests and the benchmark: Debian's server
binaries, a cluster made with initdb in a temporary directory, listening
only on a Unix socket there. PostgreSQL refuses to run as root, so when the
tests do (CI in a container) the cluster belongs to, and runs as, the
C{postgres} user the Debian package creates (or C{nobody}).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from itertools import count
from pathlib import Path

USER = "invitesrv"  # the cluster's superuser, trusted on its socket only


def binaries() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def missing() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None when it can."""
    if binaries() is None:
        return "PostgreSQL is not installed (apt-get install -y postgresql)"
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgresql]')"
    return None


class PrivatePostgreSQL:
    """One PostgreSQL cluster of our own, started and stopped by its owner."""

    def __init__(self):
        self.directory: Path | None = None
        self._names = count(1)

    def _run(self, *command: str, cpus: str | None = None) -> None:
        """Run a PostgreSQL program as the cluster's owner (on CPUs C{cpus}, a taskset list)."""
        prefix = ["taskset", "-c", cpus] if cpus is not None else []
        if os.geteuid() == 0:
            owner = "postgres" if _userExists("postgres") else "nobody"
            prefix += ["runuser", "-u", owner, "--"]
        subprocess.run(prefix + list(command), check=True, capture_output=True, timeout=120)

    def start(self, cpus: str | None = None) -> PrivatePostgreSQL:
        """Make and start the cluster; its processes run on C{cpus} (a taskset list) if given."""
        bin_ = binaries()
        self.directory = Path(tempfile.mkdtemp(prefix="invitesrv-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres" if _userExists("postgres") else "nobody")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        data = self.directory / "data"
        self._run(str(bin_ / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        # No TCP listener, fsync off (a test cluster), room for many stores at once.
        self._run(str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(self.directory / "server.log"),
                  "-w", "-t", "60", "-o",
                  f"-k {self.directory} -c listen_addresses='' -F -c max_connections=200", "start",
                  cpus=cpus)
        return self

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.directory} dbname={database} user={USER}"

    def _admin(self, statement: str) -> None:
        import psycopg
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)

    def createDatabase(self, template: str = "template0") -> str:
        """A new, empty database (a copy of C{template}); its name."""
        name = f"test{next(self._names)}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        return name

    def dropDatabase(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.directory is None:
            return
        try:
            self._run(str(binaries() / "pg_ctl"), "-D", str(self.directory / "data"), "-m",
                      "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _userExists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
