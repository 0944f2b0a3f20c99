"""CBOR codec: RFC 8949 Appendix A vectors, round trips, hostile input."""
from binascii import hexlify, unhexlify

from core import cbor
from core.cbor import CBORError, Tag
from fwtest import raises


def h(s):
    return unhexlify(s)


def u(hexstr):
    return h(hexstr).decode("utf-8")


# (value, encoding) pairs from RFC 8949 Appendix A that round-trip exactly
VECTORS = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"),
    (100, "1864"), (1000, "1903e8"), (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"), (65504.0, "f97bff"), (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"), (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"), (0.00006103515625, "f90400"),
    (-4.0, "f9c400"), (-4.1, "fbc010666666666666"),
    (float("inf"), "f97c00"), (float("-inf"), "f9fc00"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (Tag(0, "2013-03-21T20:04:00Z"), "c074323031332d30332d32315432303a30343a30305a"),
    (Tag(1, 1363896240), "c11a514b67b0"),
    (Tag(1, 1363896240.5), "c1fb41d452d9ec200000"),
    (Tag(23, h("01020304")), "d74401020304"),
    (Tag(24, h("6449455446")), "d818456449455446"),
    (Tag(32, "http://www.example.com"), "d82076687474703a2f2f7777772e6578616d706c652e636f6d"),
    (Tag(2, h("010000000000000000")), "c249010000000000000000"),
    (b"", "40"), (h("01020304"), "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ('"\\', "62225c"),
    (u("c3bc"), "62c3bc"), (u("e6b0b4"), "63e6b0b4"), (u("f0908591"), "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
     "a56161614161626142616361436164614461656145"),
]


def test_rfc8949_vectors_encode():
    for value, enc in VECTORS:
        got = hexlify(cbor.dumps(value)).decode()
        assert got == enc, "{!r}: {} != {}".format(value, got, enc)


def test_rfc8949_vectors_decode():
    for value, enc in VECTORS:
        got = cbor.loads(h(enc))
        assert got == value, "{}: {!r} != {!r}".format(enc, got, value)
        assert type(got) is type(value)
        if isinstance(value, float) and value == 0.0:
            assert hexlify(cbor.dumps(got)).decode() == enc  # keeps the sign of zero


def test_float_nan_and_wide_forms_decode():
    for enc in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        x = cbor.loads(h(enc))
        assert x != x
    assert cbor.dumps(float("nan")) == h("f97e00")
    assert cbor.loads(h("fa7f800000")) == float("inf")
    assert cbor.loads(h("fbfff0000000000000")) == float("-inf")
    assert cbor.loads(h("fa47c35000")) == 100000.0
    assert cbor.loads(h("fb3ff8000000000000")) == 1.5  # non-shortest is fine when not canonical


def test_float_shortest_form_choice():
    assert cbor.dumps(0.5) == h("f93800")
    assert cbor.dumps(2.0 ** -24) == h("f90001")
    assert cbor.dumps(2.0 ** -25)[0] == 0xFA  # below half subnormals: single
    assert cbor.dumps(65536.0)[0] == 0xFA  # above half range: single
    assert cbor.dumps(1.0 / 3.0)[0] == 0xFB
    for x in (0.25, -2.5, 1.0e-7, 123456.75, 3.0e38, 1.0e-310, -1.0e200, 2.0 ** -14):
        assert cbor.loads(cbor.dumps(x)) == x


def test_unsupported_simple_values_refused():
    for enc, why in (("f7", "simple"), ("f0", "simple"), ("f8ff", "simple"), ("f820", "simple")):
        e = raises(CBORError, cbor.loads, h(enc))
        assert why in str(e), str(e)


def test_indefinite_lengths_refused():
    for enc in ("5f42010243030405ff", "7f657374726561646d696e67ff", "9fff",
                "9f018202039f0405ffff", "bf61610161629f0203ffff", "826161bf61626163ff"):
        e = raises(CBORError, cbor.loads, h(enc))
        assert "indefinite" in str(e), str(e)
    e = raises(CBORError, cbor.loads, h("ff"))
    assert "break" in str(e)


def test_reserved_additional_info_refused():
    for ib in (0x1C, 0x1D, 0x1E, 0x3C, 0x5D, 0x7E, 0x9C, 0xBD, 0xDE, 0xFC):
        e = raises(CBORError, cbor.loads, bytes([ib]))
        assert "reserved" in str(e), str(e)


def test_truncated_everywhere():
    samples = [
        {"v": 1, "t": "cmd", "txn": "a1", "args": {"soc_pct": 80, "x": [1.5, -7, None]}},
        [18446744073709551615, b"\x00\x01\x02", Tag(18, [b"", {}, None, b"sig"])],
        "text " * 10,
        -1000000,
        1.1,
    ]
    for value in samples:
        enc = cbor.dumps(value)
        for cut in range(len(enc)):
            e = raises(CBORError, cbor.loads, enc[:cut])
            assert "truncated" in str(e) or "exceed" in str(e), str(e)
        assert cbor.loads(enc) == value


def test_trailing_bytes():
    e = raises(CBORError, cbor.loads, h("0102"))
    assert "trailing" in str(e) and "offset 1" in str(e)
    assert cbor.loads(h("0102"), allow_trailing=True) == 1
    assert cbor.decode_prefix(h("83010203ff")) == ([1, 2, 3], 4)


def test_huge_declared_lengths_refused_before_allocating():
    for enc in ("5bffffffffffffffff", "7b7fffffffffffffff", "9bffffffffffffffff",
                "bbffffffffffffffff", "5a7fffffff00", "9a0000ffff01", "a2616101"):
        e = raises(CBORError, cbor.loads, h(enc))
        assert "exceed" in str(e), str(e)


def test_nesting_depth_limit():
    deep = b"\x81" * 16 + b"\x00"
    assert cbor.loads(deep) is not None
    e = raises(CBORError, cbor.loads, b"\x81" * 17 + b"\x00")
    assert "nesting" in str(e)
    e = raises(CBORError, cbor.loads, b"\xa1\x00" * 17 + b"\x00")
    assert "nesting" in str(e)
    e = raises(CBORError, cbor.loads, b"\xd2" * 17 + b"\x00")
    assert "nesting" in str(e)
    assert cbor.loads(b"\x81" * 3 + b"\x00", max_depth=3) == [[[0]]]
    raises(CBORError, cbor.loads, b"\x81" * 4 + b"\x00", max_depth=3)
    # the encoder has the same limit, so a cyclic structure fails cleanly
    cyc = []
    cyc.append(cyc)
    e = raises(CBORError, cbor.dumps, cyc)
    assert "nesting" in str(e)


def test_duplicate_and_bad_map_keys_refused():
    for enc in ("a2616101616102", "a201020103", "a2f9000000fb000000000000000000",
                "a24161004161ff"):
        e = raises(CBORError, cbor.loads, h(enc))
        assert "duplicate" in str(e), str(e)
    for enc in ("a1800a", "a1a0f6", "a1c1000a"):
        e = raises(CBORError, cbor.loads, h(enc))
        assert "scalar" in str(e), str(e)
    e = raises(CBORError, cbor.loads, h("a1f97e0001"))
    assert "NaN" in str(e)


def test_invalid_utf8_refused():
    bad = ["ff", "c328", "c080", "c1bf", "e08080", "eda080", "edbfbf", "f4908080",
           "f5808080", "f88080808080", "80", "e282", "f09085", "e2282a", "f0908591ff"]
    for b in bad:
        raw = h(b)
        enc = bytes([0x60 + len(raw)]) + raw
        e = raises(CBORError, cbor.loads, enc)
        assert "UTF-8" in str(e), b
    good = ["", "7f", "c280", "dfbf", "e0a080", "ed9fbf", "ee8080", "efbfbf",
            "f0908080", "f48fbfbf", "f3bfbfbf"]
    for g in good:
        raw = h(g)
        assert cbor.loads(bytes([0x60 + len(raw)]) + raw) == raw.decode("utf-8")


def test_canonical_decoding_mode():
    ok = cbor.dumps({"b": [1, 2.5, "x"], "a": {"n": -3}, "c": Tag(18, b"")})
    assert cbor.loads(ok, canonical=True) == cbor.loads(ok)
    for enc in ("1817", "190001", "3800", "5801aa", "fb3ff8000000000000",
                "fa3fc00000", "a2616201616101", "f97e01", "d80100"):
        e = raises(CBORError, cbor.loads, h(enc), canonical=True)
        assert "deterministic" in str(e), enc
        cbor.loads(h(enc))  # all acceptable when canonical is not asked


def test_map_key_order_is_bytewise():
    # RFC 8949 4.2.1: sort by the encoded key bytes (0x0a < 0x1864 < 0x20 < text)
    enc = cbor.dumps({"aa": 1, "b": 2, 10: 3, -1: 4, 100: 5, b"k": 6})
    assert enc == h("a60a031864052004416b066162026261610"  "1")
    assert cbor.loads(enc) == {"aa": 1, "b": 2, 10: 3, -1: 4, 100: 5, b"k": 6}


def test_round_trip_mixed():
    value = {
        "v": 1, "t": "tel",
        "samples": [{"t_ms": 123456789, "ma": -16000, "mv": 230000, "ok": True,
                     "src": "bms", "none": None, "f": 0.1}] * 3,
        "raw": bytearray(b"\x00\xff" * 40),
        "big": [2 ** 32, 2 ** 63, -(2 ** 63), 2 ** 64 - 1, -(2 ** 64)],
        "tup": (1, 2),
    }
    back = cbor.loads(cbor.dumps(value))
    assert back["samples"] == value["samples"]
    assert back["raw"] == bytes(value["raw"])
    assert back["big"] == value["big"]
    assert back["tup"] == [1, 2]
    assert cbor.loads(memoryview(cbor.dumps(value))) == back
    assert cbor.loads(bytearray(cbor.dumps(value))) == back
    out = bytearray(b"\x99")
    cbor.dumps_into(out, [1])
    assert out == bytearray(b"\x99\x81\x01")


def test_encoder_refuses_what_it_cannot_express():
    raises(CBORError, cbor.dumps, 2 ** 64)
    raises(CBORError, cbor.dumps, -(2 ** 64) - 1)
    raises(CBORError, cbor.dumps, object())
    raises(CBORError, cbor.dumps, {1, 2})
    raises(CBORError, cbor.dumps, Tag(-1, 0))
    raises(CBORError, cbor.loads, "a string, not bytes")


def test_tag_object():
    t = cbor.loads(h("d28443a10126a0f64100"))
    assert isinstance(t, Tag) and t.tag == 18
    assert t.value == [h("a10126"), {}, None, b"\x00"]
    assert t != Tag(18, [])
    assert "Tag(18" in repr(t)
    assert cbor.dumps(t) == h("d28443a10126a0f64100")
