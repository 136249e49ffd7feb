"""HTTPS for sandboxes: a throwaway certificate authority and a mixin that serves a sandbox over TLS.

Some clients refuse plain HTTP outright (azure-keyvault-secrets sends no bearer token to an ``http://`` URL, and
has no opt-out), so their sandboxes must speak TLS with a certificate the client really verifies. ``make_authority``
writes a CA and a server certificate for 127.0.0.1 and localhost; the client trusts the CA file the way it would in
production (``REQUESTS_CA_BUNDLE`` for requests-based clients, an ``ssl`` context otherwise), never by turning
verification off. Test and demo infrastructure only.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

HOSTS = ("127.0.0.1", "localhost")
#: The environment variable requests (and so azure-core and MSAL) reads for the CA bundle it trusts.
CA_BUNDLE_VARIABLE = "REQUESTS_CA_BUNDLE"


@dataclass(frozen=True)
class CertificateAuthority:
    """Files of a local CA and of one server certificate it signed (PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """The context a sandbox serves with (TLS 1.2 or newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this CA only (for tests using ``urllib``/``http.client``)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_authority(directory: Path, hosts: tuple[str, ...] = HOSTS, *, days: int = 7) -> CertificateAuthority:
    """Write ``ca.pem``, ``server.pem`` and ``server-key.pem`` (owner-only) into ``directory`` and return them.

    EC P-256 keys (fast to make); the CA is constrained to signing certificates, the server certificate names
    ``hosts`` (IP addresses as IP SANs) and is for server authentication only, so strict verifiers accept it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Kosli rotation sandbox CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(x509, cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(x509, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    authority = CertificateAuthority(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    authority.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    authority.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(authority.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as key_out:
        key_out.write(key_pem)
    return authority


def _key_usage(x509: Any, *, cert_sign: bool) -> Any:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@contextlib.contextmanager
def trusted_by_requests(ca_file: Path, directory: Path) -> Iterator[dict[str, str]]:
    """Make requests-based clients in this process trust ``ca_file`` (added to any bundle already set), and
    restore the environment afterwards. Yields the variables set, for child processes (Airflow workers)."""
    previous = os.environ.get(CA_BUNDLE_VARIABLE)
    bundle = directory / "ca-bundle.pem"
    parts = [Path(previous).read_bytes()] if previous and Path(previous).is_file() else []
    bundle.write_bytes(b"\n".join([*parts, ca_file.read_bytes()]))
    os.environ[CA_BUNDLE_VARIABLE] = str(bundle)
    try:
        yield {CA_BUNDLE_VARIABLE: str(bundle)}
    finally:
        if previous is None:
            os.environ.pop(CA_BUNDLE_VARIABLE, None)
        else:
            os.environ[CA_BUNDLE_VARIABLE] = previous


class TlsServing:
    """Mixin placed before ``SandboxServer``: serves HTTPS when ``tls_context`` is set (``url`` says https).

    Each accepted connection is wrapped server-side without an eager handshake, so the handshake runs in the
    connection's own handler thread, never in the accept loop (a client that connects and says nothing stalls
    only itself). The wrapping is installed right after the server binds and before ``start`` returns; with the
    default free port no client can connect earlier.
    """

    tls_context: ssl.SSLContext | None = None
    _httpd: Any

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        started = super().start(host, port)  # type: ignore[misc]
        context = self.tls_context
        if context is not None:
            httpd = self._httpd
            plain_accept, plain_error = httpd.get_request, httpd.handle_error

            def accept() -> tuple[Any, Any]:
                connection, address = plain_accept()
                return context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

            def handle_error(request: Any, client_address: Any) -> None:
                import sys

                if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):  # a client refusing our CA
                    plain_error(request, client_address)

            httpd.get_request, httpd.handle_error = accept, handle_error
        return started

    @property
    def url(self) -> str:
        url: str = super().url  # type: ignore[misc]
        return "https://" + url.removeprefix("http://") if self.tls_context is not None else url
