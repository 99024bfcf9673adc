"""
Which names make a peer's certificate valid for an XMPP domain (RFC 6120
section 13.7, RFC 6125), with certificates made here by a test CA: a DNS-ID,
an SRV-ID (C{_xmpp-server} or C{_xmpps-server}) or an XmppAddr of the
stream's domain; never a DNS-ID of the host an SRV record pointed to. The
same certificates over real TLS and DNS are in C{test_s2s_dns.py}.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from test_s2s import writeCertificates

from invitesrv.xmpp.s2s.tls import ID_ON_XMPPADDR, certificateNames, xmppAddrs

ID_ON_DNS_SRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")


def der(tag: int, text: str) -> bytes:
    """A DER string (tag 22 IA5String, 12 UTF8String) holding C{text}."""
    data = text.encode("utf-8")
    if len(data) < 128:
        return bytes([tag, len(data)]) + data
    return bytes([tag, 0x81, len(data)]) + data


def srvID(name: str) -> x509.OtherName:
    """An SRV-ID such as C{_xmpp-server.example.org} (otherName id-on-dnsSRV)."""
    return x509.OtherName(ID_ON_DNS_SRV, der(0x16, name))


def xmppAddr(address: str) -> x509.OtherName:
    """An XmppAddr (otherName id-on-xmppAddr)."""
    return x509.OtherName(ID_ON_XMPPADDR, der(0x0C, address))


LONG = f"{'a' * 60}.{'b' * 60}.test"  # a DER length in long form

NAMES = {
    "srv": [srvID("_xmpp-server.s.test")],
    "xmpps": [srvID("_xmpps-server.s.test")],
    "otherservice": [srvID("_imap.s.test")],
    "xmppaddr": [xmppAddr("X.test")],
    "useraddr": [xmppAddr("user@x.test")],
    "idnaddr": [xmppAddr("bücher.test")],
    "longaddr": [xmppAddr(LONG)],
    "targethost": [x509.DNSName("xmpp.h.test")],
    "wildcard": [x509.DNSName("*.w.test")],
    "dnsid": [x509.DNSName("d.test")],
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """The certificates of L{NAMES}, loaded, from one test CA."""
    directory = tmp_path_factory.mktemp("identity")
    writeCertificates(directory, list(NAMES), NAMES)
    return {name: x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes())
            for name in NAMES}


@pytest.mark.parametrize("name, domain, valid", [
    ("srv", "s.test", True),
    ("srv", "xmpp.s.test", False),
    ("xmpps", "s.test", True),
    ("otherservice", "s.test", False),
    ("xmppaddr", "x.test", True),
    ("xmppaddr", "other.test", False),
    ("useraddr", "x.test", False),
    ("idnaddr", "bücher.test", True),
    ("longaddr", LONG, True),
    ("targethost", "h.test", False),
    ("targethost", "xmpp.h.test", True),
    ("wildcard", "chat.w.test", True),
    ("wildcard", "w.test", False),
    ("dnsid", "d.test", True),
    ("dnsid", "s.test", False),
])
def test_certificateNames(certificates, name, domain, valid):
    """Each kind of name is valid for its own domain only; the SRV target's DNS-ID is not the domain's."""
    assert certificateNames(certificates[name], domain) is valid


def test_xmppAddrsDecoded(certificates):
    """XmppAddr values are read from their DER UTF8String, short and long form."""
    assert xmppAddrs(certificates["xmppaddr"]) == ["X.test"]
    assert xmppAddrs(certificates["longaddr"]) == [LONG]
    assert xmppAddrs(certificates["dnsid"]) == []
