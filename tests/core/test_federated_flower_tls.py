"""Flower over TLS on loopback, with certificates made here: a server and three sites complete a
round over an encrypted channel, and a site given another CA fails fast with a clear ScalpelError."""

import datetime
import ipaddress
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("flwr")
pytest.importorskip("cryptography")

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from scalpel.core.errors import ScalpelError  # noqa: E402
from scalpel.core.federated.flower import connect, serve  # noqa: E402
from scalpel.core.federated.server import Coordinator, RoundRules  # noqa: E402

from federated_toy import SiteThread, free_port, make_clients, warm_up  # noqa: E402


def _certificate(subject, issuer, public_key, signing_key, extensions):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def authority(folder, name):
    """A self-signed CA: (its key, its certificate, the certificate's PEM path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = _certificate(subject, subject, key.public_key(), key, [(x509.BasicConstraints(ca=True, path_length=None), True)])
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def server_certificate(folder, ca_key, ca_cert):
    """A server certificate for localhost and 127.0.0.1 signed by the CA: (certificate PEM, key PEM) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_cert.subject, key.public_key(),
                        ca_key, [(names, False), (x509.BasicConstraints(ca=False, path_length=None), True)])
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return folder / "server.pem", folder / "server.key"


def test_flower_server_and_three_sites_complete_a_round_over_tls(tmp_path):
    ca_key, ca_cert, ca = authority(tmp_path, "ca")
    cert, key = server_certificate(tmp_path, ca_key, ca_cert)
    warm_up(tmp_path / "warm")
    address = f"127.0.0.1:{free_port()}"
    clients = make_clients(tmp_path / "clients")
    sites = [SiteThread(address, c, root_certificate=ca) for c in clients]
    for site in sites:
        site.start()
    coordinator = Coordinator("exact", RoundRules(quorum=3, timeout=60), tmp_path / "server", total_sites=3)
    history = serve(address, coordinator, 1, expected_sites=3, certificates=(ca, cert, key))
    for site in sites:
        site.join(30)
    assert [sorted(h["sites"]) for h in history] == [["site0", "site1", "site2"]]
    assert [s.error for s in sites] == [None, None, None] and not any(s.is_alive() for s in sites)


def test_a_site_trusting_another_ca_fails_fast_with_a_clear_error(tmp_path):
    """The server presents a certificate of CA "ca"; the site trusts only CA "other". A bare gRPC
    TLS server is enough: the handshake fails before any Flower message."""
    ca_key, ca_cert, _ = authority(tmp_path, "ca")
    cert, key = server_certificate(tmp_path, ca_key, ca_cert)
    _, _, other = authority(tmp_path, "other")
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        site = make_clients(tmp_path / "clients", k=1)[0]
        with pytest.raises(ScalpelError, match="TLS handshake.*other.pem.*--root-certificate"):
            connect(f"127.0.0.1:{port}", site, root_certificate=other, max_retries=1, max_wait_time=5)
    finally:
        server.stop(0)


def test_no_server_gives_a_clear_error_after_the_bounded_wait(tmp_path):
    site = make_clients(tmp_path, k=1)[0]
    with pytest.raises(ScalpelError, match="never reached the federation server.*scalpel federated server"):
        connect(f"127.0.0.1:{free_port()}", site, max_retries=1, max_wait_time=3)
