"""
C{invitesrvctl check}: each check finds what it is there to find, says how
to fix it, and stays quiet about what is right.
"""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnsserver import Dnsmasq, needsDnsmasq

from invitesrv import check
from invitesrv.config import Config, HostOptions

NOW = datetime.datetime(2026, 12, 3, tzinfo=datetime.timezone.utc)


def writeCertificate(directory, names, days=90, issuer=None, key=None):
    """A certificate for C{names} (signed by C{issuer}, a (cert, key) pair, or self-signed)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuerName, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuerName)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - datetime.timedelta(days=1))
                   .not_valid_after(NOW + datetime.timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                  critical=False)
                   .sign(signer, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return certificate, key


def configFor(tmp_path, hosts=("chat.example.org",), **changes) -> Config:
    return Config(hosts={h: HostOptions(admins=(f"admin@{h}",)) for h in hosts},
                  data_dir=tmp_path / "data", tls_certificate=tmp_path / "tls" / "cert.pem",
                  tls_key=tmp_path / "tls" / "key.pem", **changes)


def levels(findings, topic=None):
    return [(f.level, f.text) for f in findings if topic is None or f.topic == topic]


def test_certificateFindings(tmp_path):
    """Expired, expiring, self-signed, not naming a host, a key of another certificate."""
    ca = writeCertificate(tmp_path / "ca", ["Test CA"], days=3650)
    config = configFor(tmp_path, hosts=("chat.example.org", "other.example.org"))
    writeCertificate(tmp_path / "tls", ["chat.example.org"], days=90, issuer=ca)
    found = check.checkCertificate(config, NOW)
    assert levels(found) == [("error", "does not name other.example.org")]
    assert found[0].fix

    config = configFor(tmp_path)
    assert levels(check.checkCertificate(config, NOW))[0][0] == "ok"
    assert [f.level for f in check.checkCertificate(
        config, NOW + datetime.timedelta(days=80))] == ["warning"]
    assert levels(check.checkCertificate(config, NOW + datetime.timedelta(days=91)))[0][1].startswith(
        "expired on")

    writeCertificate(tmp_path / "tls", ["chat.example.org"])
    assert [f.text for f in check.checkCertificate(config, NOW)] == [
        "self-signed: clients warn, and other servers fall back to dialback or refuse"]

    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "tls" / "key.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert any("is not the key of" in f.text and f.level == "error"
               for f in check.checkCertificate(config, NOW))


def test_dataDirFindings(tmp_path):
    """Group- or world-readable secrets are errors, each with its chmod; a private dir is ok."""
    config = configFor(tmp_path)
    config.data_dir.mkdir(mode=0o755)
    (config.data_dir / "invitesrv.sqlite3").write_bytes(b"")
    (config.data_dir / "invitesrv.sqlite3").chmod(0o644)
    found = check.checkDataDir(config)
    assert [f.fix for f in found] == [f"chmod 700 {config.data_dir}",
                                      f"chmod 600 {config.data_dir / 'invitesrv.sqlite3'}"]
    config.data_dir.chmod(0o700)
    (config.data_dir / "invitesrv.sqlite3").chmod(0o600)
    assert levels(check.checkDataDir(config))[0][0] == "ok"


def test_portFindings(tmp_path):
    """A port another program holds is an error naming the listener; with the server up, not checked."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        config = configFor(tmp_path, c2s=(f"tcp:{port}:interface=127.0.0.1",))
        found = check.checkPorts(config, running=False)
        assert [(f.level, f.topic) for f in found] == [("error", "listen.c2s")]
        assert "taken by another program" in found[0].text and "prosody" in found[0].fix
        assert levels(check.checkPorts(config, running=True)) == [("ok", "the server is running")]
    finally:
        taken.close()
    assert levels(check.checkPorts(config, running=False)) == [("ok", "every listener's port is free")]


def test_configFindings(tmp_path):
    """Open registration, plain-text logins, an HTTP listener without public URL, a local name."""
    config = configFor(tmp_path, hosts=("localhost",), require_encryption=False,
                       http=("tcp:5280",))
    config = replace(config, hosts={"localhost": HostOptions(allow_registration=True,
                                                             registration_invite_only=False)})
    texts = [f.text for f in check.checkConfig(config)]
    assert any("not a public DNS name" in t for t in texts)
    assert any("anybody may register" in t for t in texts)
    assert any("without TLS" in t for t in texts)
    assert any("no public_url" in t for t in texts)
    assert check.worst(check.checkConfig(config)) == "error"


def test_checkCommand(tmp_path):
    """The command prints each finding with its fix and exits 1 on an error."""
    config = tmp_path / "invitesrv.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n[listen]\nc2s = ["tcp:0"]\n')
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--config", str(config),
                             "--create", "check", "config", "datadir"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "WARNING  host localhost: not a public DNS name" in result.stdout, result.stdout
    assert "fix: " in result.stdout
    (tmp_path / "data").chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--config", str(config),
                             "check", "datadir"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 1 and f"chmod 700 {tmp_path / 'data'}" in result.stdout, result.stdout
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--config", str(config),
                             "check", "nonsense"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2 and "is not one of" in result.stderr


@needsDnsmasq
def test_dnsFindings(tmp_path):
    """
    Against a real DNS server: a host with its SRV and address records is
    fine; one with neither gets the SRV record to add and an error for the
    missing address, each with the record to publish.
    """
    dnsmasq = Dnsmasq(tmp_path, ["local=/example.net/",
                                 "srv-host=_xmpp-client._tcp.chat.example.net,xmpp.example.net,5222,0,5",
                                 "srv-host=_xmpp-server._tcp.chat.example.net,xmpp.example.net,5269,0,5",
                                 "host-record=xmpp.example.net,127.0.0.1"]).start()
    try:
        config = tmp_path / "invitesrv.toml"
        config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                          '[listen]\nc2s = ["tcp:0"]\ns2s = ["tcp:0"]\n'
                          f'[s2s]\ndns_servers = ["{dnsmasq.address}"]\n'
                          '[hosts."chat.example.net"]\n[hosts."bare.example.net"]\n'
                          '[hosts."chat.example.net".components.groups]\nmodules = ["ping"]\n')
        result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--config", str(config),
                                 "--create", "check", "dns"], capture_output=True, text=True,
                                timeout=60, check=False)
    finally:
        dnsmasq.stop()
    out = result.stdout
    assert "OK       DNS _xmpp-client._tcp.chat.example.net: xmpp.example.net has an address" in out, out
    assert "OK       DNS _xmpp-server._tcp.chat.example.net: xmpp.example.net has an address" in out
    assert ("WARNING  DNS _xmpp-client._tcp.bare.example.net: no SRV record" in out
            and "add _xmpp-client._tcp.bare.example.net. SRV 0 5 5222 bare.example.net." in out)
    assert "ERROR    DNS _xmpp-server._tcp.bare.example.net: bare.example.net has no A or AAAA" in out
    assert "WARNING  DNS _xmpp-server._tcp.groups.chat.example.net: no SRV record" in out
    assert "_xmpp-client._tcp.groups" not in out
    assert result.returncode == 1
