"""
A certificate per host: the server picks it by the name a client asks for
(SNI), subdomains a host's certificate names included, with the global or
first host's certificate for clients that ask for none; outgoing
server-to-server streams present their local domain's; C{invitesrvctl cert
import} copies certbot's files in, skipping what does not fit, and has the
running server use them.
"""

from __future__ import annotations

import stat

from conftest import RunningServer
from OpenSSL import SSL
from testca import CertificateAuthority, pemKey, servedCertificate

from invitesrv.config import parseConfig
from invitesrv.tls import loadServerTLS
from invitesrv.xmpp.s2s.tls import PeerTLS

HOSTS = '[hosts."a.test"]\n[hosts."b.test"]\n'


def subject(certificate) -> str:
    return certificate.subject.rfc4514_string()


def test_sniPicksEachHostsCertificate(tmp_path):
    """
    a.test's certificate (certbot layout, also naming groups.a.test) and
    b.test's (Prosody layout) are each served for their names; no SNI, or an
    unknown name, gets the first host's.
    """
    ca = CertificateAuthority()
    server = RunningServer(tmp_path, 'c2s_direct_tls = ["tcp:0:interface=127.0.0.1"]\n' + HOSTS)
    tls = server.dataDir / "tls"
    ca.writeCertbot(tls, "a.test", ["a.test", "groups.a.test"])
    ca.write(tls / "b.test.crt", tls / "b.test.key", ["b.test"])
    server.start()
    try:
        port = server.listenerPort("Direct TLS clients (XEP-0368)")
        assert subject(servedCertificate(port, "a.test")) == "CN=a.test"
        assert subject(servedCertificate(port, "b.test")) == "CN=b.test"
        assert subject(servedCertificate(port, "groups.a.test")) == "CN=a.test"
        assert subject(servedCertificate(port, None)) == "CN=a.test"
        assert subject(servedCertificate(port, "elsewhere.test")) == "CN=a.test"
    finally:
        server.stop()


def test_reloadKeepsACertificateThatNoLongerLoads(tmp_path):
    """
    A reload after a.test's renewal and a b.test renewal written halfway (a
    key of another certificate): a.test's new certificate is served, b.test
    keeps the one in use, and the reload says so instead of refusing both.
    """
    ca = CertificateAuthority()
    server = RunningServer(tmp_path, 'c2s_direct_tls = ["tcp:0:interface=127.0.0.1"]\n' + HOSTS)
    tls = server.dataDir / "tls"
    ca.writeCertbot(tls, "a.test")
    oldB = ca.writeCertbot(tls, "b.test")
    server.start()
    try:
        port = server.listenerPort("Direct TLS clients (XEP-0368)")
        newA = ca.writeCertbot(tls, "a.test")
        ca.writeCertbot(tls, "b.test")
        (tls / "b.test" / "privkey.pem").write_bytes(pemKey(CertificateAuthority().issue(["b.test"])[1]))
        lines = server.ctl("reload").stdout.splitlines()
        assert any(line.startswith("tls: certificate of a.test: serial ") for line in lines), lines
        assert any(line.startswith("tls: certificate of b.test does not load, keeping the one in"
                                   " use: ") and "is not the key of" in line for line in lines), lines
        assert servedCertificate(port, "a.test").serial_number == newA.serial_number
        assert servedCertificate(port, "b.test").serial_number == oldB.serial_number
        assert "[invitesrv.reload#error] Reload: tls: certificate of b.test does not load" in server.log()
    finally:
        server.stop()


def test_globalCertificateIsTheDefault(tmp_path):
    """With C{[tls] certificate} set, clients without SNI get it; hosts still get theirs."""
    ca = CertificateAuthority()
    ca.writeCertbot(tmp_path / "certs", "a.test")
    ca.write(tmp_path / "global.crt", tmp_path / "global.key", ["chat.test"])
    config = parseConfig({"server": {"data_dir": str(tmp_path / "data")}, "hosts": {"a.test": {}},
                          "tls": {"certificates": str(tmp_path / "certs"),
                                  "certificate": str(tmp_path / "global.crt"),
                                  "key": str(tmp_path / "global.key")}})
    options = loadServerTLS(config, ["a.test"])
    assert subject(options.certificate.to_cryptography()) == "CN=chat.test"
    assert subject(options.forName("a.test").certificate.to_cryptography()) == "CN=a.test"
    assert subject(options.forName("A.TEST.").certificate.to_cryptography()) == "CN=a.test"


def test_outgoingS2SPresentsTheLocalDomainsCertificate(tmp_path):
    """A stream from b.test shows b.test's certificate, one from a.test a.test's."""
    ca = CertificateAuthority()
    for host in ("a.test", "b.test"):
        ca.writeCertbot(tmp_path / "certs", host)
    config = parseConfig({"server": {"data_dir": str(tmp_path / "data")},
                          "hosts": {"a.test": {}, "b.test": {}},
                          "tls": {"certificates": str(tmp_path / "certs")}})
    peer = PeerTLS(loadServerTLS(config, ["a.test", "b.test"]))
    for local in ("a.test", "b.test"):
        connection = SSL.Connection(peer.client("remote.test", local).context, None)
        assert subject(connection.get_certificate().to_cryptography()) == f"CN={local}"


def test_certImport(tmp_path):
    """
    From a certbot-like tree: a.test and its subdomain groups.a.test are
    imported (key 0600) and served after the reload; b.test (a key of another certificate) and c.test (a
    certificate not naming it) are skipped with the reason.
    """
    ca = CertificateAuthority()
    live = tmp_path / "live"
    imported = ca.writeCertbot(live, "a.test")
    ca.writeCertbot(live, "b.test")
    other = CertificateAuthority().issue(["b.test"])[1]
    (live / "b.test" / "privkey.pem").write_bytes(pemKey(other))
    ca.writeCertbot(live, "c.test", ["other.test"])
    groups = ca.writeCertbot(live, "groups.a.test")
    (tmp_path / "server").mkdir()
    server = RunningServer(tmp_path / "server", 'c2s_direct_tls = ["tcp:0:interface=127.0.0.1"]\n'
                           + HOSTS + '[hosts."c.test"]\n[hosts."d.test"]\n')
    server.start()
    try:
        port = server.listenerPort("Direct TLS clients (XEP-0368)")
        assert servedCertificate(port, "a.test").serial_number != imported.serial_number
        result = server.ctl("cert", "import", str(live))
        lines = result.stdout.splitlines()
        target = server.dataDir / "tls" / "a.test"
        assert f"Imported a.test from {live / 'a.test' / 'fullchain.pem'} into {target}" in lines
        b = live / "b.test"
        assert (f"Skipped b.test ({b / 'fullchain.pem'}): {b / 'privkey.pem'} is not the key"
                f" of {b / 'fullchain.pem'}") in lines
        assert f"Skipped c.test ({live / 'c.test' / 'fullchain.pem'}): does not name c.test" in lines
        assert any(line.startswith("Skipped d.test: no ") for line in lines)
        assert any(line.startswith("Reloaded: tls: certificate of a.test: serial none -> ")
                   for line in lines)
        assert f"Imported groups.a.test from {live / 'groups.a.test' / 'fullchain.pem'} into" \
               f" {server.dataDir / 'tls' / 'groups.a.test'}" in lines
        assert stat.S_IMODE((target / "privkey.pem").stat().st_mode) == 0o600
        assert servedCertificate(port, "a.test").serial_number == imported.serial_number
        assert servedCertificate(port, "groups.a.test").serial_number == groups.serial_number
        assert not (server.dataDir / "tls" / "b.test").exists()
    finally:
        server.stop()


def test_certImportBeforeTheFirstStart(tmp_path):
    """
    On a new installation (certbot's first deploy hook, before the server
    ever ran) the import needs no database: it copies the files for the
    first start, and creates no database either.
    """
    ca = CertificateAuthority()
    ca.writeCertbot(tmp_path / "live", "a.test")
    server = RunningServer(tmp_path, HOSTS)
    result = server.ctl("cert", "import", str(tmp_path / "live"))
    assert "The server is not running: it uses them from its next start" in result.stdout
    assert "(server not running)" in result.stderr
    assert (server.dataDir / "tls" / "a.test" / "fullchain.pem").is_file()
    assert not (server.dataDir / "invitesrv.sqlite3").exists(), list(server.dataDir.iterdir())


def test_checkLooksAtEachHostsCertificate(tmp_path):
    """
    C{invitesrvctl check} checks a host's own certificate for that host
    (here: its key is another's) and the default one for the other hosts.
    """
    from invitesrv import check
    ca = CertificateAuthority()
    ca.writeCertbot(tmp_path / "certs", "a.test")
    (tmp_path / "certs" / "a.test" / "privkey.pem").write_bytes(pemKey(ca.issue(["a.test"])[1]))
    ca.write(tmp_path / "global.crt", tmp_path / "global.key", ["b.test"])
    config = parseConfig({"server": {"data_dir": str(tmp_path / "data")},
                          "hosts": {"a.test": {}, "b.test": {}},
                          "tls": {"certificates": str(tmp_path / "certs"),
                                  "certificate": str(tmp_path / "global.crt"),
                                  "key": str(tmp_path / "global.key")}})
    found = [(f.level, f.text) for f in check.checkCertificate(config)]
    own = tmp_path / "certs" / "a.test"
    assert found == [
        ("error", f"a.test: {own / 'privkey.pem'} is not the key of {own / 'fullchain.pem'}"),
        ("ok", f"valid for b.test until {ca.validity[1]:%Y-%m-%d}")]
