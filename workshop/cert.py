"""The hub's TLS certificate: self-signed for this machine, or the instructor's own (run as root).

    sudo make workshop-cert                                   # self-signed for this machine's names and IPs
    sudo make workshop-cert NAMES="spark.local 192.168.1.20"  # ...plus the names/IPs the room will type
    sudo make workshop-cert CERT=/path/fullchain.pem KEY=/path/privkey.pem   # the instructor's own

Both end in ``$WORKSHOP_STATE/tls/cert.pem`` and ``key.pem`` (key 0600), where
``workshop/jupyterhub_config.py`` finds them, and print the certificate's SHA-256 fingerprint: put it
on the projector; participants compare it with what their browser shows before they accept the
self-signed certificate (a fingerprint that differs means someone is in between: do not log in).

Uses the ``cryptography`` package the course already pins. An existing certificate is kept (the room
may already trust its fingerprint) unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import socket
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def machine_names() -> list[str]:
    """This machine's host names and addresses, as the room could type them (loopback included)."""
    found = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    try:  # the address of the default route: a UDP "connect" sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            found.append(s.getsockname()[0])
    except OSError:
        pass
    return list(dict.fromkeys(n for n in found if n))


def _san(names) -> x509.SubjectAlternativeName:
    entries = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _write(out: Path, cert: x509.Certificate, key_pem: bytes) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)  # also when the file existed with wider bits
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def self_signed(out: Path, names: list[str], days: int = 30) -> tuple[Path, Path, str]:
    """A P-256 key and a self-signed server certificate valid for ``names`` (DNS names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ftlab workshop")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_path, key_path = _write(out, cert, key_pem)
    return cert_path, key_path, fingerprint(cert)


def import_own(out: Path, cert_file: str, key_file: str) -> tuple[Path, Path, str]:
    """Check the instructor's certificate and key (they match, the certificate is valid now) and copy them."""
    chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"{key_file}: not an unencrypted PEM private key ({e}). "
                         f"Fix: openssl pkey -in {key_file} -out key-plain.pem, then pass that.")
    leaf = chain[0]
    if leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise SystemExit(f"{key_file} is not the key of {cert_file} (first certificate in the file). "
                         "Fix: pass the matching pair.")
    now = dt.datetime.now(dt.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise SystemExit(f"{cert_file} is valid from {leaf.not_valid_before_utc} to {leaf.not_valid_after_utc}, "
                         f"not now ({now:%Y-%m-%d %H:%M} UTC). Fix: renew it, or run without CERT/KEY for a self-signed one.")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = Path(key_file).read_bytes()
    cert_path, key_path = _write(out, leaf, key_pem)
    # keep the intermediates after the leaf, as the file had them: browsers need the whole chain
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    return cert_path, key_path, fingerprint(leaf)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.environ.get("WORKSHOP_STATE") or "/var/lib/ftlab-workshop", "tls"),
                        help="folder for cert.pem and key.pem (default: $WORKSHOP_STATE/tls)")
    parser.add_argument("--name", action="append", default=[],
                        help="an extra DNS name or IP the room will use (repeatable); this machine's are always in")
    parser.add_argument("--days", type=int, default=30, help="validity of a self-signed certificate (default 30)")
    parser.add_argument("--cert", help="the instructor's own certificate (PEM, chain after the leaf)")
    parser.add_argument("--key", help="its private key (PEM, unencrypted)")
    parser.add_argument("--force", action="store_true", help="replace an existing certificate")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if bool(args.cert) != bool(args.key):
        raise SystemExit("workshop-cert: give both --cert and --key (CERT= and KEY= for make), or neither.")
    if (out / "cert.pem").exists() and not args.force:
        cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
        print(f"kept the existing certificate {out / 'cert.pem'} (--force to replace it; the room may trust it already)\n"
              f"SHA-256 fingerprint: {fingerprint(cert)}")
        return 0
    if args.cert:
        cert_path, key_path, fp = import_own(out, args.cert, args.key)
        print(f"installed the certificate {args.cert} as {cert_path} (key {key_path}, mode 0600)")
    else:
        names = [*args.name, *machine_names()]
        cert_path, key_path, fp = self_signed(out, names, args.days)
        print(f"self-signed certificate for {', '.join(dict.fromkeys(names))}\n"
              f"  {cert_path}  (key {key_path}, mode 0600), valid {args.days} days")
    print(f"SHA-256 fingerprint (put it on the projector):\n  {fp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
