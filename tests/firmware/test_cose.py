"""COSE_Sign1 and manifest checks on the controller (core/cose.py, core/manifest.py).

The bundles below were made beforehand by the host signer (signing/bundle.py,
keys from the `cryptography` package) and pasted here as inputs; the firmware
computes every verdict. Components of BUNDLE_OK: main.py (13 bytes),
core/empty.py (0 bytes), lib/blob.bin (768 bytes); sequence 7, security
counter 2, board "sim", version "1.4.0", signed by KEY_A.
"""

from fwtest import raises

from core import cbor, cose, manifest, p256

KEY_A = (
    "04040ef571a4daff27abf142d84bf64c853259956609bc31fd79039d11cf79498065582d918ac50a697b93962353567f"
    "54c60a31ff3ce2528bc1214c5cd6a80ed0"
)
KEY_B = (
    "04d47aaf6d0e5888bab026a001e7afa1bd3caca747da87469793826edeade50b14cc29902c98a4a9ff9ac5bbe53e6ea0"
    "eb9e2fcb3ca4a294ee6976db069007129e"
)
BUNDLE_OK = (
    "563247420000011ad2844da201260448df2fea0d0645b07fa058c5a70101020703020450af41273c30075c109761c8c8"
    "891364f10550598012c14b675a3695d2924c7ab219410665312e342e30078383676d61696e2e70790d5820ccb234092b"
    "59ab114b1423fa5470a4dd4180306d347ec1a5017949a0a87d5e66836d636f72652f656d7074792e7079005820e3b0c4"
    "4298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855836c6c69622f626c6f622e62696e1903005820"
    "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe36358400459c1eae857bf42d5a41e66ac49"
    "fc4fe80a77926fe0e61cac9e64a7fb76201af38a1d5668c2d8dc10e74c76a62f70acbd7ec776eda465b8e1401f3b2e7f"
    "21347072696e74282776326727290a000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"
    "2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f50"
    "5152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80"
    "8182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0"
    "b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0"
    "e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f10"
    "1112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40"
    "4142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f70"
    "7172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0"
    "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0"
    "d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00"
    "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f30"
    "3132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60"
    "6162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f90"
    "9192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0"
    "c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0"
    "f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
)
COSE_KEY_B = (
    "d2844da2012604481e4e10b721e64c1fa058c5a70101020703020450af41273c30075c109761c8c8891364f105505980"
    "12c14b675a3695d2924c7ab219410665312e342e30078383676d61696e2e70790d5820ccb234092b59ab114b1423fa54"
    "70a4dd4180306d347ec1a5017949a0a87d5e66836d636f72652f656d7074792e7079005820e3b0c44298fc1c149afbf4"
    "c8996fb92427ae41e4649b934ca495991b7852b855836c6c69622f626c6f622e62696e1903005820f3a25aa93aa2fbba"
    "28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363584008a7085cea972fa41973a71cae964b9960fce1dfa4ab"
    "fc416a3698027ea0bc06f75e81944fa9203613f34154a4bb419738e0289f5760506ba3c4a34c1855b56c"
)
COSE_EDDSA = (
    "d2844da20127044878bfc16859bce7a8a058c5a70101020703020450af41273c30075c109761c8c8891364f105505980"
    "12c14b675a3695d2924c7ab219410665312e342e30078383676d61696e2e70790d5820ccb234092b59ab114b1423fa54"
    "70a4dd4180306d347ec1a5017949a0a87d5e66836d636f72652f656d7074792e7079005820e3b0c44298fc1c149afbf4"
    "c8996fb92427ae41e4649b934ca495991b7852b855836c6c69622f626c6f622e62696e1903005820f3a25aa93aa2fbba"
    "28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe36358409c5f39245fb8b11bba855c942b6ca08864c195d12b83"
    "caf61b4dcb8b047bd07595cb51f1794105b7d519424fa4dea3bef50d7d5093c6a9ae65df66144d58a803"
)
COSE_ALG_UNPROTECTED = (
    "d2844ba10448df2fea0d0645b07fa1012658c5a70101020703020450af41273c30075c109761c8c8891364f105505980"
    "12c14b675a3695d2924c7ab219410665312e342e30078383676d61696e2e70790d5820ccb234092b59ab114b1423fa54"
    "70a4dd4180306d347ec1a5017949a0a87d5e66836d636f72652f656d7074792e7079005820e3b0c44298fc1c149afbf4"
    "c8996fb92427ae41e4649b934ca495991b7852b855836c6c69622f626c6f622e62696e1903005820f3a25aa93aa2fbba"
    "28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe36358404b29f0f163287685cc66b1b406fa2bfd7cdf9451c815"
    "a606cd4bfc92d3ce5bd80c865b10a2ccd30711a6f461aa805e3c59a01e6350b6188fab41dd6001a88a49"
)
COSE_PYBOARD = (
    "d2844da201260448df2fea0d0645b07fa058c5a70101020903010450af41273c30075c109761c8c8891364f105506bbc"
    "a268ad0e518f96c3f4d9e9932ea70665312e352e30078383676d61696e2e70790d5820ccb234092b59ab114b1423fa54"
    "70a4dd4180306d347ec1a5017949a0a87d5e66836d636f72652f656d7074792e7079005820e3b0c44298fc1c149afbf4"
    "c8996fb92427ae41e4649b934ca495991b7852b855836c6c69622f626c6f622e62696e1903005820f3a25aa93aa2fbba"
    "28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe3635840934aeccb27378179b1a8cdc45576eadf7b9f626a6995"
    "9f40e9b2985034441ce50fb615d8c4da9dd5f3795887d4ab3ca8878e3e0cb912e27e48634644492be4fb"
)

SIM = manifest.BOARD_CLASS["sim"]


def _b(parts):
    return bytes.fromhex("".join(parts))


def _key(parts):
    return p256.PublicKey(_b(parts))


def _split(bundle):
    n = manifest.parse_header(bundle)
    return bundle[8:8 + n], bundle[8 + n:]


def _cose_fails(data, key, what):
    e = raises(cose.CoseError, cose.verify_sign1, data, key)
    assert str(e).startswith(what + ":"), str(e)


def _bundle_fails(data, code, what, seq=6, sc=2, board=SIM, key=None):
    key = key or _key(KEY_A)
    e = raises(manifest.UpdateError, manifest.verify_bundle, data, key, board, seq, sc)
    assert e.code == code, e.code
    assert e.msg.startswith(what), e.msg
    return e


def test_good_bundle_verifies():
    key = _key(KEY_A)
    bundle = _b(BUNDLE_OK)
    man = manifest.verify_bundle(bundle, key, SIM, 6, 2)
    assert man.seq == 7 and man.security_counter == 2 and man.version == "1.4.0"
    assert [c.name for c in man.components] == ["main.py", "core/empty.py", "lib/blob.bin"]
    assert [c.size for c in man.components] == [13, 0, 768]
    assert man.total_size == 781
    cose_bytes, body = _split(bundle)
    assert len(body) == 781
    payload = cose.verify_sign1(cose_bytes, key)
    assert manifest.decode(payload).seq == 7


def test_wrong_key_and_unknown_kid():
    cose_bytes, _ = _split(_b(BUNDLE_OK))
    _cose_fails(cose_bytes, _key(KEY_B), "kid")
    _cose_fails(_b(COSE_KEY_B), _key(KEY_A), "kid")
    # the same bundle is good with its own key
    assert manifest.decode(cose.verify_sign1(_b(COSE_KEY_B), _key(KEY_B))).seq == 7


def test_alg_only_in_unprotected_header_refused():
    _cose_fails(_b(COSE_ALG_UNPROTECTED), _key(KEY_A), "alg")


def test_eddsa_refused_on_the_controller():
    _cose_fails(_b(COSE_EDDSA), _key(KEY_A), "alg")


def test_signature_bit_flips_and_bad_r_s():
    cose_bytes, _ = _split(_b(BUNDLE_OK))
    key = _key(KEY_A)
    n = len(cose_bytes)
    for pos in (n - 64, n - 40, n - 33, n - 32, n - 1):
        bad = bytearray(cose_bytes)
        bad[pos] ^= 0x10
        _cose_fails(bytes(bad), key, "signature")
    r_s = ((0, 1), (1, 0), (p256.N, 1), (1, p256.N), ((1 << 256) - 1, 5))
    for r, s in r_s:
        bad = cose_bytes[:-64] + r.to_bytes(32, "big") + s.to_bytes(32, "big")
        _cose_fails(bad, key, "signature")


def test_payload_edit_after_signing_fails():
    cose_bytes, _ = _split(_b(BUNDLE_OK))
    obj = cbor.loads(cose_bytes)
    man = cbor.loads(obj.value[2])
    man[manifest.K_SEQ] = 99  # a well-formed manifest, changed after signing
    obj.value[2] = cbor.dumps(man)
    _cose_fails(cbor.dumps(obj), _key(KEY_A), "signature")


def test_structure_refusals():
    key = _key(KEY_A)
    cose_bytes, _ = _split(_b(BUNDLE_OK))
    obj = cbor.loads(cose_bytes)
    _cose_fails(cbor.dumps(obj.value), key, "cose")                       # untagged
    _cose_fails(cbor.dumps(cbor.Tag(98, obj.value)), key, "cose")         # COSE_Sign, not Sign1
    _cose_fails(cbor.dumps(cbor.Tag(18, obj.value[:3])), key, "cose")     # 3 items
    v = list(obj.value)
    v[1] = {4: b"12345678"}
    _cose_fails(cbor.dumps(cbor.Tag(18, v)), key, "cose")                 # unprotected not empty
    v = list(obj.value)
    v[0] = cbor.dumps({4: key.kid})
    _cose_fails(cbor.dumps(cbor.Tag(18, v)), key, "alg")                  # no alg at all
    v[0] = cbor.dumps({1: -7, 4: key.kid, 3: 0})
    _cose_fails(cbor.dumps(cbor.Tag(18, v)), key, "cose")                 # extra label
    v[0] = cbor.dumps({1: -35, 4: key.kid})
    _cose_fails(cbor.dumps(cbor.Tag(18, v)), key, "alg")                  # ES384
    v[0] = cbor.dumps({1: -7})
    _cose_fails(cbor.dumps(cbor.Tag(18, v)), key, "kid")                  # no kid


def test_malformed_cbor_refused():
    key = _key(KEY_A)
    cose_bytes, _ = _split(_b(BUNDLE_OK))
    # indefinite-length array instead of the 4-item array
    indef = cose_bytes[:1] + b"\x9f" + cose_bytes[2:] + b"\xff"
    _cose_fails(indef, key, "cbor")
    # huge declared length for the payload byte string
    _cose_fails(b"\xd2\x84\x40\xa0\x5b\xff\xff\xff\xff\xff\xff\xff\xff", key, "cbor")
    # deep nesting
    _cose_fails(b"\xd2" + b"\x81" * 200 + b"\x00", key, "cbor")
    # duplicate key in the unprotected map
    _cose_fails(b"\xd2\x84\x40\xa2\x01\x26\x01\x26\x40\x40", key, "cbor")
    # non-shortest head (length 4 written in one extra byte)
    _cose_fails(b"\xd2\x98\x04" + cose_bytes[2:], key, "cbor")
    # trailing byte after the COSE_Sign1
    _cose_fails(cose_bytes + b"\x00", key, "cbor")
    _cose_fails(cose_bytes[:-1], key, "cbor")


def test_manifest_policy_board_and_rollback():
    key = _key(KEY_A)
    bundle = _b(BUNDLE_OK)
    e = _bundle_fails(bundle, manifest.V2G_602, "rollback", seq=7)
    assert "sequence 7" in e.msg
    _bundle_fails(bundle, manifest.V2G_602, "rollback", seq=100)
    _bundle_fails(bundle, manifest.V2G_602, "rollback", sc=3)
    manifest.verify_bundle(bundle, key, SIM, 6, 1)  # lower stored counter is fine
    _bundle_fails(bundle, manifest.V2G_601, "board", board=manifest.BOARD_CLASS["pyboard"])
    man = manifest.open_manifest(_b(COSE_PYBOARD), key)
    assert man.board_class == manifest.board_class_id("pyboard")
    raises(manifest.UpdateError, manifest.check, man, SIM, 0, 0)
    manifest.check(man, manifest.BOARD_CLASS["pyboard"], 8, 1)
    e = raises(manifest.UpdateError, manifest.check, man, manifest.BOARD_CLASS["pyboard"], 8, 1, 700)
    assert e.code == manifest.V2G_601 and e.msg.startswith("size")


def test_truncation_trailing_and_digest():
    bundle = _b(BUNDLE_OK)
    _bundle_fails(bundle[:-1], manifest.V2G_601, "truncated")
    _bundle_fails(bundle[:100], manifest.V2G_601, "truncated")
    _bundle_fails(bundle[:5], manifest.V2G_601, "truncated")
    _bundle_fails(bundle + b"\x00", manifest.V2G_601, "trailing")
    bad = bytearray(bundle)
    bad[-1] ^= 1
    e = _bundle_fails(bytes(bad), manifest.V2G_601, "digest")
    assert "lib/blob.bin" in e.msg
    bad = bytearray(bundle)
    bad[-781] ^= 1
    e = _bundle_fails(bytes(bad), manifest.V2G_601, "digest")
    assert "main.py" in e.msg
    _bundle_fails(b"XXXX" + bundle[4:], manifest.V2G_601, "header")
    _bundle_fails(bundle[:4] + b"\x00\x00\xff\xff" + bundle[8:], manifest.V2G_601, "header")


def test_body_check_in_chunks():
    key = _key(KEY_A)
    cose_bytes, body = _split(_b(BUNDLE_OK))
    man = manifest.open_manifest(cose_bytes, key)
    for size in (1, 7, 13, 14, 100, 781):
        bc = manifest.BodyCheck(man)
        i = 0
        while i < len(body):
            bc.feed(body[i:i + size])
            i += size
        bc.finish()
        assert bc.index == 3 and bc.received == 781
    bc = manifest.BodyCheck(man)
    bc.feed(body[:500])
    e = raises(manifest.UpdateError, bc.finish)
    assert e.msg.startswith("truncated")
    bc = manifest.BodyCheck(man)
    e = raises(manifest.UpdateError, bc.feed, body + b"\x01")
    assert e.msg.startswith("trailing")
    d = manifest.Digest(man.components[0])
    d.update(body[:5])
    d.update(body[5:13])
    d.finish()
    d = manifest.Digest(man.components[0])
    raises(manifest.UpdateError, d.update, body[:14])


def test_manifest_field_checks():
    key = _key(KEY_A)
    cose_bytes, _ = _split(_b(BUNDLE_OK))
    good = cbor.loads(cose.verify_sign1(cose_bytes, key))

    def refused(change, what):
        m = dict(good)
        change(m)
        e = raises(manifest.UpdateError, manifest.decode, cbor.dumps(m))
        assert e.code == manifest.V2G_601 and what in e.msg, e.msg

    refused(lambda m: m.pop(manifest.K_SEQ), "missing key 2")
    refused(lambda m: m.update({99: 1}), "unknown key")
    refused(lambda m: m.update({manifest.K_FORMAT: 2}), "format version")
    refused(lambda m: m.update({manifest.K_SEQ: 0}), "sequence")
    refused(lambda m: m.update({manifest.K_SEQ: True}), "sequence")
    refused(lambda m: m.update({manifest.K_SEQ: 1 << 32}), "sequence")
    refused(lambda m: m.update({manifest.K_SECCNT: -1}), "security counter")
    refused(lambda m: m.update({manifest.K_BOARD: b"short"}), "16-byte")
    refused(lambda m: m.update({manifest.K_VERSION: ""}), "version")
    refused(lambda m: m.update({manifest.K_VERSION: "x" * 33}), "version")
    refused(lambda m: m.update({manifest.K_COMPONENTS: []}), "components")
    refused(lambda m: m.update({manifest.K_COMPONENTS: [["a.py", 1, b"\x00" * 32]] * 65}), "components")
    refused(lambda m: m.update({manifest.K_COMPONENTS: [["a.py", 1, b"\x00" * 31]]}), "component 0")
    refused(lambda m: m.update({manifest.K_COMPONENTS: [["a.py", 1, b"\x00" * 32]] * 2}), "twice")
    refused(lambda m: m.update({manifest.K_COMPONENTS: [["lib/x/y.py", 1, b"\x00" * 32], ["lib", 1, b"\x00" * 32]]}),
            "'lib' is a file, but 'lib/x/y.py' needs a folder")
    for name in ("../boot.py", "/main.py", "a//b.py", "a b.py", "./x", "", "x" * 65):
        refused(lambda m, name=name: m.update({manifest.K_COMPONENTS: [[name, 1, b"\x00" * 32]]}), "component")
    # not deterministic CBOR: the same map with an overlong integer head
    raw = cbor.dumps(good)
    assert raw[:2] == b"\xa7\x01"
    e = raises(manifest.UpdateError, manifest.decode, b"\xa7\x18\x01" + raw[2:])
    assert "cbor" in e.msg


def test_board_class_ids():
    assert manifest.board_class_id("sim") == manifest.BOARD_CLASS["sim"]
    assert len(manifest.board_class_id("pyboard")) == 16
    assert manifest.VENDOR_ID != manifest.BOARD_CLASS["sim"]
