"""CRC-32: check value, agreement of the native and table versions, chaining."""
from core import crc32


def _data(n):
    out = bytearray(n)
    x = 12345
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = x >> 16 & 0xFF
    return bytes(out)


def test_check_values():
    # the standard check value and a few known zlib results
    assert crc32.crc32(b"123456789") == 0xCBF43926
    assert crc32.crc32_table(b"123456789") == 0xCBF43926
    assert crc32.crc32(b"") == 0
    assert crc32.crc32_table(b"") == 0
    assert crc32.crc32(b"a") == 0xE8B7BE43
    assert crc32.crc32_table(b"The quick brown fox jumps over the lazy dog") == 0x414FA339
    assert crc32.crc32(b"\x00" * 4) == 0x2144DF1C
    assert crc32.crc32_table(b"\xff" * 4) == 0xFFFFFFFF


def test_table_matches_native():
    for n in (1, 2, 3, 4, 5, 31, 64, 255, 256, 1024):
        d = _data(n)
        assert crc32.crc32_table(d) == crc32.crc32(d), n
        assert crc32.crc32_table(memoryview(d)) == crc32.crc32(d)


def test_chaining():
    d = _data(300)
    whole = crc32.crc32(d)
    for cut in (0, 1, 100, 299, 300):
        assert crc32.crc32(d[cut:], crc32.crc32(d[:cut])) == whole
        assert crc32.crc32_table(d[cut:], crc32.crc32_table(d[:cut])) == whole


def test_native_available_in_this_build():
    # both interpreters in CI have binascii.crc32; a board without it still works via the table
    assert crc32.has_native()


def test_the_crc_written_in_place_is_the_crc():
    for n in (0, 1, 9, 100, 300):
        buf = bytearray(_data(n) + b"\x00\x00\x00\x00")
        crc32.put_le(buf, n)
        c = crc32.crc32(buf[:n])
        assert bytes(buf[n:]) == bytes([c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF, c >> 24])
        assert crc32.check_le(buf, n)
        buf[n // 2 if n else n] ^= 1
        assert not crc32.check_le(buf, n)
