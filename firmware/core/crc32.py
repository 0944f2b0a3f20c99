"""CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the same as zlib.crc32.

MicroPython builds with binascii.crc32 (STM32 and the WebAssembly VM have it)
use the C version. Otherwise crc32_table() is used: it keeps the CRC as two
16-bit halves so every intermediate stays a small int, which on a 32-bit
MicroPython port means no heap allocation per byte.
"""

try:
    from binascii import crc32 as _native
except ImportError:  # pragma: no cover - depends on the MicroPython build
    _native = None

_POLY = 0xEDB88320
_table_lo = None
_table_hi = None


def _build_tables():
    global _table_lo, _table_hi
    lo = bytearray(512)  # 256 little-endian uint16 each
    hi = bytearray(512)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        lo[2 * i] = c & 0xFF
        lo[2 * i + 1] = (c >> 8) & 0xFF
        hi[2 * i] = (c >> 16) & 0xFF
        hi[2 * i + 1] = c >> 24
    _table_lo = lo
    _table_hi = hi


def crc32_table(data, crc=0):
    """Table-driven CRC-32 of data (bytes-like), continuing from crc."""
    if _table_lo is None:
        _build_tables()
    tlo = _table_lo
    thi = _table_hi
    crc ^= 0xFFFFFFFF
    lo = crc & 0xFFFF
    hi = crc >> 16
    for b in data:
        k = 2 * ((lo ^ b) & 0xFF)
        # crc = (crc >> 8) ^ table[index], done on the two halves
        lo = ((lo >> 8) | ((hi & 0xFF) << 8)) ^ (tlo[k] | (tlo[k + 1] << 8))
        hi = (hi >> 8) ^ (thi[k] | (thi[k + 1] << 8))
    return ((hi << 16) | lo) ^ 0xFFFFFFFF


def crc32(data, crc=0):
    """CRC-32 of data (bytes-like), continuing from crc; equals zlib.crc32."""
    if _native is not None:
        return _native(data, crc) & 0xFFFFFFFF
    return crc32_table(data, crc)


def has_native():
    return _native is not None
