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


# --- the same verdicts in the MicroPython VM (16-bit digits; the verifier's unreduced
# intermediates go negative there as well), including signatures made to hit edge cases

P = p256.P


def _affine_add(a, b):
    # plain affine arithmetic with Python's own inverse: a reference apart from p256's
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0]:
        if (a[1] + b[1]) % P == 0:
            return None
        lam = 3 * (a[0] * a[0] - 1) * pow(2 * a[1], -1, P) % P
    else:
        lam = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (lam * lam - a[0] - b[0]) % P
    return x, (lam * (a[0] - x) - a[1]) % P


def _affine_mul(k, pt):
    acc = None
    for bit in bin(k % N)[2:]:
        acc = _affine_add(acc, acc)
        if bit == "1":
            acc = _affine_add(acc, pt)
    return acc


def _point_bytes(pt):
    return b"\x04" + pt[0].to_bytes(32, "big") + pt[1].to_bytes(32, "big")


def _recovered_key(rpt, r, s, e):
    # the key for which (r, s) over e verifies with R = rpt: Q = r^-1 (s R - e G)
    g = (p256.GX, p256.GY)
    srr = _affine_mul(s, rpt)
    eg = _affine_mul(N - e % N, g)
    return _affine_mul(pow(r, -1, N), _affine_add(srr, eg))


def _edge_cases():
    """(point, digest, r||s, what) signatures an ordinary signer does not make."""
    out = []
    g = (p256.GX, p256.GY)
    digest = hashlib.sha256(b"edge").digest()
    e = int.from_bytes(digest, "big")
    # R with x(R) >= n: r = x(R) - n, accepted only through the r + n comparison
    x = N
    while True:
        rhs = (x * x * x - 3 * x + p256.B) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            break
        x += 1
    r = x - N
    for s in (1, 2, N - 1, 0xC0FFEE):
        q = _recovered_key((x, y), r, s, e)
        out.append((_point_bytes(q), digest, r.to_bytes(32, "big") + s.to_bytes(32, "big"), "r+n"))
    # u1 G + u2 Q is the point at infinity: Q = -(e / r) G
    for r, s in ((1, 1), (0xDEADBEEF, 5), (N - 1, N - 1)):
        q = _affine_mul(-e * pow(r, -1, N), g)
        out.append((_point_bytes(q), digest, r.to_bytes(32, "big") + s.to_bytes(32, "big"), "infinity"))
    # Q = G with e = r (u1 = u2) and Q = -G with e = -r (u1 = -u2): equal and opposite
    # points meet all through the comb
    for d, q in ((1, g), (N - 1, (g[0], P - g[1]))):
        for k in (3, 0xC0FFEE):
            r = _affine_mul(k, g)[0] % N
            e2 = r if d == 1 else N - r
            s = pow(k, -1, N) * (e2 + r * d) % N
            out.append((_point_bytes(q), e2.to_bytes(32, "big"),
                        r.to_bytes(32, "big") + s.to_bytes(32, "big"), "Q=+-G"))
    return out


_VM_VERDICTS = """
import json
from core import p256
for pt, dg, sig in json.loads({cases!r}):
    key = p256.PublicKey(bytes.fromhex(pt))
    one = key.verify_digest(bytes.fromhex(dg), bytes.fromhex(sig))
    out = []
    p256.run(key.verify_steps(bytes.fromhex(dg), bytes.fromhex(sig), out))
    print('VERDICT', json.dumps([one, out[0]]))
"""


def test_random_and_edge_case_signatures_agree_with_openssl_in_the_vm():
    import random

    from host_tools import vm
    rnd = random.Random(20261205)
    cases = []
    for _ in range(24):
        priv, point = _keypair(rnd.randrange(1, N))
        digest = rnd.randbytes(32)
        sig = _raw(priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
        bad = bytearray(sig)
        bad[rnd.randrange(64)] ^= 1 << rnd.randrange(8)
        other = _keypair(rnd.randrange(1, N))[1]
        cases += [(point, digest, sig, "good"), (point, digest, bytes(bad), "bit"),
                  (other, digest, sig, "other key"), (point, digest, sig[32:] + sig[:32], "swapped")]
    cases += _edge_cases()
    want = [_openssl_verdict(pt, dg, sig) for pt, dg, sig, _ in cases]
    assert [w for w, c in zip(want, cases) if c[3] in ("r+n", "Q=+-G")] == [True] * 8
    assert not any(w for w, c in zip(want, cases) if c[3] == "infinity")
    code = _VM_VERDICTS.format(cases=__import__("json").dumps(
        [[pt.hex(), dg.hex(), sig.hex()] for pt, dg, sig, _ in cases]))
    out = vm.run_micropython(code, mounts=vm.firmware_mounts("sim"), timeout=600)
    got = [__import__("json").loads(ln[len("VERDICT "):]) for ln in out.splitlines()
           if ln.startswith("VERDICT ")]
    assert len(got) == len(cases)
    for (one, sliced), w, c in zip(got, want, cases):
        assert one == sliced == w, (c[3], one, sliced, w)
    # and under CPython, the same
    for (pt, dg, sig, what), w in zip(cases, want):
        assert p256.PublicKey(pt).verify_digest(dg, sig) == w, what
