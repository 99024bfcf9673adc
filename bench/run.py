#!/usr/bin/env python3
"""
One command to benchmark invitesrv (and, optionally, a private Prosody in the
same run): it starts the server with a temporary data directory and config,
creates the accounts the workloads need, runs each workload with the load
generator (C{bench/xmppload.py}), prints a table and writes JSON lines.

    python bench/run.py                         # default sizes, all scenarios
    python bench/run.py --quick                 # tiny sizes: a smoke test
    python bench/run.py --scenarios login,idle --against prosody
    python bench/run.py --quick --check         # CPU per operation against bench/reference.json
    python bench/run.py --scenarios login,messages --store sqlite,postgresql

The server is pinned to CPU 0 and the generator to CPU 1 when there are two
CPUs or more, so that the server's CPU time per operation, the steadiest
figure, is not blurred by the generator. Every loop is bounded by a count and
by time; only 127.0.0.1 is used; only the processes started here are stopped,
by their PID. See C{bench/README.md} for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATOR = HERE / "xmppload.py"
FASTLOAD = HERE / "fastload.py"  # reconnects with FAST + Bind2, on the same generator
UPLOAD_GENERATOR = HERE / "uploadload.py"
MUC_GENERATOR = HERE / "mucload.py"  # group chat workloads, on xmppload's code
PROVISION = HERE / "provision.py"
TLSFLOOR = HERE / "tlsfloor.py"  # a bare Twisted TLS responder: the floor under connectresumed
TWISTD = str(Path(sys.executable).with_name("twistd"))
PEP_GENERATOR = HERE / "pepload.py"  # the PEP workload, on top of xmppload
SCENARIOS = ("register", "invite", "login", "plain", "login1", "connect", "connectresumed",
             "tlsfloor", "fast",
             "fast1", "fastsm", "fastsm1", "reconnect", "reconnect1", "messages", "smmessages",
             "smarchive", "resume", "roster", "mam", "pep", "idle", "idle10k", "idlesm", "upload",
             "download", "bigupload", "mucmsg", "mucjoin")
DEFAULT_SCENARIOS = ("register", "login", "messages", "roster", "idle")
# The rows of the tables: the pep scenario measures two things.
TAGS = tuple(tag for scenario in SCENARIOS
             for tag in (("pep-publish", "pep-login") if scenario == "pep" else (scenario,)))
IDLE_SCENARIOS = ("idle", "idle10k", "idlesm")  # each run on a freshly started server
UPLOAD_SCENARIOS = ("upload", "download", "bigupload")  # XEP-0363, on the HTTP listener
# Not run on the reference servers: SASL2 + FAST (not in Prosody 0.12 or ejabberd 23.01), and
# direct TLS (no such listener in their configs).
OURS_ONLY = ("fast", "fast1", "fastsm", "fastsm1", "reconnect", "reconnect1", "connectresumed",
             "tlsfloor")
DOMAIN = "localhost"
POOL = "bp"  # accounts bp0, bp1, ... with password pw-bp<i>
LISTENING = re.compile(r"Clients listening on [\d.]+:(\d+)")
REFERENCE = HERE / "reference.json"
TOLERANCE = 1.5  # --check fails when a scenario costs more CPU per operation than this × the reference
SLACK = 0.1  # ms/op more, for a clock tick or two on the cheapest scenarios


class BenchError(Exception):
    """The benchmark cannot go on (a server does not start, a tool is missing)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; the defaults are those of the reference runs."""

    register_n: int = 2000
    register_c: int = 50
    invite_n: int = 500
    login_n: int = 2000
    login_c: int = 50
    plain_n: int = 1000
    login1_n: int = 300
    msg_pairs: int = 50
    msg_m: int = 200
    msg_w: int = 1
    roster_u: int = 100
    roster_r: int = 100
    roster_gets: int = 20
    roster_c: int = 50
    mam_archive: int = 10000
    mam_page: int = 50
    mam_queries: int = 200
    mam_c: int = 10
    pep_k: int = 100
    pep_publishes: int = 200
    pep_w: int = 10
    pep_logins: int = 100
    pep_c: int = 5
    resume_n: int = 200
    idle_k: int = 2000
    idle_c: int = 50
    idle10k_k: int = 10000
    muc_occupants: int = 50
    muc_senders: int = 5
    muc_m: int = 200
    muc_w: int = 1
    muc_joins: int = 200
    muc_join_c: int = 20
    muc_history: int = 20
    idle_settle: float = 3.0
    upload_n: int = 200
    upload_c: int = 10
    upload_size: int = 1_048_576
    big_size: int = 100 * 1_048_576
    idle_hold: float = 5.0
    pause: float = 3.0
    max_seconds: float = 240.0
    op_timeout: float = 30.0

    def pool(self, scenarios) -> int:
        """Accounts the non-register scenarios log in with."""
        return max(self.login_n, self.plain_n, self.login1_n, self.idle_k, 2 * self.msg_pairs,
                   self.roster_u + self.roster_r + 1, self.pep_k + 1,
                   self.muc_occupants, self.muc_joins + 1,
                   self.idle10k_k if "idle10k" in scenarios else 0)


# Small, but enough operations that each CPU figure spans many clock ticks:
# what the regression check (--quick --check) compares.
QUICK = Sizes(register_n=100, register_c=10, invite_n=10, login_n=200, login_c=10, plain_n=20,
              login1_n=5, msg_pairs=4, msg_m=100, roster_u=10, roster_r=20, roster_gets=20,
              roster_c=10, mam_archive=120, mam_page=20, mam_queries=5, mam_c=2,
              pep_k=5, pep_publishes=10, pep_logins=5, pep_c=2,
              idle_k=200, idle_c=20, idle10k_k=300, idle_settle=0.5, idle_hold=0.5,
              pause=0.2, max_seconds=60, op_timeout=10, resume_n=5, upload_n=10, upload_c=2,
              big_size=5 * 1_048_576, muc_occupants=5, muc_senders=2, muc_m=10, muc_joins=10,
              muc_join_c=5)


def cpuPlan() -> tuple[str | None, str | None]:
    """(server CPU, generator CPU) for taskset, or (None, None) when not pinning."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None, None
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return str(cpus[0]), str(cpus[1])


def machineInfo() -> dict:
    """What the figures were measured on, copied into every JSON line."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for package in ("invitesrv", "twisted", "pyOpenSSL", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:  # the server's TLS: pyOpenSSL over the OpenSSL that cryptography bundles
        from OpenSSL import SSL
        serverOpenSSL = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except ImportError:
        serverOpenSSL = None
    return {"cpu_model": model, "cpus": os.cpu_count(), "ram_gib": round(memory / 2**30, 1),
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
            "server_openssl": serverOpenSSL,
            "kernel": platform.release(), "versions": versions,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def writeCertificate(certPath: Path, keyPath: Path, keyType: str = "rsa") -> None:
    """
    A self-signed certificate: RSA-2048 by default, as the reference servers
    were measured with, or ECDSA P-256 (C{keyType="ec"}), what invitesrv
    generates for itself. The server signs once per TLS handshake, so the key
    type shows in the cost of every login.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if keyType == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
        .sign(key, hashes.SHA256()))
    keyPath.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyPath.chmod(0o600)
    certPath.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def freePort() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Invitesrv:
    """invitesrv under C{twistd -n}, with its own data directory and config."""

    name = "invitesrv"

    def __init__(self, directory: Path, cpu: str | None, certificate: tuple[Path, Path],
                 dsn: str | None = None):
        """C{dsn}: a PostgreSQL database for the store (default: SQLite in the data dir)."""
        self.directory = directory
        self.cpu = cpu
        self.configPath = directory / "invitesrv.toml"
        self.logPath = directory / "server.log"
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.label = f"invitesrv-{importlib.metadata.version('invitesrv')}"
        self.certificate = certificate
        cert, key = certificate
        directory.mkdir(parents=True, exist_ok=True)
        self.httpPort = freePort()
        self.directPort = freePort()
        # Open registration for the register scenario; the generator's
        # passwords (pw-<user>) are short, hence the low minimum length.
        # Uploads (XEP-0363) on the HTTP listener, without quotas. No
        # per-occupant rate limit in group chats: Prosody's mod_muc has none.
        self.configPath.write_text(
            f'[server]\ndata_dir = "{directory / "data"}"\n'
            f'public_url = "http://127.0.0.1:{self.httpPort}"\n'
            '[listen]\nc2s = ["tcp:0:interface=127.0.0.1"]\n'
            f'c2s_direct_tls = ["tcp:{self.directPort}:interface=127.0.0.1"]\n'
            f'http = ["tcp:{self.httpPort}:interface=127.0.0.1"]\n'
            f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
            '[host_defaults]\nallow_registration = true\nregistration_invite_only = false\n'
            'password_min_length = 1\n'
            '[modules.upload]\nmax_file_size = 1073741824\nquota = 0\ndaily_quota = 0\n'
            '[modules.muc]\nmessage_rate = 0\n'
            + (f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n' if dsn else ''))
        if dsn:
            self.label += "-postgresql"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def provision(self, count: int) -> None:
        """Create the account pool through the registrar, in a helper process."""
        log(f"{self.label}: creating {count} accounts through the registrar")
        result = subprocess.run(
            [sys.executable, str(PROVISION), "--config", str(self.configPath), "--prefix", POOL,
             "--count", str(count)], capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise BenchError(f"provisioning accounts failed:\n{result.stderr}")
        log("  " + result.stderr.strip().splitlines()[-1])

    def makeInvites(self, count: int, path: Path) -> None:
        """C{count} single-use account invites through the invite manager; tokens to C{path}."""
        result = subprocess.run(
            [sys.executable, str(PROVISION), "--config", str(self.configPath), "--invites",
             str(count), "--token-file", str(path)],
            capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise BenchError(f"creating invites failed:\n{result.stderr}")

    def start(self, timeout: float = 60.0) -> None:
        offset = self.logPath.stat().st_size if self.logPath.exists() else 0
        command = [TWISTD, "-n", "--pidfile=", f"--logfile={self.logPath}", "invitesrv",
                   "--config", str(self.configPath)]
        if self.cpu is not None:
            command = ["taskset", "-c", self.cpu, *command]
        with (self.directory / "stderr.log").open("ab") as stderr:
            self.process = subprocess.Popen(command, cwd=self.directory,
                                            stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.logPath.exists():
                with self.logPath.open("rb") as f:
                    f.seek(offset)
                    found = LISTENING.search(f.read().decode("utf-8", "replace"))
                if found:
                    self.port = int(found.group(1))
                    return
            if self.process.poll() is not None:
                raise BenchError(f"invitesrv exited at start (status {self.process.returncode}); "
                                 f"see {self.logPath} and {self.directory / 'stderr.log'}")
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"invitesrv did not listen within {timeout:.0f}s; see {self.logPath}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ReferenceServer:
    """
    A private reference server on loopback, through its C{bench/NAME/start.sh}
    and C{stop.sh}; its accounts come from in-band registration once it runs
    (an untimed setup pass, see L{Bench}).
    """

    name = ""
    package = ""  # the Debian package, for the version in the label

    def __init__(self, directory: Path, cpu: str | None, certificate: tuple[Path, Path]):
        self.directory = directory
        self.cpu = cpu
        self.port = 0
        self.httpPort = freePort()
        self._pid = 0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "certs").mkdir(exist_ok=True)
        shutil.copy(certificate[0], directory / "certs" / f"{DOMAIN}.crt")
        shutil.copy(certificate[1], directory / "certs" / f"{DOMAIN}.key")
        version = packageVersion(self.package)
        self.label = f"{self.name}-{version}" if version else self.name
        self.fresh = True
        self.archiveStorage = "internal"  # "sql" for the mam scenario (see main)

    @property
    def pid(self) -> int:
        return self._pid

    def _env(self) -> dict:
        prefix = self.name.upper()
        env = dict(os.environ, BENCH_DOMAIN=DOMAIN, PYTHON=sys.executable,
                   **{f"{prefix}_BENCH_DIR": str(self.directory),
                      f"{prefix}_BENCH_PORT": str(self.port),
                      f"{prefix}_BENCH_HTTP_PORT": str(self.httpPort)},
                   ARCHIVE_STORAGE=self.archiveStorage)
        env.pop("SERVER_CPU", None)
        if self.cpu is not None:
            env["SERVER_CPU"] = self.cpu
        return env

    def provision(self, count: int) -> None:
        """Accounts come from in-band registration once the server runs (see L{Bench})."""

    invites = False  # can the server make invite tokens (the invite scenario)?

    def start(self) -> None:
        self.port = self.port or freePort()
        env = self._env()
        env["FRESH"] = "1" if self.fresh else "0"
        result = subprocess.run([str(HERE / self.name / "start.sh")], env=env,
                                capture_output=True, text=True, timeout=90, check=False)
        if result.returncode != 0:
            raise BenchError(f"{self.name} did not start: {result.stderr.strip()}")
        self._pid = int(result.stdout.split()[-1])
        self.fresh = False

    def stop(self) -> None:
        if self._pid:
            subprocess.run([str(HERE / self.name / "stop.sh")], env=self._env(),
                           capture_output=True, timeout=60, check=False)
            self._pid = 0


class Prosody(ReferenceServer):
    """Debian's Prosody, with the modules of a typical installation (C{bench/prosody/start.sh})."""

    name = package = "prosody"
    invites = True

    def makeInvites(self, count: int, path: Path) -> None:
        """
        C{count} single-use account invites, the way Prosody's admins make
        them (C{prosodyctl mod_invites generate}, one call each); the running
        server reads them from its storage.
        """
        config = str(self.directory / "prosody.cfg.lua")
        tokens = []
        for _ in range(count):
            result = subprocess.run(["prosodyctl", "--config", config, "mod_invites", "generate",
                                     DOMAIN], capture_output=True, text=True, timeout=60,
                                    check=False)
            found = re.search(r"preauth=([^;&\s]+)", result.stdout)
            if result.returncode != 0 or not found:
                raise BenchError(f"prosodyctl mod_invites generate failed: "
                                 f"{(result.stderr or result.stdout).strip()[-300:]}")
            tokens.append(found.group(1))
        path.write_text("".join(token + "\n" for token in tokens))


class Ejabberd(ReferenceServer):
    """Debian's ejabberd on Mnesia, without Erlang distribution (C{bench/ejabberd/start.sh})."""

    name = package = "ejabberd"
    uploads = False  # start.sh sets up no mod_http_upload


REFERENCES = {"prosody": (Prosody, "prosody"), "ejabberd": (Ejabberd, "ejabberdctl")}


def packageVersion(package: str) -> str | None:
    """A Debian package's version (never by running the server itself)."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout:
        return None
    return result.stdout.split("-")[0]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """Runs the chosen scenarios against one server and collects the JSON lines."""

    def __init__(self, server, sizes: Sizes, scenarios: list[str], repeat: int, out: Path,
                 work: Path, genCPU: str | None, machine: dict, runId: str, keyType: str = "rsa"):
        self.server = server
        self.sizes = sizes
        self.scenarios = scenarios
        self.repeat = repeat
        self.out = out
        self.work = work
        self.genCPU = genCPU
        self.machine = machine
        self.runId = runId
        self.keyType = keyType
        self.cache = work / f"{server.name}.scram"
        self.results: list[dict] = []

    def gen(self, tag: str, run: str, *args: str, quiet: bool = False,
            generator: Path = GENERATOR, serverPid: int | None = None) -> dict:
        """
        One generator call; its JSON line, annotated, is kept and appended to
        the output. C{serverPid}: the process whose CPU is measured, if not
        the server's.
        """
        s = self.sizes
        command = [sys.executable, str(generator), "--host", "127.0.0.1",
                   "--port", str(self.server.port), "--domain", DOMAIN,
                   "--server-pid", str(serverPid or self.server.pid), "--scram-cache", str(self.cache),
                   "--max-seconds", str(s.max_seconds), "--op-timeout", str(s.op_timeout),
                   "--label", self.server.label, *args]
        if self.genCPU is not None:
            command = ["taskset", "-c", self.genCPU, *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=s.max_seconds + 4 * s.op_timeout + 60)
        line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        try:
            record = json.loads(line)
        except ValueError:
            record = {"scenario": args[0], "label": self.server.label, "failed_rc": result.returncode,
                      "stderr": result.stderr.strip()[-500:]}
        record.update({"tag": tag, "run": run, "run_id": self.runId, "server": self.server.name,
                       "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                       "cert_key": self.keyType, "machine": self.machine})
        with self.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if (tag != "setup" and not quiet) or errorsOf(record):
            log(f"  {self.server.label} {tag} {run}: {brief(record)}")
        self.results.append(record)
        return record

    def runs(self):
        return [str(r) for r in range(1, self.repeat + 1)]

    def pause(self) -> None:
        time.sleep(self.sizes.pause)

    def run(self) -> list[dict]:
        s = self.sizes
        server = self.server
        pool = s.pool(self.scenarios)
        server.provision(pool)
        server.start()
        log(f"{server.label}: pid {server.pid} on 127.0.0.1:{server.port}")
        try:
            if isinstance(server, ReferenceServer) and any(sc != "register" for sc in self.scenarios):
                self.gen("register", "setup", "register", "-n", str(pool), "-c",
                         str(s.register_c), "--prefix", POOL)
            main = [sc for sc in self.scenarios if sc not in IDLE_SCENARIOS]
            for scenario in main:
                if scenario == "invite" and not getattr(server, "invites", True):
                    log(f"{server.label}: no invite tokens; the invite scenario is skipped")
                    continue
                if scenario in UPLOAD_SCENARIOS and not getattr(server, "uploads", True):
                    log(f"{server.label}: no upload service set up; the {scenario} scenario is skipped")
                    continue
                getattr(self, "scenario_" + scenario)()
                self.pause()
            for tag, k, extra in (("idle", s.idle_k, ()), ("idle10k", s.idle10k_k, ()),
                                  ("idlesm", s.idle_k, ("--sm",))):
                if tag not in self.scenarios:
                    continue
                for run in self.runs():
                    # RSS growth is only meaningful on a freshly started process:
                    # a server that already held many connections re-uses freed heap.
                    server.stop()
                    server.start()
                    time.sleep(max(1.0, s.pause))
                    self.gen(tag, run, "idle", "-k", str(k), "-c", str(s.idle_c),
                             "--settle", str(s.idle_settle), "--hold", str(s.idle_hold),
                             "--prefix", POOL, *extra)
        finally:
            server.stop()
        return self.results

    def scenario_register(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("register", run, "register", "-n", str(s.register_n), "-c",
                     str(s.register_c), "--prefix", f"br{run}u")

    def scenario_invite(self) -> None:
        s = self.sizes
        # Untimed: every run redeems its own single-use invites (XEP-0401
        # preauth, then the XEP-0077 set on the same stream).
        tokens = self.work / f"{self.server.name}.tokens"
        log(f"{self.server.label}: creating {s.invite_n * self.repeat} invites")
        self.server.makeInvites(s.invite_n * self.repeat, tokens)
        everyToken = tokens.read_text().splitlines()
        for index, run in enumerate(self.runs()):
            chunk = self.work / f"{self.server.name}-{run}.tokens"
            chunk.write_text("".join(token + "\n" for token in
                                     everyToken[index * s.invite_n:(index + 1) * s.invite_n]))
            self.gen("invite", run, "register", "-n", str(s.invite_n), "-c", str(s.register_c),
                     "--prefix", f"bi{run}u", "--token-file", str(chunk))
            self.pause()

    def scenario_login(self) -> None:
        s = self.sizes
        # Untimed warm-up: fills the generator's SCRAM cache (as real clients
        # keep SaltedPassword) so its PBKDF2 does not load CPU 1 during the runs.
        self.gen("login", "warmup", "login", "-n", str(s.login_n), "-c", str(s.login_c),
                 "--prefix", POOL)
        for run in self.runs():
            self.gen("login", run, "login", "-n", str(s.login_n), "-c", str(s.login_c),
                     "--prefix", POOL)

    def scenario_plain(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("plain", run, "login", "--plain", "-n", str(s.plain_n), "-c", str(s.login_c),
                     "--prefix", POOL)

    def scenario_login1(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("login1", run, "login", "-n", str(s.login1_n), "-c", "1", "--prefix", POOL)

    def fastTokens(self, workload: str = "fast") -> Path | None:
        """
        The pool's FAST tokens, got once (untimed SASL2 PLAIN logins asking
        for one; for C{fastsm} with sessions left waiting to be resumed);
        None for a server without SASL2 and FAST (Prosody 0.12, ejabberd 23.01).
        """
        tokens = self.work / f"{self.server.name}.{workload}.json"
        if isinstance(self.server, ReferenceServer):
            log(f"{self.server.label}: no SASL2/FAST: skipped")
            return None
        if not tokens.exists():
            self.gen(workload, "setup", workload, "-n", str(self.sizes.login_n), "-c",
                     str(self.sizes.login_c), "--prefix", POOL, "--token-file", str(tokens),
                     "--setup", generator=FASTLOAD)
        return tokens

    def reconnects(self, tag: str, workload: str, one: bool = False, direct: bool = False) -> None:
        """
        A FAST workload of C{bench/fastload.py} (C{fast} or C{fastsm}): at the
        logins' concurrency, or C{one} at a time; over direct TLS, resuming
        each user's TLS session, if C{direct}.
        """
        s = self.sizes
        tokens = self.fastTokens(workload)
        if tokens is None:  # a reference server: no SASL2
            return
        size = ("-n", str(s.login1_n), "-c", "1") if one else ("-n", str(s.login_n), "-c", str(s.login_c))
        extra = ("--direct-port", str(self.server.directPort)) if direct else ()
        for run in self.runs():
            self.gen(tag, run, workload, *size, "--prefix", POOL, "--token-file", str(tokens), *extra,
                     generator=FASTLOAD)

    def scenario_fast(self) -> None:
        self.reconnects("fast", "fast")

    def scenario_fast1(self) -> None:
        self.reconnects("fast1", "fast", one=True)

    def scenario_fastsm(self) -> None:
        self.reconnects("fastsm", "fastsm")

    def scenario_fastsm1(self) -> None:
        self.reconnects("fastsm1", "fastsm", one=True)

    def scenario_reconnect(self) -> None:
        """C{fastsm} as a phone does it: direct TLS, resuming its TLS session too."""
        self.reconnects("reconnect", "fastsm", direct=True)

    def scenario_reconnect1(self) -> None:
        self.reconnects("reconnect1", "fastsm", one=True, direct=True)

    def scenario_connect(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("connect", run, "connect", "-n", str(s.login_n), "-c", str(s.login_c),
                     generator=FASTLOAD)

    def scenario_connectresumed(self) -> None:
        """What C{reconnect} pays before it authenticates: direct TLS, the TLS session resumed."""
        s = self.sizes
        if isinstance(self.server, ReferenceServer):
            log(f"{self.server.label}: no direct TLS listener configured: skipped")
            return
        for run in self.runs():
            self.gen("connectresumed", run, "connect", "-n", str(s.login_n), "-c", str(s.login_c),
                     "--direct-port", str(self.server.directPort), generator=FASTLOAD)

    def scenario_tlsfloor(self) -> None:
        """
        C{connectresumed} against L{TLSFLOOR}, with the server's certificate
        and TLS options, on the server's CPU: what any reconnect costs in
        Twisted and OpenSSL before invitesrv's own code.
        """
        s = self.sizes
        if isinstance(self.server, ReferenceServer):
            log(f"{self.server.label}: the TLS floor is measured once, with invitesrv: skipped")
            return
        command = [sys.executable, str(TLSFLOOR), "--cert", str(self.server.certificate[0]),
                   "--key", str(self.server.certificate[1])]
        if self.server.cpu is not None:
            command = ["taskset", "-c", self.server.cpu, *command]
        bare = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            started = bare.stdout.readline()
            if not started.startswith("listening on "):
                raise BenchError(f"bench/tlsfloor.py did not start (status {bare.poll()})")
            port = started.split()[-1]
            for run in self.runs():
                self.gen("tlsfloor", run, "connect", "-n", str(s.login_n), "-c", str(s.login_c),
                         "--direct-port", port, generator=FASTLOAD, serverPid=bare.pid)
        finally:
            bare.terminate()
            bare.wait()

    def scenario_messages(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("messages", run, "messages", "-p", str(s.msg_pairs), "-m", str(s.msg_m),
                     "-w", str(s.msg_w), "-c", str(s.login_c), "--prefix", POOL)

    def scenario_smmessages(self) -> None:
        """The messages workload with carbons and XEP-0198 stream management on every client."""
        s = self.sizes
        for run in self.runs():
            self.gen("smmessages", run, "messages", "--sm", "-p", str(s.msg_pairs), "-m",
                     str(s.msg_m), "-w", str(s.msg_w), "-c", str(s.login_c), "--prefix", POOL)

    def scenario_smarchive(self) -> None:
        """
        Receipted messages as phones with a desktop beside them send them:
        every account has two clients with carbons and stream management on,
        and both servers archive every message (XEP-0313).
        """
        s = self.sizes
        for run in self.runs():
            self.gen("smarchive", run, "messages", "--sm", "--devices", "2", "-p", str(s.msg_pairs),
                     "-m", str(s.msg_m), "-w", str(s.msg_w), "-c", str(s.login_c), "--prefix", POOL)

    def scenario_resume(self) -> None:
        """XEP-0198 resumption after a dropped connection, one at a time: its latency."""
        s = self.sizes
        for run in self.runs():
            self.gen("resume", run, "resume", "-n", str(s.resume_n), "--pool", str(s.login1_n),
                     "--prefix", POOL)

    def scenario_upload(self) -> None:
        """XEP-0363: slot over XMPP, then PUT, of upload_size bytes (1 MB), upload_n times."""
        s = self.sizes
        for run in self.runs():
            self.gen("upload", run, "put", "-n", str(s.upload_n), "-c", str(s.upload_c),
                     "--size", str(s.upload_size), "--url-file",
                     str(self.work / f"{self.server.name}-{run}.urls"), generator=UPLOAD_GENERATOR)

    def scenario_download(self) -> None:
        """GET of every file the upload runs stored (run upload first)."""
        s = self.sizes
        for run in self.runs():
            self.gen("download", run, "get", "-c", str(s.upload_c), "--url-file",
                     str(self.work / f"{self.server.name}-{run}.urls"), generator=UPLOAD_GENERATOR)

    def scenario_bigupload(self) -> None:
        """One big_size (100 MB) upload on a freshly started server, its RSS sampled."""
        s = self.sizes
        for run in self.runs():
            self.server.stop()
            self.server.start()
            time.sleep(max(1.0, s.pause))
            self.gen("bigupload", run, "big", "--size", str(s.big_size), generator=UPLOAD_GENERATOR)

    def scenario_roster(self) -> None:
        s = self.sizes
        common = ("-u", str(s.roster_u), "-r", str(s.roster_r), "-c", str(s.roster_c),
                  "--pool", str(s.pool(self.scenarios)), "--prefix", POOL)
        # Untimed: add the items first, then measure gets only.
        self.gen("roster", "setup", "roster", "-g", "1", *common)
        self.pause()
        for run in self.runs():
            self.gen("roster", run, "roster", "-g", str(s.roster_gets), *common)

    def scenario_mam(self) -> None:
        s = self.sizes
        # Untimed: fill the archive (setup_* in the JSON); every run then pages
        # through the same archive.
        self.gen("mam", "setup", "mam", "--archive", str(s.mam_archive), "-q", "0", "-c", "1",
                 "--prefix", POOL)
        for run in self.runs():
            self.gen("mam", run, "mam", "--archive", str(s.mam_archive), "--page", str(s.mam_page),
                     "-q", str(s.mam_queries), "-c", str(s.mam_c), "--prefix", POOL)
    def scenario_pep(self) -> None:
        """One generator run gives two rows: publications fanned out, and logins with last items."""
        s = self.sizes
        for run in self.runs():
            record = self.gen("pep", run, "pep", "-k", str(s.pep_k), "--publishes", str(s.pep_publishes),
                              "-w", str(s.pep_w), "--logins", str(s.pep_logins), "-c", str(s.pep_c),
                              "--prefix", POOL, quiet=True, generator=PEP_GENERATOR)
            if "failed_rc" in record:
                continue
            self.results.remove(record)
            for part in ("publish", "login"):
                row = {key: value for key, value in record.items()
                       if not key.startswith(("publish_", "login_"))}
                row.update({key[len(part) + 1:]: value for key, value in record.items()
                            if key.startswith(part + "_")})
                row.update({"tag": f"pep-{part}", "errors": record.get(f"{part}_errors", 0)})
                self.results.append(row)
                log(f"  {self.server.label} pep-{part} {run}: {brief(row)}")


    def scenario_mucmsg(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("mucmsg", run, "mucmsg", "-p", str(s.muc_occupants), "-s", str(s.muc_senders),
                     "-m", str(s.muc_m), "-w", str(s.muc_w), "-c", str(s.login_c),
                     "--prefix", POOL, generator=MUC_GENERATOR)

    def scenario_mucjoin(self) -> None:
        s = self.sizes
        for run in self.runs():
            self.gen("mucjoin", run, "mucjoin", "-n", str(s.muc_joins), "-c", str(s.muc_join_c),
                     "--history", str(s.muc_history), "--prefix", POOL, generator=MUC_GENERATOR)


# -- figures -----------------------------------------------------------------


def errorsOf(r: dict) -> int | None:
    """Errors of a result; None when the generator gave no result at all."""
    if "failed_rc" in r:
        return None
    return int(r.get("errors") or 0)


def figures(r: dict) -> dict:
    """The comparable figures of one result line: rate, latency, CPU per op, memory."""
    scenario = r.get("scenario")
    out = {"rate": None, "p50": None, "p99": None, "cpu_ms_op": None, "bytes_conn": None,
           "gen_pct": r.get("gen_cpu_pct"), "srv_pct": r.get("server_cpu_pct"),
           "busy": r.get("cpu_busy_pct")}
    if "failed_rc" in r:
        return out
    if scenario == "idle":
        ok = r.get("connected") or 0
        out.update(rate=r.get("login_per_s"), p50=r.get("login_p50_ms"), p99=r.get("login_p99_ms"),
                   bytes_conn=r.get("bytes_per_conn"), gen_pct=r.get("login_gen_cpu_pct"),
                   srv_pct=r.get("login_server_cpu_pct"), busy=r.get("login_cpu_busy_pct"))
        cpu = r.get("login_server_cpu_s")
    else:
        ok = {"messages": r.get("messages_ok"), "smmessages": r.get("messages_ok"),
              "smarchive": r.get("messages_ok"),
              "roster": r.get("gets_ok"), "mam": r.get("queries_ok"),
              "mucmsg": r.get("messages_ok"), "mucjoin": r.get("joins_ok")}.get(scenario, r.get("ok"))
        ok = ok or 0
        if scenario in ("messages", "smmessages", "smarchive", "mucmsg"):
            out.update(rate=r.get("per_s"), p50=r.get("rtt_p50_ms"), p99=r.get("rtt_p99_ms"))
        else:
            out.update(rate=r.get("per_s"), p50=r.get("p50_ms"), p99=r.get("p99_ms"))
        cpu = r.get("server_cpu_s")
    if cpu is not None and ok:
        out["cpu_ms_op"] = round(1000.0 * cpu / ok, 2)
    return out


UNITS = {"register": "accounts/s", "invite": "accounts/s", "login": "logins/s", "plain": "logins/s",
         "login1": "logins/s", "fast": "reconnects/s", "fast1": "reconnects/s",
         "fastsm": "reconnects/s", "fastsm1": "reconnects/s", "reconnect": "reconnects/s",
         "reconnect1": "reconnects/s", "connect": "connections/s", "connectresumed": "connections/s",
         "tlsfloor": "connections/s",
         "messages": "msgs/s",
         "roster": "gets/s", "mam": "pages/s", "pep-publish": "publishes/s",
         "pep-login": "logins/s", "smmessages": "msgs/s", "smarchive": "msgs/s",
         "resume": "resumes/s",
         "idle": "logins/s", "idle10k": "logins/s", "idlesm": "logins/s", "upload": "uploads/s",
         "download": "downloads/s", "bigupload": "MB/s", "mucmsg": "msgs/s (to all)",
         "mucjoin": "joins/s"}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 10 ** digits):
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}g}"


def brief(r: dict) -> str:
    f = figures(r)
    if "failed_rc" in r:
        return f"no result (generator exit status {r['failed_rc']}): {r.get('stderr', '')[-200:]}"
    text = (f"{fmt(f['rate'])} {UNITS.get(r.get('tag'), 'ops/s')}, p50 {fmt(f['p50'])} ms, "
            f"p99 {fmt(f['p99'])} ms, server {fmt(f['cpu_ms_op'])} ms CPU/op, "
            f"errors {r.get('errors', 0)}")
    if f["bytes_conn"] is not None:
        text += f", {fmt(f['bytes_conn'])} B/conn"
    if r.get("errors"):
        text += f" {r.get('error_kinds') or r.get('login_error_kinds')}"
    return text


NOISY = 10.0  # percent of a CPU used by other processes that makes a run suspect


def foreignLoad(r: dict) -> float:
    """
    The largest share (%) of the server's or the generator's CPU that other
    processes took during the measured phase: busy % of the CPU minus the
    pinned process's own %. Zero when nothing was pinned.
    """
    f = figures(r)
    busy = f["busy"] or {}
    worst = 0.0
    for cpus, own in ((r.get("server_cpus"), f["srv_pct"]), (r.get("gen_cpus"), f["gen_pct"])):
        if cpus and len(cpus) == 1 and own is not None and str(cpus[0]) in busy:
            worst = max(worst, busy[str(cpus[0])] - own)
    return worst


def note(r: dict) -> str:
    if "failed_rc" in r:
        return f"no result (exit {r['failed_rc']})"
    if r.get("errors"):
        kinds = r.get("error_kinds") or r.get("login_error_kinds") or r.get("setup_error_kinds") or {}
        return "errors: " + ", ".join(f"{k}×{v}" for k, v in sorted(kinds.items())[:3])
    foreign = foreignLoad(r)
    if foreign >= NOISY:
        return f"noisy: other processes took {foreign:.0f}% of a pinned CPU"
    if r.get("tag") == "roster" and r.get("run") == "setup":
        return (f"{r.get('setup_items_added')} roster items added, "
                f"{fmt(r.get('setup_items_per_s'))}/s")
    if r.get("tag") == "register" and r.get("run") == "setup":
        return "account pool, by in-band registration"
    if r.get("tag") == "bigupload":
        return (f"{r.get('size', 0) // 1_048_576} MiB: server RSS +{r.get('rss_growth_kb')} KiB"
                f" (from {r.get('rss_before_kb')} to a peak of {r.get('rss_peak_kb')} KiB)")
    return ""


def table(results: list[dict]) -> str:
    """Markdown table of every measured run (warm-up and setup passes included, marked)."""
    lines = [("| server | scenario | run | rate/s | p50 ms | p99 ms | errors | server CPU ms/op "
              "| B/conn | gen CPU % | server CPU % | CPU busy % | note |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = figures(r)
        busy = "/".join(fmt(v) for _, v in sorted((f["busy"] or {}).items()))
        errors = errorsOf(r)
        lines.append(
            f"| {r.get('label')} | {r.get('tag')} | {r.get('run')} | {fmt(f['rate'])} "
            f"| {fmt(f['p50'])} | {fmt(f['p99'])} | {'–' if errors is None else errors} "
            f"| {fmt(f['cpu_ms_op'])} | {fmt(f['bytes_conn'])} | {fmt(f['gen_pct'])} "
            f"| {fmt(f['srv_pct'])} | {busy or '–'} | {note(r)} |")
    return "\n".join(lines)


def medians(results: list[dict]) -> dict:
    """{scenario: {figure: median over the measured runs with zero errors}}."""
    out: dict = {}
    for tag in TAGS:
        runs = [figures(r) for r in results
                if r.get("tag") == tag and r.get("run") not in ("setup", "warmup")
                and errorsOf(r) == 0]
        if not runs:
            continue
        out[tag] = {key: statistics.median([f[key] for f in runs if f[key] is not None])
                    for key in ("rate", "p50", "p99", "cpu_ms_op", "bytes_conn")
                    if any(f[key] is not None for f in runs)}
    return out


def ratioTable(ours: list[dict], theirs: list[dict], ourLabel: str, theirLabel: str) -> str:
    """Medians side by side with ratios (ours ÷ theirs)."""
    a, b = medians(ours), medians(theirs)
    lines = [f"| scenario | figure | {ourLabel} | {theirLabel} | {ourLabel} ÷ {theirLabel} |",
             "|---|---|---|---|---|"]
    names = {"rate": "rate/s (higher is better)", "p50": "p50 ms", "p99": "p99 ms",
             "cpu_ms_op": "server CPU ms/op (lower is better)",
             "bytes_conn": "bytes per idle connection"}
    for tag in TAGS:
        if tag not in a and tag not in b:
            continue
        for key, name in names.items():
            x, y = a.get(tag, {}).get(key), b.get(tag, {}).get(key)
            if x is None and y is None:
                continue
            ratio = f"{x / y:.2f}×" if x is not None and y else "–"
            lines.append(f"| {tag} | {name} | {fmt(x)} | {fmt(y)} | {ratio} |")
    return "\n".join(lines)


def checkAgainst(results: list[dict], reference: dict) -> tuple[str, list[str]]:
    """
    The table of each scenario's server CPU ms/op beside the reference's, and
    the scenarios over C{tolerance} × their reference (or that gave no figure).
    CPU time per operation, not rates: a loaded machine slows a run down but
    hardly changes what each operation costs the server.
    """
    tolerance = reference.get("tolerance", TOLERANCE)
    measured = medians(results)
    lines = ["| scenario | server CPU ms/op | reference | limit | |", "|---|---|---|---|---|"]
    failed = []
    for tag, expected in reference["cpu_ms_op"].items():
        value = measured.get(tag, {}).get("cpu_ms_op")
        limit = expected * tolerance + SLACK
        verdict = "ok" if value is not None and value <= limit else "REGRESSION"
        if verdict != "ok":
            failed.append(tag)
        lines.append(f"| {tag} | {fmt(value)} | {fmt(expected)} | {fmt(limit)} | {verdict} |")
    return "\n".join(lines), failed


def writeReference(path: Path, results: list[dict], machine: dict, quick: bool) -> None:
    """Record this run's CPU ms/op per scenario as the reference for L{checkAgainst}."""
    reference = {
        "about": "server CPU ms per operation at --quick sizes, the reference of"
                 " 'bench/run.py --quick --check'; rewrite with --write-reference",
        "sizes": "quick" if quick else "default", "tolerance": TOLERANCE,
        "machine": f"{machine['cpu_model']}, {machine['cpus']} CPUs; Python {machine['python']}",
        "date": machine["date"],
        "cpu_ms_op": {tag: figures["cpu_ms_op"] for tag, figures in medians(results).items()
                      if figures.get("cpu_ms_op")},
    }
    path.write_text(json.dumps(reference, indent=2) + "\n")


def parseArgs(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, seconds)")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated, from {', '.join(SCENARIOS)}, or all "
                             f"(default: {','.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--against", action="append", choices=sorted(REFERENCES), default=[],
                        help="also run a private Prosody or ejabberd (may be given twice)")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per scenario")
    parser.add_argument("--store", default="sqlite",
                        help="invitesrv's store(s), comma-separated: sqlite, postgresql (a private"
                             " PostgreSQL, started as the tests start it); the first is compared"
                             " with the others")
    parser.add_argument("--key-type", choices=["rsa", "ec"], default="rsa",
                        help="server certificate key: rsa (RSA-2048, as the reference figures) "
                             "or ec (ECDSA P-256, invitesrv's own default)")
    parser.add_argument("--out", help="JSON lines file (default: bench/results/<date>.jsonl)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, data, server logs)")
    parser.add_argument("--table", nargs="+", metavar="JSONL",
                        help="only print the tables of earlier results files, run nothing")
    parser.add_argument("--check", nargs="?", const=str(REFERENCE), metavar="REFERENCE",
                        help="exit 4 when a scenario's server CPU ms/op exceeds the reference's"
                             f" tolerance (default file: bench/{REFERENCE.name})")
    parser.add_argument("--write-reference", metavar="FILE",
                        help="write this run's CPU ms/op as a reference for --check")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.scenarios == ["all"]:
        args.scenarios = list(SCENARIOS)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f"unknown scenario(s) {', '.join(unknown) or '(none)'}; "
                     f"choose from {', '.join(SCENARIOS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.stores = list(dict.fromkeys(s.strip() for s in args.store.split(",") if s.strip()))
    if not args.stores or set(args.stores) - {"sqlite", "postgresql"}:
        parser.error("--store: choose from sqlite, postgresql")
    if "postgresql" in args.stores:
        sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' private PostgreSQL
        from pgcluster import missing
        if missing():
            parser.error(f"--store postgresql: {missing()}")
    args.reference = None
    if args.check:
        try:
            args.reference = json.loads(Path(args.check).read_text())
        except (OSError, ValueError) as e:
            parser.error(f"--check: cannot read {args.check}: {e}")
        if args.reference.get("sizes") != ("quick" if args.quick else "default"):
            parser.error(f"--check: {args.check} was measured at {args.reference.get('sizes')}"
                         " sizes; run with the same sizes")
        args.scenarios = list(dict.fromkeys(args.scenarios + list(args.reference["cpu_ms_op"])))
    for name in args.against:
        if shutil.which(REFERENCES[name][1]) is None:
            parser.error(f"--against {name}: {name} is not installed (apt-get install {name})")
    return args


def printTables(results: list[dict]) -> None:
    """The per-run table, then medians and ratios of the first server to each other one."""
    print(table(results))
    labels = list(dict.fromkeys(r.get("label") for r in results))
    for other in labels[1:]:
        print()
        print(ratioTable([r for r in results if r.get("label") == labels[0]],
                         [r for r in results if r.get("label") == other], labels[0], other))


def main(argv=None) -> int:
    args = parseArgs(argv)
    if args.table:
        printTables([json.loads(line) for name in args.table
                     for line in Path(name).read_text().splitlines() if line.strip()])
        return 0
    sizes = QUICK if args.quick else Sizes()
    # Enough file descriptors for K idle connections, for the servers and the generator.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The generator and the servers inherit this limit (invitesrv raises its
    # own as well); one descriptor per connection, plus some headroom.
    if hard != resource.RLIM_INFINITY and hard < max(sizes.idle_k, sizes.idle10k_k) + 256:
        sizes = replace(sizes, idle_k=min(sizes.idle_k, max(10, hard - 256)),
                        idle10k_k=min(sizes.idle10k_k, max(10, hard - 256)))
        log(f"RLIMIT_NOFILE hard limit {hard}: idle connections lowered to {sizes.idle_k} "
            f"and {sizes.idle10k_k}")
    serverCPU, genCPU = cpuPlan()
    machine = machineInfo()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else HERE / "results" / f"{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="invitesrv-bench-"))
    log(f"bench: {', '.join(args.scenarios)} ({'quick' if args.quick else 'default'} sizes), "
        f"server CPU {serverCPU}, generator CPU {genCPU}; results -> {out}; work dir {work}")
    if serverCPU is None:
        log("note: fewer than two CPUs (or no taskset): server and generator are not pinned")
    certificate = (work / "server.crt", work / "server.key")
    writeCertificate(*certificate, keyType=args.key_type)
    postgresql = None
    if "postgresql" in args.stores:
        from pgcluster import PrivatePostgreSQL
        # On the generator's CPU, so that it does not take the server's; its
        # own CPU time is not in the server's figures.
        postgresql = PrivatePostgreSQL().start(cpus=genCPU)
        log(f"PostgreSQL: a private cluster in {postgresql.directory}, CPU {genCPU}")
    servers = [Invitesrv(work / f"invitesrv-{store}", serverCPU, certificate,
                         postgresql.dsn(postgresql.createDatabase()) if store == "postgresql" else None)
               for store in args.stores]
    for name in dict.fromkeys(args.against):
        reference = REFERENCES[name][0](work / name, serverCPU, certificate)
        if "mam" in args.scenarios or "smarchive" in args.scenarios:
            # With its file storage, Prosody reads a user's whole archive for
            # every query (and rewrites it for every message kept with an id):
            # with the archive scenarios its archives are in SQLite.
            reference.archiveStorage = "sql"
        servers.append(reference)
    everything: list[tuple[object, list[dict]]] = []
    try:
        for server in servers:
            bench = Bench(server, sizes, args.scenarios, args.repeat, out, work, genCPU, machine,
                          stamp, args.key_type)
            try:
                everything.append((server, bench.run()))
            except BenchError as e:
                log(f"{server.label}: {e}")
                everything.append((server, bench.results))
    finally:
        for server in servers:
            server.stop()
        if postgresql is not None:
            postgresql.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    m = machine
    print(f"\nMachine: {m['cpu_model']}, {m['cpus']} CPUs, {m['ram_gib']} GiB RAM; "
          f"Python {m['python']}, Twisted {m['versions']['twisted']}; server TLS "
          f"{m['server_openssl']}, generator TLS {m['openssl']}; {m['date']}")
    print(f"Sizes: {json.dumps(asdict(sizes))}; certificate key: {args.key_type}\n")
    allResults = [r for _, results in everything for r in results]
    printTables(allResults)
    print(f"\nJSON lines: {out}")
    failed = [r for r in allResults if errorsOf(r) != 0]
    missing = len(servers) > len(everything) or any(
        not any(r.get("tag") == sc or r.get("scenario") == sc for r in results)
        for server, results in everything for sc in args.scenarios
        if not (isinstance(server, ReferenceServer) and sc in OURS_ONLY))
    if failed or missing:
        print("Some runs failed or gave errors (see the note column); errors are not figures.")
        return 3
    ours = everything[0][1]
    if args.write_reference:
        writeReference(Path(args.write_reference), ours, machine, args.quick)
        print(f"Reference written: {args.write_reference}")
    if args.reference is not None:
        text, regressions = checkAgainst(ours, args.reference)
        print(f"\nCheck against {args.check} (tolerance {args.reference.get('tolerance', TOLERANCE)}×):\n")
        print(text)
        if regressions:
            print(f"\nRegression: {', '.join(regressions)} cost more server CPU per operation"
                  " than the reference allows")
            return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
