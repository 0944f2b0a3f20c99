"""The controller's P-256 verifier (firmware core/p256.py, run here under CPython) against
OpenSSL through the `cryptography` package: random keys, messages and digests, good and
damaged signatures, r and s out of range, points off the curve. Both must give the same
verdict every time; tests/firmware/test_p256.py runs the fixed vectors in both interpreters."""

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import p256

N = p256.N
PRIVATE = st.integers(min_value=1, max_value=N - 1)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _keypair(d):
    priv = ec.derive_private_key(d, ec.SECP256R1())
    point = priv.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint)
    return priv, point


def _raw(der):
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _openssl_verdict(point, digest, sig):
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    try:
        pub.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


@SETTINGS
@given(d=PRIVATE, msg=st.binary(max_size=200))
def test_random_keys_and_messages_verify(d, msg):
    priv, point = _keypair(d)
    sig = _raw(priv.sign(msg, ec.ECDSA(hashes.SHA256())))
    key = p256.PublicKey(point)
    assert key.verify(msg, sig)
    assert not key.verify(msg + b"\x01", sig)


@SETTINGS
@given(d=PRIVATE, digest=st.binary(min_size=32, max_size=32), bit=st.integers(0, 511),
       other=st.integers(min_value=1, max_value=N - 1))
def test_damaged_signatures_agree_with_openssl(d, digest, bit, other):
    priv, point = _keypair(d)
    sig = _raw(priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    key = p256.PublicKey(point)
    assert key.verify_digest(digest, sig)
    flipped = bytearray(sig)
    flipped[bit // 8] ^= 1 << (bit % 8)
    r_other = other.to_bytes(32, "big") + sig[32:]
    s_other = sig[:32] + other.to_bytes(32, "big")
    for bad in (bytes(flipped), r_other, s_other, sig[32:] + sig[:32]):
        assert key.verify_digest(digest, bad) == _openssl_verdict(point, digest, bad)


@SETTINGS
@given(d=PRIVATE, digest=st.binary(min_size=32, max_size=32))
def test_r_and_s_out_of_range_are_refused(d, digest):
    priv, point = _keypair(d)
    sig = _raw(priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    key = p256.PublicKey(point)
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    top = (1 << 256) - 1
    for rr, ss in ((0, s), (r, 0), (N, s), (r, N), (top, s), (r, top), (r + N, s), (r, s + N)):
        if rr <= top and ss <= top:
            bad = rr.to_bytes(32, "big") + ss.to_bytes(32, "big")
            assert not key.verify_digest(digest, bad)


def test_digests_that_are_zero_mod_n_verify():
    # e = 0 or e = n makes u1 = 0: the result is u2*Q alone
    for d in (1, 2, 0xC0FFEE, N - 1):
        priv, point = _keypair(d)
        key = p256.PublicKey(point)
        for digest in (bytes(32), N.to_bytes(32, "big")):
            sig = _raw(priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
            assert key.verify_digest(digest, sig)
            assert _openssl_verdict(point, digest, sig)


@SETTINGS
@given(x=st.integers(0, (1 << 256) - 1), y=st.integers(0, (1 << 256) - 1))
def test_points_off_the_curve_are_refused_like_openssl(x, y):
    point = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        openssl_ok = True
    except ValueError:
        openssl_ok = False
    try:
        p256.PublicKey(point)
        ours_ok = True
    except ValueError:
        ours_ok = False
    assert ours_ok == openssl_ok


def test_known_key_and_message_from_openssl():
    priv, point = _keypair(0x1234567890ABCDEF)
    msg = b"signed firmware update"
    sig = _raw(priv.sign(msg, ec.ECDSA(hashes.SHA256())))
    assert p256.PublicKey(point).verify_digest(hashlib.sha256(msg).digest(), sig)
