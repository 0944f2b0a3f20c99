"""Signed update bundles: every threat against three verifiers.

1. the host verifier, signing.bundle.verify (cryptography + cbor2);
2. the controller's verifier, core.manifest.verify_bundle (pure Python P-256 and the
   firmware CBOR decoder), run here under CPython;
3. an independent COSE implementation, pycose, which checks that what we produce is
   a standard COSE_Sign1 and that its signature verdicts agree with ours;
4. a second independent check written here straight from RFC 9052 with cryptography:
   the Sig_structure built by hand with cbor2, alg taken from the protected header only,
   protected and unprotected labels disjoint, the raw r || s signature verified. pycose
   needs the outer item decoded for it (see pycose_verdict) and accepts alg from the
   unprotected header, so it alone would not catch those two things.
Every bundle these tests sign goes through checks 3 and 4 (signed()).
"""

import hashlib
import json
import os
import stat

import cbor2
import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pycose.keys import EC2Key, OKPKey
from pycose.messages import Sign1Message

from core import cose as fw_cose
from core import manifest as fw_manifest
from core import p256
from host_tools.commands import keygen as keygen_cmd
from host_tools.commands import sign as sign_cmd
from host_tools.commands import verify as verify_cmd
from signing import bundle, keys

COMPONENTS = [("main.py", b"import app\napp.run()\n"), ("core/__init__.py", b""),
              ("core/p256.mpy", os.urandom(1500)), ("board/hal.mpy", os.urandom(333))]
SEQ = 12
SC = 3
SIM = fw_manifest.BOARD_CLASS["sim"]


@pytest.fixture(scope="module")
def key():
    return keys.generate(keys.ES256)


@pytest.fixture(scope="module")
def other_key():
    return keys.generate(keys.ES256)


@pytest.fixture(scope="module")
def fw_key(key):
    return p256.PublicKey(keys.device_public_key(key))


@pytest.fixture(scope="module")
def good(key):
    return signed(key, COMPONENTS, SEQ, "2.1.0", "sim", security_counter=SC)


# ------------------------------------------------------------------ helpers

def host_fails(data, key, what, **policy):
    with pytest.raises(bundle.BundleError) as ei:
        bundle.verify(data, key.public_key(), **policy)
    assert ei.value.what == what, str(ei.value)
    return ei.value


def fw_fails(data, fw_key, prefix, code=fw_manifest.V2G_601, seq=SEQ - 1, sc=SC, board=SIM, capacity=None):
    args = (data, fw_key, board, seq, sc) + ((capacity,) if capacity else ())
    with pytest.raises(fw_manifest.UpdateError) as ei:
        fw_manifest.verify_bundle(*args)
    assert ei.value.code == code, str(ei.value)
    assert ei.value.msg.startswith(prefix), str(ei.value)
    return ei.value


def pycose_verdict(cose_bytes, key):
    """Independent verdict of pycose on a COSE_Sign1 signature.

    pycose 1.1's own decode() expects cbor2 to give lists inside tags, while cbor2 6
    gives tuples and frozen maps; so the outer item is decoded here and pycose does
    the rest (protected header, Sig_structure, signature) itself."""
    tag = cbor2.loads(cose_bytes)
    v = tag.value
    msg = Sign1Message.from_cose_obj([v[0], dict(v[1]), v[2], v[3]], True)
    pub = keys.as_public(key)
    if keys.algorithm(pub) == keys.ES256:
        nums = pub.public_numbers()
        msg.key = EC2Key(crv="P_256", x=nums.x.to_bytes(32, "big"), y=nums.y.to_bytes(32, "big"))
    else:
        msg.key = OKPKey(crv="ED25519", x=pub.public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw))
    try:
        return msg.verify_signature()
    except Exception:  # pycose raises for malformed signatures instead of returning False
        return False


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551   # SEC 2 / FIPS 186-4


def rfc9052_verdict(cose_bytes, key):
    """Independent verdict on a COSE_Sign1 straight from RFC 9052, without pycose and without
    signing.bundle: tag 18 with 4 items (section 4.2); the protected header a bstr holding a
    map, with alg (label 1) in it, labels disjoint from the unprotected map (section 3);
    Sig_structure = ["Signature1", body_protected, external_aad = h'', payload] (section
    4.4); ES256 (-7, RFC 9053 2.1) a 64-byte r || s with 0 < r, s < n verified over SHA-256,
    EdDSA (-8, RFC 9053 2.2) Ed25519. False for anything else."""
    try:
        tag = cbor2.loads(cose_bytes)
    except Exception:  # noqa: BLE001 - not CBOR at all
        return False
    if not isinstance(tag, cbor2.CBORTag) or tag.tag != 18 or len(tag.value) != 4:
        return False
    protected, unprotected, payload, sig = tag.value
    if not isinstance(protected, bytes) or not isinstance(payload, bytes) or not isinstance(sig, bytes):
        return False
    try:
        prot_map = cbor2.loads(protected) if protected else {}
    except Exception:  # noqa: BLE001
        return False
    if not hasattr(prot_map, "keys") or not hasattr(unprotected, "keys"):
        return False
    if set(prot_map.keys()) & set(unprotected.keys()):
        return False
    alg = prot_map.get(1)
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    pub = keys.as_public(key)
    try:
        if alg == -7 and isinstance(pub, ec.EllipticCurvePublicKey):
            if len(sig) != 64:
                return False
            r = int.from_bytes(sig[:32], "big")
            s = int.from_bytes(sig[32:], "big")
            if not (0 < r < P256_N and 0 < s < P256_N):
                return False
            pub.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA256()))
            return True
        if alg == -8 and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, to_be_signed)
            return True
    except InvalidSignature:
        return False
    return False


def independent_verdicts(data, key):
    cose, _ = bundle.split(data)
    return pycose_verdict(cose, key), rfc9052_verdict(cose, key)


def signed(key, *args, **kw):
    """bundle.sign, with both independent checks required to accept what it made, and the
    Sig_structure it signed equal to the one RFC 9052 defines."""
    data = bundle.sign(key, *args, **kw)
    assert independent_verdicts(data, key) == (True, True)
    v = cbor2.loads(bundle.split(data)[0]).value
    assert bundle.sig_structure(v[0], v[2]) == cbor2.dumps(["Signature1", v[0], b"", v[2]])
    return data


def resign(key, protected_map, unprotected, payload, signer=None):
    """A COSE_Sign1 with chosen headers, validly signed (by signer or key)."""
    prot = cbor2.dumps(protected_map, canonical=True) if protected_map is not None else b""
    sig = bundle._raw_sign(signer or key, bundle.sig_structure(prot, payload))
    return cbor2.dumps(cbor2.CBORTag(18, [prot, unprotected, payload, sig]), canonical=True)


def with_cose(good_bundle, new_cose):
    _, body = bundle.split(good_bundle)
    return bundle.MAGIC + len(new_cose).to_bytes(4, "big") + new_cose + body


def payload_of(good_bundle):
    cose, _ = bundle.split(good_bundle)
    return cbor2.loads(cose).value[2]


def regions(data):
    """(name, start, end) of each part of a bundle, for sampling bit flips."""
    n = int.from_bytes(data[4:8], "big")
    cose = data[8:8 + n]
    v = cbor2.loads(cose).value
    prot_at = 8 + cose.index(v[0])
    pay_at = 8 + cose.index(v[2])
    out = [("magic", 0, 4), ("length", 4, 8), ("cose head", 8, prot_at),
           ("protected", prot_at, prot_at + len(v[0])), ("payload", pay_at, pay_at + len(v[2])),
           ("signature", 8 + n - 64, 8 + n)]
    at = 8 + n
    for name, blob in COMPONENTS:
        if blob:
            out.append((name, at, at + len(blob)))
        at += len(blob)
    return out


# ------------------------------------------------------------------ good bundles

def test_good_bundle_passes_all_three(good, key, fw_key):
    man = bundle.verify(good, key.public_key(), board="sim", stored_seq=SEQ - 1, stored_security_counter=SC)
    assert [c["name"] for c in man["components"]] == [n for n, _ in COMPONENTS]
    assert [c["sha256"] for c in man["components"]] == [hashlib.sha256(b).hexdigest() for _, b in COMPONENTS]
    assert man["sequence"] == SEQ and man["security_counter"] == SC and man["board"] == "sim"
    fman = fw_manifest.verify_bundle(good, fw_key, SIM, SEQ - 1, SC)
    assert fman.seq == SEQ and [c.size for c in fman.components] == [len(b) for _, b in COMPONENTS]
    cose, _ = bundle.split(good)
    assert pycose_verdict(cose, key) is True and rfc9052_verdict(cose, key) is True


def test_ed25519_bundle_host_and_pycose(fw_key):
    k = keys.generate(keys.ED25519)
    data = signed(k, COMPONENTS, SEQ, "2.1.0", "sim")
    assert bundle.verify(data, k.public_key())["alg"] == "EdDSA"
    cose, _ = bundle.split(data)
    assert pycose_verdict(cose, k) is True and rfc9052_verdict(cose, k) is True
    # the controller verifies ES256 only and says so
    fw_fails(data, fw_key, "alg", sc=0)


def test_layout_and_encoding(good, key):
    n = int.from_bytes(good[4:8], "big")
    assert good[:4] == b"V2GB"
    assert len(good) == 8 + n + sum(len(b) for _, b in COMPONENTS)
    cose = good[8:8 + n]
    tag = cbor2.loads(cose)
    assert tag.tag == 18
    prot = cbor2.loads(tag.value[0])
    assert prot == {1: -7, 4: keys.key_id(key)}
    assert tag.value[1] == {} and len(tag.value[3]) == 64  # raw r||s, not DER
    # deterministic CBOR: the firmware's strict decoder agrees byte for byte
    from core import cbor as fw_cbor
    assert fw_cbor.dumps(fw_cbor.loads(cose, 16, False, True)) == cose
    assert fw_cbor.dumps(fw_cbor.loads(tag.value[2], 16, False, True)) == tag.value[2]


def test_limits_and_ids_agree_between_host_and_firmware():
    for name in ("MAX_COMPONENTS", "MAX_NAME_LEN", "MAX_VERSION_LEN", "MAX_U32", "MAX_TOTAL_SIZE",
                 "FORMAT_VERSION", "MAGIC", "HEADER_LEN"):
        assert getattr(bundle, name) == getattr(fw_manifest, name), name
    assert bundle.MAX_COSE_LEN == fw_cose.MAX_COSE_LEN
    assert bundle.MAX_DEPTH == fw_cose.MAX_DEPTH == fw_manifest._MAX_DEPTH
    assert bundle.MANIFEST_KEYS == fw_manifest._KEYS
    assert bundle.VENDOR_ID.bytes == fw_manifest.VENDOR_ID
    assert bundle.PROJECT_NAMESPACE.bytes == fw_manifest.PROJECT_NAMESPACE
    for board in ("sim", "pyboard", "custom-board_2"):
        assert bundle.board_class_id(board).bytes == fw_manifest.board_class_id(board)
    for board in fw_manifest.BOARD_CLASS:
        assert bundle.board_class_id(board).bytes == fw_manifest.BOARD_CLASS[board]


def test_key_files(tmp_path):
    pw = b"correct horse battery staple"
    priv, pub, k = keys.write_keypair(tmp_path / "fota.pem", keys.ES256, pw)
    assert pub.name == "fota.pub.pem"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert b"ENCRYPTED" in priv.read_bytes()
    with pytest.raises(keys.KeyFileError):
        keys.load_private(priv, None)
    with pytest.raises(keys.KeyFileError):
        keys.load_private(priv, b"wrong")
    loaded = keys.load_private(priv, pw)
    assert keys.key_id(loaded) == keys.key_id(keys.load_public(pub)) == keys.key_id(k)
    spki = keys.spki_der(k)
    assert keys.key_id(k) == hashlib.sha256(spki).digest()[:8]
    assert spki == p256.SPKI_PREFIX + keys.device_public_key(k)
    with pytest.raises(keys.KeyFileError):
        keys.write_keypair(tmp_path / "fota.pem")
    with pytest.raises(keys.KeyFileError):
        keys.load_public(priv)


# ------------------------------------------------------------------ threats

def test_wrong_key(good, other_key, fw_key):
    host_fails(good, other_key, "kid")
    fw_fails(good, p256.PublicKey(keys.device_public_key(other_key)), "kid")
    cose, _ = bundle.split(good)
    assert pycose_verdict(cose, other_key) is False and rfc9052_verdict(cose, other_key) is False


def test_kid_of_the_right_key_but_signed_by_another(good, key, other_key, fw_key):
    cose = resign(key, {1: -7, 4: keys.key_id(key)}, {}, payload_of(good), signer=other_key)
    data = with_cose(good, cose)
    host_fails(data, key, "signature")
    fw_fails(data, fw_key, "signature")
    assert pycose_verdict(cose, key) is False and rfc9052_verdict(cose, key) is False


def test_unknown_kid(good, key, fw_key):
    cose = resign(key, {1: -7, 4: b"\x01" * 8}, {}, payload_of(good))
    data = with_cose(good, cose)
    host_fails(data, key, "kid")
    fw_fails(data, fw_key, "kid")


def test_bit_flip_anywhere(good, key, fw_key):
    # every byte of the header and the COSE_Sign1, and 40 spread bytes of each component
    positions = set()
    cose_end = 8 + int.from_bytes(good[4:8], "big")
    for _name, start, end in regions(good):
        step = 1 if end <= cose_end else max(1, (end - start) // 40)
        positions.update(range(start, end, step))
        positions.add(end - 1)
    positions.update(range(cose_end))  # the heads between the regions too
    assert len(positions) > cose_end + 100
    for pos in sorted(positions):
        for bit in (0, 5) if pos < 8 + 100 else (pos % 8,):
            bad = bytearray(good)
            bad[pos] ^= 1 << bit
            bad = bytes(bad)
            with pytest.raises(bundle.BundleError):
                bundle.verify(bad, key.public_key())
            with pytest.raises(fw_manifest.UpdateError):
                fw_manifest.verify_bundle(bad, fw_key, SIM, SEQ - 1, SC)
    # pycose agrees on flips in what the signature covers
    for name, start, end in regions(good):
        if name in ("protected", "payload", "signature"):
            for pos in (start, (start + end) // 2, end - 1):
                bad = bytearray(good)
                bad[pos] ^= 0x04
                cose, _ = bundle.split(bytes(bad))
                try:
                    verdict = pycose_verdict(cose, key)
                except Exception:  # no longer decodable at all
                    verdict = False
                assert verdict is False, (name, pos)
                assert rfc9052_verdict(cose, key) is False, (name, pos)


def test_manifest_edited_after_signing(good, key, fw_key):
    cose, _ = bundle.split(good)
    tag = cbor2.loads(cose)
    man = dict(cbor2.loads(tag.value[2]))
    man[bundle.K_SEQ] = SEQ + 100
    man[bundle.K_SECCNT] = SC + 1
    forged = cbor2.dumps(cbor2.CBORTag(18, [tag.value[0], {}, cbor2.dumps(man, canonical=True), tag.value[3]]),
                         canonical=True)
    data = with_cose(good, forged)
    host_fails(data, key, "signature")
    fw_fails(data, fw_key, "signature")
    assert pycose_verdict(forged, key) is False and rfc9052_verdict(forged, key) is False


def test_alg_only_in_unprotected_header(good, key, fw_key):
    cose = resign(key, {4: keys.key_id(key)}, {1: -7}, payload_of(good))
    data = with_cose(good, cose)
    host_fails(data, key, "alg")
    fw_fails(data, fw_key, "alg")
    # the RFC 9052 check refuses it; pycose takes alg from the unprotected header and says
    # the signature is good (why it is not the only independent check)
    assert rfc9052_verdict(cose, key) is False
    assert pycose_verdict(cose, key) is True
    # alg in both places is refused too: nothing unprotected is trusted (RFC 9052 section 3:
    # the two buckets must not share a label)
    cose = resign(key, {1: -7, 4: keys.key_id(key)}, {1: -7}, payload_of(good))
    host_fails(with_cose(good, cose), key, "alg")
    fw_fails(with_cose(good, cose), fw_key, "alg")
    assert rfc9052_verdict(cose, key) is False


@pytest.mark.parametrize("r_s", ["r0", "s0", "rn", "sn", "rmax", "smax"])
def test_r_or_s_zero_or_not_below_n(good, key, fw_key, r_s):
    cose, _ = bundle.split(good)
    sig = cose[-64:]
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    r, s = {"r0": (0, s), "s0": (r, 0), "rn": (p256.N, s), "sn": (r, p256.N),
            "rmax": ((1 << 256) - 1, s), "smax": (r, (1 << 256) - 1)}[r_s]
    assert P256_N == p256.N
    bad_cose = cose[:-64] + r.to_bytes(32, "big") + s.to_bytes(32, "big")
    data = with_cose(good, bad_cose)
    host_fails(data, key, "signature")
    fw_fails(data, fw_key, "signature")
    assert pycose_verdict(bad_cose, key) is False and rfc9052_verdict(bad_cose, key) is False
    # r + n (same x mod n) is also refused when it still fits 256 bits
    if r_s == "r0":
        r1 = int.from_bytes(sig[:32], "big") + p256.N
        if r1 < (1 << 256):
            alt = cose[:-64] + r1.to_bytes(32, "big") + sig[32:]
            host_fails(with_cose(good, alt), key, "signature")
            fw_fails(with_cose(good, alt), fw_key, "signature")


def test_public_key_not_on_curve(key, tmp_path):
    point = bytearray(keys.device_public_key(key))
    point[-1] ^= 1
    with pytest.raises(ValueError):
        p256.PublicKey(bytes(point))
    with pytest.raises(ValueError):
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(point))
    der = p256.SPKI_PREFIX + bytes(point)
    pem = b"-----BEGIN PUBLIC KEY-----\n" + __import__("base64").encodebytes(der) + b"-----END PUBLIC KEY-----\n"
    (tmp_path / "bad.pub.pem").write_bytes(pem)
    with pytest.raises(keys.KeyFileError):
        keys.load_public(tmp_path / "bad.pub.pem")
    with pytest.raises(ValueError):
        p256.PublicKey(b"\x04" + bytes(64))  # the all-zero "point at infinity" encoding


def test_sequence_not_newer(good, key, fw_key):
    for stored in (SEQ, SEQ + 1, bundle.MAX_U32):
        host_fails(good, key, "rollback", stored_seq=stored)
        fw_fails(good, fw_key, "rollback", code=fw_manifest.V2G_602, seq=stored)
    bundle.verify(good, key.public_key(), stored_seq=SEQ - 1)


def test_security_counter_lower(good, key, fw_key):
    host_fails(good, key, "rollback", stored_security_counter=SC + 1)
    fw_fails(good, fw_key, "rollback", code=fw_manifest.V2G_602, sc=SC + 1)
    bundle.verify(good, key.public_key(), stored_security_counter=SC)
    fw_manifest.verify_bundle(good, fw_key, SIM, SEQ - 1, SC)


def test_wrong_board(good, key, fw_key):
    host_fails(good, key, "board", board="pyboard")
    fw_fails(good, fw_key, "board", board=fw_manifest.BOARD_CLASS["pyboard"])


def test_digest_mismatch(key, fw_key):
    data = signed(key, COMPONENTS, SEQ, "2.1.0", "sim", security_counter=SC)
    bad = bytearray(data)
    bad[-1] ^= 0x80  # last byte of board/hal.mpy: same length, other content
    e = host_fails(bytes(bad), key, "digest")
    assert "board/hal.mpy" in str(e)
    e = fw_fails(bytes(bad), fw_key, "digest")
    assert "board/hal.mpy" in e.msg


def test_truncation(good, key, fw_key):
    body_at = 8 + int.from_bytes(good[4:8], "big")
    cuts = sorted(set(list(range(0, 12)) + list(range(12, len(good), 37)) + [body_at - 1, body_at,
                                                                            body_at + 1, len(good) - 1]))
    for cut in cuts:
        with pytest.raises(bundle.BundleError) as ei:
            bundle.verify(good[:cut], key.public_key())
        with pytest.raises(fw_manifest.UpdateError) as fe:
            fw_manifest.verify_bundle(good[:cut], fw_key, SIM, SEQ - 1, SC)
        if cut < 8 or cut > body_at:
            assert ei.value.what == "truncated"
            assert fe.value.msg.startswith("truncated")


def test_trailing_bytes(good, key, fw_key):
    for extra in (b"\x00", b"V2GB", os.urandom(1000)):
        host_fails(good + extra, key, "trailing")
        fw_fails(good + extra, fw_key, "trailing")


def test_oversize(key, fw_key):
    # a validly signed manifest that declares more than a slot holds
    man = bundle.build_manifest([("big.bin", b"x")], SEQ, "2.1.0", "sim", SC)
    man[bundle.K_COMPONENTS] = [["big.bin", bundle.MAX_TOTAL_SIZE + 1, hashlib.sha256(b"x").digest()]]
    data = bundle.assemble(bundle.sign_payload(key, cbor2.dumps(man, canonical=True)), b"x")
    host_fails(data, key, "size")
    fw_fails(data, fw_key, "size")
    # a smaller slot on the device
    ok = signed(key, COMPONENTS, SEQ, "2.1.0", "sim", security_counter=SC)
    fw_fails(ok, fw_key, "size", capacity=1000)
    host_fails(ok, key, "size", max_total=1000)
    # too many components
    man[bundle.K_COMPONENTS] = [["f{}.py".format(i), 0, hashlib.sha256(b"").digest()] for i in range(65)]
    data = bundle.assemble(bundle.sign_payload(key, cbor2.dumps(man, canonical=True)), b"")
    host_fails(data, key, "manifest")
    fw_fails(data, fw_key, "manifest")
    # a COSE length above the limit in the header
    data = bundle.MAGIC + (bundle.MAX_COSE_LEN + 1).to_bytes(4, "big") + bytes(bundle.MAX_COSE_LEN + 1)
    host_fails(data, key, "header")
    fw_fails(data, fw_key, "header")
    with pytest.raises(ValueError):
        bundle.sign(key, [("big.bin", bytes(bundle.MAX_TOTAL_SIZE + 1))], SEQ, "2.1.0", "sim")


def _malformed_payloads(good):
    raw = payload_of(good)
    assert raw[0] == 0xA7  # map of 7 pairs
    return {
        # the same manifest as an indefinite-length map
        "indefinite": b"\xbf" + raw[1:] + b"\xff",
        # a component byte string that claims 2**64-1 bytes
        "huge length": raw[:1] + b"\x01\x01\x07\x81\x83\x61a\x00\x5b" + b"\xff" * 8,
        # deep nesting inside the components list
        "deep nesting": b"\xa1\x07" + b"\x81" * 300 + b"\x00",
        # key 2 (sequence) twice: a second, larger sequence after the first
        "duplicate key": b"\xa8" + raw[1:] + b"\x02\x1a\xff\xff\xff\xff",
    }


@pytest.mark.parametrize("kind", ["indefinite", "huge length", "deep nesting", "duplicate key"])
def test_malformed_cbor_in_signed_manifest(good, key, fw_key, kind):
    payload = _malformed_payloads(good)[kind]
    data = with_cose(good, bundle.sign_payload(key, payload))
    host_fails(data, key, "cbor")
    fw_fails(data, fw_key, "manifest: cbor")


@pytest.mark.parametrize("kind", ["indefinite", "huge length", "deep nesting", "duplicate key", "non-shortest"])
def test_malformed_cbor_in_cose(good, key, fw_key, kind):
    cose, _ = bundle.split(good)
    bad = {
        "indefinite": cose[:1] + b"\x9f" + cose[2:] + b"\xff",
        "huge length": b"\xd2\x84\x40\xa0\x5b" + b"\xff" * 8,
        "deep nesting": b"\xd2" + b"\x81" * 300 + b"\x00",
        "duplicate key": b"\xd2\x84\x40\xa2\x01\x26\x01\x26\x40\x40",
        "non-shortest": b"\xd2\x98\x04" + cose[2:],
    }[kind]
    data = with_cose(good, bad)
    host_fails(data, key, "cbor")
    fw_fails(data, fw_key, "cbor")


# ------------------------------------------------------------------ Intel HEX

def test_intelhex_output(good):
    from intelhex import IntelHex

    text = bundle.to_intelhex(good, 0x08080000)
    path_ih = IntelHex()
    import io
    path_ih.loadhex(io.StringIO(text))
    assert path_ih.minaddr() == 0x08080000
    assert path_ih.tobinstr(start=0x08080000, size=len(good)) == good
    with pytest.raises(ValueError):
        bundle.to_intelhex(good, 0xFFFFFFFF)


# ------------------------------------------------------------------ CLI

def test_cli_keygen_sign_verify(tmp_path):
    runner = CliRunner()
    (tmp_path / "pw").write_text("s3cret passphrase\n")
    res = runner.invoke(keygen_cmd.cli, ["--out", str(tmp_path / "k.pem"), "--passphrase-file", str(tmp_path / "pw")])
    assert res.exit_code == 0, res.output
    assert "key id" in res.output
    res = runner.invoke(keygen_cmd.cli, ["--out", str(tmp_path / "k.pem")])
    assert res.exit_code != 0 and "refusing to overwrite" in res.output
    fw = tmp_path / "fw"
    (fw / "core").mkdir(parents=True)
    (fw / "main.py").write_bytes(b"print('hi')\n")
    (fw / "core" / "x.py").write_bytes(b"X = 1\n")
    out = tmp_path / "u.bundle"
    res = runner.invoke(sign_cmd.cli, [
        "--key", str(tmp_path / "k.pem"), "--passphrase-file", str(tmp_path / "pw"), "--seq", "4",
        "--version", "1.0.0", "--board", "pyboard", "--security-counter", "2", "--root", str(fw),
        "--hex-address", "0x08080000", "--hex-out", str(tmp_path / "u.hex"), "-o", str(out),
        str(fw / "main.py"), str(fw / "core" / "x.py")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "u.hex").read_text().startswith(":")
    assert independent_verdicts(out.read_bytes(), keys.load_public(tmp_path / "k.pub.pem")) == (True, True)
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pub.pem"), str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["ok"] and doc["sequence"] == 4 and doc["board"] == "pyboard"
    assert [c["name"] for c in doc["components"]] == ["main.py", "core/x.py"]
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pub.pem"), str(out)])
    assert res.exit_code == 0 and res.output.startswith("OK")
    # policy options
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pub.pem"), "--after-seq", "4", str(out)])
    assert res.exit_code == 1 and "rollback" in res.output
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pub.pem"), "--board", "sim", str(out)])
    assert res.exit_code == 1 and "board" in res.output
    # tampered bundle: non-zero exit naming the failure
    data = bytearray(out.read_bytes())
    data[-1] ^= 1
    (tmp_path / "bad.bundle").write_bytes(bytes(data))
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pub.pem"), str(tmp_path / "bad.bundle")])
    assert res.exit_code == 1 and "digest" in res.output and "core/x.py" in res.output
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pub.pem"), "--json",
                                         str(tmp_path / "bad.bundle")])
    assert res.exit_code == 1 and json.loads(res.output)["failed"] == "digest"
    # wrong passphrase, and the private key given to verify
    (tmp_path / "pw2").write_text("nope\n")
    res = runner.invoke(sign_cmd.cli, ["--key", str(tmp_path / "k.pem"), "--passphrase-file", str(tmp_path / "pw2"),
                                       "--seq", "5", "--version", "1", "--board", "sim", "-o", str(out),
                                       str(fw / "main.py")])
    assert res.exit_code != 0 and "passphrase" in res.output
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "k.pem"), str(out)])
    assert res.exit_code != 0 and "private key" in res.output


def test_cli_ed25519_and_bad_arguments(tmp_path):
    runner = CliRunner()
    res = runner.invoke(keygen_cmd.cli, ["--out", str(tmp_path / "e.pem"), "--alg", "ed25519"])
    assert res.exit_code == 0, res.output
    assert "verifies ES256 only" in res.stderr
    (tmp_path / "a.py").write_bytes(b"A = 1\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.py").write_bytes(b"A = 2\n")
    base = ["--key", str(tmp_path / "e.pem"), "--version", "1.0", "--board", "sim", "-o", str(tmp_path / "o")]
    res = runner.invoke(sign_cmd.cli, base + ["--seq", "1", str(tmp_path / "a.py")])
    assert res.exit_code == 0, res.output
    # signed, but the controller cannot verify it: said on stderr
    assert "verifies ES256 only" in res.stderr and "warning" not in res.stdout
    assert independent_verdicts((tmp_path / "o").read_bytes(), keys.load_public(tmp_path / "e.pub.pem")) == (True, True)
    res = runner.invoke(verify_cmd.cli, ["--key", str(tmp_path / "e.pub.pem"), str(tmp_path / "o")])
    assert res.exit_code == 0 and "EdDSA" in res.output
    for args, words in (
        (["--seq", "0", str(tmp_path / "a.py")], "seq"),
        (["--seq", "1", str(tmp_path / "a.py"), str(tmp_path / "b" / "a.py")], "twice"),
        (["--seq", "1", "--hex-address", "nope", "--hex-out", "x", str(tmp_path / "a.py")], "not a number"),
        (["--seq", "1", "--hex-out", "x.hex", str(tmp_path / "a.py")], "names no update partition"),
    ):
        res = runner.invoke(sign_cmd.cli, base + args)
        assert res.exit_code != 0 and words in res.output, (args, res.output)
    res = runner.invoke(sign_cmd.cli, ["--key", str(tmp_path / "e.pem"), "--version", "1.0", "--board", "Bad Board",
                                       "--seq", "1", "-o", str(tmp_path / "o"), str(tmp_path / "a.py")])
    assert res.exit_code != 0 and "board name" in res.output
    res = runner.invoke(sign_cmd.cli, ["--help"])
    assert "--security-counter" in res.output and "COSE_Sign1" in res.output


def test_cli_hex_beside_the_bundle_and_partition_checked(tmp_path):
    runner = CliRunner()
    res = runner.invoke(keygen_cmd.cli, ["--out", str(tmp_path / "k.pem")])
    assert res.exit_code == 0, res.output
    assert "verifies ES256 only" not in res.output
    (tmp_path / "a.py").write_bytes(b"A = 1\n")
    (tmp_path / "big.bin").write_bytes(os.urandom(0x60000))
    base = ["--key", str(tmp_path / "k.pem"), "--version", "1.0", "--board", "pyboard", "--seq", "1"]
    start, size = sign_cmd.update_partition("pyboard")
    assert (start, size) == (0x08080000, 0x60000)
    # an address alone: BUNDLE.hex beside the bundle
    out = tmp_path / "u.v2gb"
    res = runner.invoke(sign_cmd.cli, base + ["--hex-address", "0x08080000", "-o", str(out), str(tmp_path / "a.py")])
    assert res.exit_code == 0, res.output
    assert "verifies ES256 only" not in res.output
    from intelhex import IntelHex
    ih = IntelHex(str(tmp_path / "u.hex"))
    assert ih.minaddr() == start and ih.tobinstr(start=start, size=len(out.read_bytes())) == out.read_bytes()
    assert independent_verdicts(out.read_bytes(), keys.load_public(tmp_path / "k.pub.pem")) == (True, True)
    # --hex-out alone: placed at the board's partition
    res = runner.invoke(sign_cmd.cli, base + ["--hex-out", str(tmp_path / "p.hex"), "-o", str(tmp_path / "p"),
                                              str(tmp_path / "a.py")])
    assert res.exit_code == 0 and "at 0x08080000" in res.output, res.output
    assert IntelHex(str(tmp_path / "p.hex")).minaddr() == start
    # outside the partition, and a bundle larger than it: refused, nothing written
    for args, words in (
        (["--hex-address", "0x08000000", "-o", str(tmp_path / "x"), str(tmp_path / "a.py")],
         "outside board pyboard's update partition"),
        (["--hex-address", "0x08080000", "-o", str(tmp_path / "y"), str(tmp_path / "big.bin")],
         "does not fit board pyboard's update partition: 393216 bytes"),
        (["--hex-address", "0x08080000", "-o", str(tmp_path / "z.hex"), str(tmp_path / "a.py")], "ends in .hex"),
    ):
        res = runner.invoke(sign_cmd.cli, base + args)
        assert res.exit_code != 0 and words in res.output, (args, res.output)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "y.hex").exists()


def test_passphrase_file_is_one_whole_line(tmp_path):
    runner = CliRunner()
    (tmp_path / "pw").write_bytes(b"first line\nsecond line\n")
    res = runner.invoke(keygen_cmd.cli, ["--out", str(tmp_path / "k.pem"), "--passphrase-file", str(tmp_path / "pw")])
    assert res.exit_code != 0 and "more than one line" in res.output and not (tmp_path / "k.pem").exists()
    (tmp_path / "pw").write_bytes(b"  spaced words kept \r\n")
    res = runner.invoke(keygen_cmd.cli, ["--out", str(tmp_path / "k.pem"), "--passphrase-file", str(tmp_path / "pw")])
    assert res.exit_code == 0, res.output
    assert keys.load_private(tmp_path / "k.pem", b"  spaced words kept ") is not None
    res = runner.invoke(keygen_cmd.cli, ["--help"])
    assert "whole file" in " ".join(res.output.split()) and "first line" not in res.output


def test_signer_refuses_a_file_and_a_folder_of_one_name():
    # the controller would refuse the manifest ("lib" file, "lib/x.py" in a folder "lib")
    with pytest.raises(ValueError, match="'lib' is a file, but 'lib/x.py' needs a folder"):
        bundle.build_manifest([("lib/x.py", b"1"), ("lib", b"2")], 1, "1.0", "sim")
    assert bundle.build_manifest([("lib/x.py", b"1"), ("libs", b"2")], 1, "1.0", "sim")


def test_host_verifier_applies_the_controllers_manifest_rules(key, fw_key):
    # a signed manifest the controller refuses ("lib" a file, "lib/x.py" needs a folder "lib"):
    # the host's verifier refuses it too, in the controller's words
    man = bundle.build_manifest([("lib", b"2")], SEQ, "2.1.0", "sim", SC)
    man[bundle.K_COMPONENTS] = [["lib/x.py", 1, hashlib.sha256(b"1").digest()],
                                ["lib", 1, hashlib.sha256(b"2").digest()]]
    data = bundle.assemble(bundle.sign_payload(key, cbor2.dumps(man, canonical=True)), b"12")
    e = host_fails(data, key, "manifest")
    assert "'lib' is a file, but 'lib/x.py' needs a folder" in str(e)
    fw_fails(data, fw_key, "manifest")
