"""COSE_Sign1 (RFC 9052) verification for signed updates, ES256 only.

The controller accepts exactly what the host's signer (signing/bundle.py) makes:
a tagged COSE_Sign1 in deterministic CBOR, alg and kid in the protected header,
an empty unprotected header, and a raw r||s P-256 signature. Anything else is
refused with CoseError naming the first check that failed; the caller maps it to
V2G-601. alg is only trusted from the protected header, because the unprotected
header is not covered by the signature.
"""

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

import hashlib

from core import cbor

COSE_SIGN1_TAG = const(18)
_H_ALG = const(1)
_H_KID = const(4)
_ALG_ES256 = const(-7)
_ALG_EDDSA = const(-8)
MAX_COSE_LEN = const(8192)
# tag -> array -> unprotected map: three levels; one spare.
MAX_DEPTH = const(4)


class CoseError(ValueError):
    """The COSE_Sign1 is malformed or does not verify; str() starts with the failed check."""


def _fail(what, msg):
    raise CoseError("{}: {}".format(what, msg))


def _loads(data, what):
    try:
        return cbor.loads(data, MAX_DEPTH, False, True)
    except cbor.CBORError as e:
        _fail("cbor", "{}: {}".format(what, e))


def sig_structure(protected, payload):
    """The bytes that were signed: ["Signature1", protected, external_aad b"", payload]."""
    return cbor.dumps(["Signature1", protected, b"", payload])


def parse_sign1(data):
    """(protected bytes, protected map, payload, signature) of a COSE_Sign1, structure checked."""
    if len(data) > MAX_COSE_LEN:
        _fail("cose", "{} bytes, above {}".format(len(data), MAX_COSE_LEN))
    obj = _loads(data, "COSE_Sign1")
    if not isinstance(obj, cbor.Tag) or obj.tag != COSE_SIGN1_TAG:
        _fail("cose", "not a tagged COSE_Sign1 (CBOR tag 18)")
    v = obj.value
    if not isinstance(v, list) or len(v) != 4:
        _fail("cose", "COSE_Sign1 must be an array of 4 items")
    protected = v[0]
    unprotected = v[1]
    payload = v[2]
    signature = v[3]
    if type(protected) is not bytes or type(payload) is not bytes or type(signature) is not bytes:
        _fail("cose", "protected header, payload and signature must be byte strings")
    if not isinstance(unprotected, dict):
        _fail("cose", "unprotected header must be a map")
    if unprotected:
        if _H_ALG in unprotected:
            _fail("alg", "alg in the unprotected header; accepted only when protected")
        _fail("cose", "unprotected header must be empty")
    hdr = _loads(protected, "protected header") if protected else {}
    if not isinstance(hdr, dict):
        _fail("cose", "protected header must be a map")
    for k in hdr:
        if k != _H_ALG and k != _H_KID:
            _fail("cose", "unexpected protected header label {!r}".format(k))
    return protected, hdr, payload, signature


def verify_sign1(data, key):
    """Check a COSE_Sign1 against key (a p256.PublicKey); return the payload bytes.

    Raises CoseError. The signature is checked last, after the cheap checks, but
    the payload is returned only when it verifies."""
    payload, digest, signature = check_sign1(data, key.kid)
    if not key.verify_digest(digest, signature):
        signature_failed(key)
    return payload


def verify_sign1_steps(data, key, out):
    """verify_sign1 in slices (p256.SLICE_OPS point operations at most): a generator that
    appends the payload to out once the signature verifies, and raises CoseError. The
    structure, alg and kid are checked at the first slice, before any curve arithmetic."""
    payload, digest, signature = check_sign1(data, key.kid)
    ok = []
    yield 0
    yield from key.verify_steps(digest, signature, ok)
    if not ok[0]:
        signature_failed(key)
    out.append(payload)


def signature_failed(key):
    """Raise the CoseError of a signature that does not verify with key."""
    _fail("signature", "does not verify with key {}".format(_hex(key.kid)))


def check_sign1(data, key_id):
    """Every check of verify_sign1 but the signature's arithmetic, for the key whose id is
    key_id (8 bytes): (payload, SHA-256 of the Sig_structure, signature) for
    key.verify_steps. Raises CoseError."""
    protected, hdr, payload, signature = parse_sign1(data)
    if _H_ALG not in hdr:
        _fail("alg", "no alg in the protected header")
    alg = hdr[_H_ALG]
    if alg == _ALG_EDDSA:
        _fail("alg", "EdDSA bundles are not verified by the controller; sign with ES256")
    if type(alg) is not int or alg != _ALG_ES256:
        _fail("alg", "alg {!r} is not ES256 (-7)".format(alg))
    kid = hdr.get(_H_KID)
    if type(kid) is not bytes:
        _fail("kid", "no kid (byte string) in the protected header")
    if kid != key_id:
        _fail("kid", "unknown key id {} (installed key is {})".format(_hex(kid), _hex(key_id)))
    if len(signature) != 64:
        _fail("signature", "{} bytes, 64 expected".format(len(signature)))
    return payload, hashlib.sha256(sig_structure(protected, payload)).digest(), signature


def _hex(b):
    return "".join("{:02x}".format(x) for x in b)
