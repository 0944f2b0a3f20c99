"""COBS: known vectors, round trips at block boundaries, invalid input."""
from binascii import unhexlify

from core import cobs
from fwtest import raises

# (payload, encoding) from the COBS paper / common reference examples
VECTORS = [
    ("", "01"),
    ("00", "0101"),
    ("0000", "010101"),
    ("001100", "01021101"),
    ("11220033", "0311220233"),
    ("11223344", "0511223344"),
    ("11000000", "0211010101"),
]


def _pattern(n, zero_every):
    out = bytearray(n)
    for i in range(n):
        out[i] = 0 if zero_every and i % zero_every == zero_every - 1 else (i % 255) + 1
    return bytes(out)


def test_vectors():
    for payload, enc in VECTORS:
        p = unhexlify(payload)
        e = unhexlify(enc)
        assert cobs.encode(p) == e, payload
        assert cobs.decode(e) == p, enc


def test_long_runs():
    run254 = bytes(range(1, 255))
    assert cobs.encode(run254) == b"\xff" + run254
    assert cobs.encode(b"\x00" + run254) == b"\x01\xff" + run254
    run255 = bytes(range(1, 256))
    assert cobs.encode(run255) == b"\xff" + run255[:254] + b"\x02\xff"
    assert cobs.encode(run254 + b"\x00") == b"\xff" + run254 + b"\x01\x01"
    for p in (run254, run255, b"\x00" + run254, run254 + b"\x00"):
        assert cobs.decode(cobs.encode(p)) == p


def test_round_trip_boundaries():
    for n in (0, 1, 2, 3, 252, 253, 254, 255, 256, 507, 508, 509, 510, 1024, 1030):
        for zero_every in (0, 1, 2, 7, 254, 255, 300):
            p = _pattern(n, zero_every)
            e = cobs.encode(p)
            assert 0 not in e
            assert len(e) <= cobs.max_encoded_len(n)
            assert cobs.decode(e) == p, (n, zero_every)


def test_into_buffers_and_limits():
    src = bytearray(b"\x11\x22\x00\x33")
    dst = bytearray(10)
    n = cobs.encode_into(memoryview(src), 4, memoryview(dst))
    assert bytes(dst[:n]) == unhexlify("0311220233")
    assert cobs.encode_into(src, 4, bytearray(4)) == -1  # too small
    assert cobs.encode_into(src, 4, bytearray(0)) == -1
    out = bytearray(4)
    assert cobs.decode_into(dst, n, out) == 4 and out == src
    assert cobs.decode_into(dst, n, bytearray(3)) == -1  # too small
    # decoding in place works (output never overtakes input)
    assert cobs.decode_into(memoryview(dst), n, memoryview(dst)) == 4
    assert dst[:4] == src


def test_invalid_input():
    for bad in ("00", "0200", "05112233", "ff01", "0311", "021100"):
        e = raises(cobs.COBSError, cobs.decode, unhexlify(bad))
        assert "COBS" in str(e)
    for bad in ("00", "05112233", "ff01", "0311", "021100", "0100"):
        b = unhexlify(bad)
        assert cobs.decode_into(b, len(b), bytearray(300)) == -1, bad


def test_the_in_place_coder_gives_the_same_bytes_at_every_block_boundary():
    # encode_at / decode_at (byte by byte, nothing allocated) against encode_into
    for n in (0, 1, 2, 253, 254, 255, 508, 509, 600):
        for zero_every in (0, 1, 3, 254, 255):
            data = _pattern(n, zero_every)
            want = cobs.encode(data)
            out = bytearray(cobs.max_encoded_len(n) + 3)
            end = cobs.encode_at(data, n, out, 2)
            assert bytes(out[2:end]) == want, (n, zero_every)
            back = bytearray(n + 1)
            assert cobs.decode_at(out, 2, end, back) == n and bytes(back[:n]) == bytes(data)
    assert cobs.encode_at(b"\x11" * 10, 10, bytearray(10), 0) == -1      # no room
    assert cobs.decode_at(b"\x05\x11", 0, 2, bytearray(8)) == -1           # code past the end
