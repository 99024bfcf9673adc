"""
C{invitesrvctl check}: what an admin should fix before (and while) running
a public server, like C{prosodyctl check}. Each finding says what is wrong
and how to fix it; errors stop clients or servers from connecting, warnings
weaken security or the users' experience.
"""

from __future__ import annotations

import datetime
import errno
import socket
import stat
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import defer, endpoints
from twisted.names import dns
from twisted.names import error as dnsError

from invitesrv.config import Config
from invitesrv.tls import hostCertificates

EXPIRY_WARNING = datetime.timedelta(days=14)
DNS_TIMEOUT = (2, 3)


@dataclass(frozen=True)
class Finding:
    """One result: C{level} is ok, warning or error; C{fix} says what to do."""

    level: str
    topic: str
    text: str
    fix: str = ""

    def __str__(self) -> str:
        line = f"{self.level.upper():8} {self.topic}: {self.text}"
        return f"{line}\n         fix: {self.fix}" if self.fix else line


def isPublicName(host: str) -> bool:
    """Could other people's clients and servers find this host in DNS?"""
    return "." in host and not host.endswith((".localhost", ".local", ".test", ".invalid",
                                               ".example", ".internal"))


def checkConfig(config: Config) -> list[Finding]:
    """Settings a public server should have."""
    found = []
    for name, options in config.hosts.items():
        if not isPublicName(name):
            found.append(Finding("warning", f"host {name}", "not a public DNS name: only clients on"
                                 " this machine or network can reach it",
                                 "serve your real domain: [hosts.\"chat.example.org\"] or --domain"))
        if not options.registration_invite_only and options.allow_registration:
            found.append(Finding("warning", f"host {name}", "anybody may register (open registration"
                                 " attracts spammers)", "set registration_invite_only = true"))
        if not options.admins:
            found.append(Finding("warning", f"host {name}", "no admins named",
                                 f"add admins = [\"you@{name}\"] to [hosts.\"{name}\"]"))
    if not config.require_encryption:
        found.append(Finding("error", "server", "clients may log in without TLS",
                             "set require_encryption = true in [server]"))
    if (config.http or config.https) and not config.public_url:
        found.append(Finding("warning", "server", "an HTTP listener but no public_url: invite links"
                             " point nowhere", "set public_url = \"https://chat.example.org\""))
    elif config.public_url.startswith("http://"):
        found.append(Finding("warning", "server", f"public_url {config.public_url} is not HTTPS:"
                             " invite tokens and passwords cross the network in clear",
                             "put a TLS reverse proxy in front, or use an https listener"))
    if not config.s2s:
        found.append(Finding("ok", "federation", "off (no [listen] s2s): users talk only to"
                             " users of this server"))
    return found or [Finding("ok", "config", "nothing to change")]


def checkCertificate(config: Config, now: datetime.datetime | None = None) -> list[Finding]:
    """
    The certificates: each host's own in C{[tls] certificates}, and the
    default one for the hosts without (C{[tls] certificate}, or the generated
    one): present, matching its key, not expiring, naming its hosts.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    own = hostCertificates(config.certificatesDir, list(config.hosts))
    found = []
    for name, (path, keyPath) in own.items():
        found += [replace(finding, text=f"{name}: {finding.text}")
                  for finding in checkPair(path, keyPath, [name], now)]
    others = [host for host in config.hosts if host not in own]
    if others or config.tls_certificate is not None:
        found += checkPair(config.certificatePath, config.keyPath, others, now)
    return found


def checkPair(path, keyPath, hosts: list[str], now: datetime.datetime) -> list[Finding]:
    """
    One certificate and its key, for C{hosts} (also what C{invitesrvctl
    cert import} checks before it copies a certificate in).
    """
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return [Finding("warning", "certificate", f"none at {path} yet: one is generated"
                        " (self-signed) at the first start",
                        "get one from a CA (certbot) and set [tls] certificate and key")]
    except (OSError, ValueError) as e:
        return [Finding("error", "certificate", f"cannot read {path}: {e}",
                        "point [tls] certificate at a PEM certificate (chain)")]
    found = []
    try:
        key = serialization.load_pem_private_key(keyPath.read_bytes(), None)
    except (OSError, ValueError, TypeError) as e:
        found.append(Finding("error", "certificate", f"cannot read the key {keyPath}: {e}",
                             "point [tls] key at the unencrypted PEM key of the certificate"))
    else:
        if key.public_key().public_numbers() != certificate.public_key().public_numbers():
            found.append(Finding("error", "certificate", f"{keyPath} is not the key of {path}",
                                 "use the key the certificate was issued for (privkey.pem)"))
    expires = certificate.not_valid_after_utc
    if expires < now:
        found.append(Finding("error", "certificate", f"expired on {expires:%Y-%m-%d}",
                             "renew it (certbot renew) and run invitesrvctl reload or restart"))
    elif expires - now < EXPIRY_WARNING:
        found.append(Finding("warning", "certificate", f"expires on {expires:%Y-%m-%d}",
                             "renew it (certbot renew)"))
    if certificate.issuer == certificate.subject:
        found.append(Finding("warning", "certificate", "self-signed: clients warn, and other"
                             " servers fall back to dialback or refuse",
                             "get one from a CA, e.g. Let's Encrypt with certbot"))
    for host in hosts:
        try:
            verify_certificate_hostname(certificate, host)
        except VerificationError:
            found.append(Finding("error", "certificate", f"does not name {host}",
                                 f"get a certificate that covers {host}"))
    return found or [Finding("ok", "certificate", f"valid for {', '.join(hosts)} until"
                             f" {expires:%Y-%m-%d}")]


def checkDataDir(config: Config) -> list[Finding]:
    """Only the server's owner may read the database, keys and secrets."""
    directory = config.data_dir
    if not directory.exists():
        return [Finding("ok", "data dir", f"{directory} does not exist yet")]
    found = []
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        found.append(Finding("error", "data dir", f"{directory} is open to other users",
                             f"chmod 700 {directory}"))
    public = {config.certificatePath.resolve()}  # a certificate is no secret
    for path in sorted(directory.rglob("*")):
        if path.resolve() in public or not path.is_file() or path.is_symlink():
            continue
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            found.append(Finding("error", "data dir", f"{path} is readable by other users",
                                 f"chmod 600 {path}"))
    return found or [Finding("ok", "data dir", f"{directory} is private")]


def _tcpPort(description: str) -> tuple[str, int] | None:
    endpoint = endpoints.serverFromString(None, description)
    port = getattr(endpoint, "_port", None)
    if port is None:
        return None
    return getattr(endpoint, "_interface", "") or "", port


def checkPorts(config: Config, running: bool) -> list[Finding]:
    """With no server running, each TCP listener's port must be free to take."""
    found = []
    listeners = [("c2s", d) for d in config.c2s] + [("c2s_direct_tls", d) for d in config.c2s_direct_tls]
    listeners += [("s2s", d) for d in config.s2s] + [("http", d) for d in config.http]
    listeners += [("https", d) for d in config.https]
    for key, description in listeners:
        address = _tcpPort(description)
        if address is None or running or address[1] == 0:
            continue
        interface, port = address
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, port))
        except OSError as e:
            why = "taken by another program" if e.errno == errno.EADDRINUSE else e.strerror
            fix = ("stop the other program (e.g. systemctl stop prosody) or choose another port"
                   if e.errno == errno.EADDRINUSE else "run as a user allowed to bind it, or use"
                   " a port above 1023 behind a forward (or CAP_NET_BIND_SERVICE)")
            found.append(Finding("error", f"listen.{key}", f"{description}: {why}", fix))
        finally:
            probe.close()
    if not found:
        found.append(Finding("ok", "ports", "the server is running" if running else
                             "every listener's port is free"))
    return found


@defer.inlineCallbacks
def checkDNS(config: Config, resolver):
    """
    The records other people's clients and servers look up, for each public
    host, and (with federation on) for each of its components' domains,
    which other servers reach as they reach the host.
    """
    found = []
    domains = [(host, True) for host in config.hosts if isPublicName(host)]
    domains += [(component, False) for host, _ in list(domains)
                for component in config.components.get(host, {})]
    for host, clients in domains:
        services = [("_xmpp-client._tcp", "clients", 5222)] if clients else []
        if config.s2s:
            services.append(("_xmpp-server._tcp", "servers", 5269))
        for prefix, who, port in services:
            name = f"{prefix}.{host}"
            try:
                answers, _, _ = yield resolver.lookupService(name, timeout=DNS_TIMEOUT)
            except dnsError.DNSNameError:
                answers = []
            except (dnsError.DomainError, dnsError.DNSServerError, dnsError.DNSQueryTimeoutError,
                    defer.TimeoutError) as e:
                found.append(Finding("warning", f"DNS {name}", f"lookup failed: {type(e).__name__}",
                                     "check the DNS server and try again"))
                continue
            records = [a.payload for a in answers if a.type == dns.SRV]
            if not records:
                found.append(Finding("warning", f"DNS {name}", f"no SRV record: {who} try {host}"
                                     f" on port {port}",
                                     f"add {name}. SRV 0 5 {port} {host}."))
                targets = [host]
            else:
                targets = [str(r.target) for r in records if str(r.target) not in ("", ".")]
            for target in targets:
                addresses = []
                for lookup in (resolver.lookupAddress, resolver.lookupIPV6Address):
                    try:
                        answers, _, _ = yield lookup(target, timeout=DNS_TIMEOUT)
                    except (dnsError.DomainError, dnsError.DNSNameError, dnsError.DNSServerError,
                            dnsError.DNSQueryTimeoutError, defer.TimeoutError):
                        continue
                    addresses += [a for a in answers if a.type in (dns.A, dns.AAAA)]
                if addresses:
                    found.append(Finding("ok", f"DNS {name}", f"{target} has an address"))
                else:
                    found.append(Finding("error", f"DNS {name}", f"{target} has no A or AAAA record:"
                                         f" {who} cannot connect", f"add an A (and AAAA) record"
                                         f" for {target}"))
    return found or [Finding("ok", "DNS", "no public host to look up")]


def worst(findings: list[Finding]) -> str:
    """The gravest level among C{findings}."""
    levels = {finding.level for finding in findings}
    return "error" if "error" in levels else "warning" if "warning" in levels else "ok"

