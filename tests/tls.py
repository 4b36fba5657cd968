"""A test certificate authority made in the test, and server certificates it signs, for HTTPS
receivers that billhook trusts through billhook.tls_ca_file."""

import datetime
import ipaddress
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, name: str = "billhook test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.directory = tempfile.mkdtemp(prefix="billhook-ca-", dir="/tmp")
        os.chmod(self.directory, 0o755)
        self.pem_path = os.path.join(self.directory, "ca.pem")
        with open(self.pem_path, "wb") as f:
            f.write(self.certificate.public_bytes(serialization.Encoding.PEM))
        os.chmod(self.pem_path, 0o644)

    def server_context(self, names=("127.0.0.1", "localhost"), expired=False) -> ssl.SSLContext:
        """A server-side TLS context with a certificate for `names` (IP addresses or DNS names),
        valid now unless `expired`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_pem(names, expired))
        return context

    def server_pem(self, names=("127.0.0.1", "localhost"), expired=False) -> str:
        """A PEM file with a server certificate for `names` and its private key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        valid_until = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=7)
        alternative_names = []
        for name in names:
            try:
                alternative_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternative_names.append(x509.DNSName(name))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0])).issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10))
            .not_valid_after(valid_until)
            .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = os.path.join(self.directory, f"server-{x509.random_serial_number()}.pem")
        with open(chain, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return chain
