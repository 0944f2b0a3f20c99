"""Update-signing keys: generate, store, load, and name them.

Two algorithms:
- ES256 (ECDSA P-256 with SHA-256), the default and the one the controller verifies;
- EdDSA (Ed25519), offered for host-side use (signing and `v2g verify`); the controller
  has no SHA-512, so it does not verify Ed25519 bundles.

Files: the private key is PKCS#8 PEM (encrypted when a passphrase is given, written
with mode 0600); the public key is SubjectPublicKeyInfo PEM beside it, `KEY.pub.pem`.
The key id (COSE `kid`) is the first 8 bytes of SHA-256 over the public key's
SubjectPublicKeyInfo DER, so it can be recomputed from the public key alone.
"""

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ES256 = "es256"
ED25519 = "ed25519"
ALGORITHMS = (ES256, ED25519)

# COSE algorithm identifiers (IANA "COSE Algorithms").
COSE_ALG = {ES256: -7, ED25519: -8}
COSE_ALG_NAME = {-7: "ES256", -8: "EdDSA"}


class KeyFileError(ValueError):
    """A key file is missing, unreadable, of the wrong kind, or the passphrase is wrong."""



def generate(alg=ES256):
    """A new private key for alg ('es256' or 'ed25519')."""
    if alg == ES256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyFileError("unknown algorithm {!r}: use one of {}".format(alg, ", ".join(ALGORITHMS)))


def public_path(private_path):
    """Where the public key of private_path lives: KEY.pem -> KEY.pub.pem."""
    p = Path(private_path)
    if p.suffix == ".pem":
        return p.with_name(p.stem + ".pub.pem")
    return p.with_name(p.name + ".pub.pem")


def private_pem(key, passphrase=None):
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def public_pem(pub):
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_keypair(out, alg=ES256, passphrase=None, force=False):
    """Generate a key pair; write the private key to out and the public key beside it.

    Refuses to overwrite either file unless force. Returns (private_path, public_path, key).
    """
    out = Path(out)
    pub_out = public_path(out)
    if not force:
        for p in (out, pub_out):
            if p.exists():
                raise KeyFileError("{} exists; refusing to overwrite a key (use --force)".format(p))
    key = generate(alg)
    # The private key file is created 0600 before any byte is written to it.
    fd = os.open(str(out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key, passphrase))
    pub_out.write_bytes(public_pem(key.public_key()))
    return out, pub_out, key


def _check_kind(key, what, path):
    ok = (isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))
          and isinstance(key.curve, ec.SECP256R1)) or isinstance(
        key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey))
    if not ok:
        raise KeyFileError("{}: {} key is neither P-256 nor Ed25519".format(path, what))
    return key


def load_private(path, passphrase=None):
    """The private key in path (PEM); passphrase is bytes or None."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError("{}: cannot read private key: {}".format(path, e.strerror)) from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as e:
        # cryptography says whether a password was missing or not expected
        raise KeyFileError("{}: {}".format(path, e)) from None
    except ValueError:
        raise KeyFileError("{}: not a PEM private key, or wrong passphrase".format(path)) from None
    return _check_kind(key, "private", path)


def load_public(path):
    """The public key in path: a public key PEM, or the public half of a private key PEM."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError("{}: cannot read public key: {}".format(path, e.strerror)) from None
    if b"PRIVATE KEY" in data:
        raise KeyFileError("{}: this is a private key; give the public key (KEY.pub.pem)".format(path))
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError("{}: not a PEM public key".format(path)) from None
    return _check_kind(key, "public", path)


def algorithm(key):
    """'es256' or 'ed25519' for a private or public key."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return ES256
    return ED25519


def as_public(key):
    return key.public_key() if hasattr(key, "private_bytes") else key


def spki_der(key):
    return as_public(key).public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key):
    """COSE kid: sha256(SubjectPublicKeyInfo DER)[:8]."""
    return hashlib.sha256(spki_der(key)).digest()[:8]


def device_public_key(key):
    """The bytes the controller stores: the 65-byte uncompressed P-256 point 04||X||Y."""
    pub = as_public(key)
    if algorithm(pub) != ES256:
        raise KeyFileError("the controller verifies ES256 only; this is an Ed25519 key")
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
