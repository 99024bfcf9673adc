"""The self-signed certificate made at first start, for every served host."""

from __future__ import annotations

from cryptography import x509

from invitesrv.tls import generateSelfSigned


def test_internationalisedHostNames(tmp_path):
    """A host with a non-ASCII name gets its A-label in the certificate, as TLS clients check."""
    generateSelfSigned(tmp_path / "c.pem", tmp_path / "k.pem", ["bücher.test", "localhost"])
    certificate = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.test", "localhost"]
