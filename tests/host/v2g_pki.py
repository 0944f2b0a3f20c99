"""A self-made V2G PKI for the SECC tests: V2G root -> CPO sub-CA 1 -> CPO sub-CA 2 -> SECC
leaf (ECDSA P-256, as ISO 15118 uses), written as the SECC's config directory expects."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "V2G test PKI")])


def _cert(subject, key, issuer, issuer_key, ca, *, days=365, not_after=None):
    now = datetime.now(timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(days=1))
         .not_valid_after(not_after or now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(c):
    return c.public_bytes(serialization.Encoding.PEM)


def make(d, *, root_cn="V2G Root CA", leaf_expired=False):
    """Write secc_chain.pem, secc_key.pem, v2g_root.pem into d; return d."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rk, s1k, s2k, lk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert(root_cn, rk, root_cn, rk, True, days=3650)
    sub1 = _cert("CPO Sub-CA 1", s1k, root_cn, rk, True, days=1460)
    sub2 = _cert("CPO Sub-CA 2", s2k, "CPO Sub-CA 1", s1k, True, days=730)
    leaf = _cert("SECC DE*V2G*E1", lk, "CPO Sub-CA 2", s2k, False,
                 not_after=(datetime.now(timezone.utc) - timedelta(hours=1)) if leaf_expired else None)
    (d / "v2g_root.pem").write_bytes(_pem(root))
    (d / "secc_chain.pem").write_bytes(_pem(leaf) + _pem(sub2) + _pem(sub1))
    (d / "secc_key.pem").write_bytes(lk.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    (d / "secc_key.pem").chmod(0o600)
    return d
