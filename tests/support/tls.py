"""Certificates for TLS redis-servers, made in the test: a private CA (trustme), the
server's and a client's certificates issued by it, and a self-signed server certificate
that no CA vouches for."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import redis
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.redis_servers import PrivateRedis

HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertFiles:
    """One certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS test needs on disk: the CA, the server's pair, a client's pair."""

    ca: Path
    server: CertFiles
    client: CertFiles

    @classmethod
    def make(cls, directory: Path, name: str = "ca") -> TlsFiles:
        """A new CA under ``directory``, with a server certificate for 127.0.0.1 and
        localhost and a client certificate (for servers that require one)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca_file = directory / f"{name}.crt"
        ca.cert_pem.write_to_path(str(ca_file))
        return cls(
            ca_file,
            _write(ca.issue_cert(*HOSTS), directory / f"{name}-server"),
            _write(ca.issue_cert("taskhub-client"), directory / f"{name}-client"),
        )


def self_signed(directory: Path) -> CertFiles:
    """A server certificate signed by its own key: no CA anyone has vouches for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed redis")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOSTS[0]))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(directory / "self-signed.crt", directory / "self-signed.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _write(leaf: trustme.LeafCert, stem: Path) -> CertFiles:
    files = CertFiles(stem.with_suffix(".crt"), stem.with_suffix(".key"))
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def server_tls_options(tls: TlsFiles, server: CertFiles, *, client_certs: bool) -> list[str]:
    """redis-server's options to serve TLS only (``--port 0``), on its ``--tls-port``."""
    return [
        "--port",
        "0",
        "--tls-cert-file",
        str(server.cert),
        "--tls-key-file",
        str(server.key),
        "--tls-ca-cert-file",
        str(tls.ca),
        "--tls-auth-clients",
        "yes" if client_certs else "no",
    ]


class TlsRedis(PrivateRedis):
    """A private redis-server that speaks only TLS, with ``server``'s certificate (the
    CA's by default); ``client_certs``: it requires a client certificate (mutual TLS)."""

    def __init__(
        self,
        directory: Path,
        tls: TlsFiles,
        *,
        server: CertFiles | None = None,
        client_certs: bool = False,
    ) -> None:
        super().__init__(directory)
        self.tls = tls
        self.server = server or tls.server
        self.client_certs = client_certs

    def options(self) -> list[str]:
        tls = server_tls_options(self.tls, self.server, client_certs=self.client_certs)
        return [*super().options(), *tls, "--tls-port", str(self.port)]

    def tls_url(self, **arguments: str) -> str:
        query = "&".join(f"{name}={value}" for name, value in arguments.items())
        return f"rediss://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def client(self) -> redis.Redis:
        """A client that trusts the server's certificate and has one of its own."""
        return redis.Redis(
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(
                self.server.cert if self.server is not self.tls.server else self.tls.ca
            ),
            ssl_certfile=str(self.tls.client.cert),
            ssl_keyfile=str(self.tls.client.key),
        )
