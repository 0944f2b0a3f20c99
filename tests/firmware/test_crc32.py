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
