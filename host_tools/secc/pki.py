"""The SECC's certificates, checked before `v2g secc` starts (docs/secc.md).

Config directory files: `secc_chain.pem` (SECC leaf, then the CPO sub-CAs, leaf first),
`secc_key.pem` (the leaf's private key), `v2g_root.pem` (the V2G root the chain ends at) and,
optional, `oem_root.pem` (vehicles' certificates are checked against it in the handshake).
"""

from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHAIN = "secc_chain.pem"
KEY = "secc_key.pem"
ROOT = "v2g_root.pem"
OEM_ROOT = "oem_root.pem"


class PkiError(Exception):
    """The SECC cannot use its certificates; the message names the file and why."""


def _name(cert):
    return cert.subject.rfc4514_string()


def check(config_dir, now=None):
    """The chain's leaf subject when the SECC's chain, key and root fit; PkiError otherwise."""
    d = Path(config_dir)
    now = now or datetime.now(timezone.utc)
    for f in (CHAIN, KEY, ROOT):
        if not (d / f).is_file():
            raise PkiError(f"{d / f}: missing (TLS needs the SECC chain, its key and the V2G root; "
                           "or start with --no-tls)")
    try:
        chain = x509.load_pem_x509_certificates((d / CHAIN).read_bytes())
    except ValueError as e:
        raise PkiError(f"{d / CHAIN}: not PEM certificates ({e})") from e
    try:
        roots = x509.load_pem_x509_certificates((d / ROOT).read_bytes())
    except ValueError as e:
        raise PkiError(f"{d / ROOT}: not a PEM certificate ({e})") from e
    try:
        key = serialization.load_pem_private_key((d / KEY).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise PkiError(f"{d / KEY}: not an unencrypted PEM private key ({e})") from e
    for f, certs in ((CHAIN, chain), (ROOT, roots)):
        for c in certs:
            if now < c.not_valid_before_utc:
                raise PkiError(f"{d / f}: {_name(c)} is not valid before {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
            if now > c.not_valid_after_utc:
                raise PkiError(f"{d / f}: {_name(c)} expired {c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    leaf = chain[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise PkiError(f"{d / KEY}: does not belong to the certificate {_name(leaf)} in {d / CHAIN}")
    for child, parent in zip(chain, chain[1:] + roots[:1]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, Exception) as e:
            raise PkiError(f"{d / CHAIN}: {_name(child)} is not issued by {_name(parent)} "
                           f"({type(e).__name__}); the chain must run leaf first up to {d / ROOT}") from e
    return _name(leaf)
