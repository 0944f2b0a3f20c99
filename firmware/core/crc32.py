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


# the same table as 256 16-bit halves each, for put_le/check_le: indexing an array('H')
# gives a small int directly
_half_lo = None
_half_hi = None


def _build_halves():
    global _half_lo, _half_hi
    from array import array
    lo = array('H', bytes(512))
    hi = array('H', bytes(512))
    for i in range(256):   # once: the heap integers made here are garbage at once
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        lo[i] = c & 0xFFFF
        hi[i] = c >> 16
    _half_lo = lo
    _half_hi = hi


def put_le(buf, n):
    """Write the CRC-32 of buf[:n] into buf[n:n + 4], least significant byte first.

    Allocates nothing, unlike crc32(): a CRC of 2**30 or more is a heap integer on a
    32-bit MicroPython, and so would be a slice to pass the first n bytes. Table speed
    (about 256 bytes a millisecond on a Cortex-M4): for the small steady-state frames."""
    if _half_lo is None:
        _build_halves()
    tlo = _half_lo
    thi = _half_hi
    lo = 0xFFFF
    hi = 0xFFFF
    for i in range(n):
        k = (lo ^ buf[i]) & 0xFF
        lo = ((lo >> 8) | ((hi & 0xFF) << 8)) ^ tlo[k]
        hi = (hi >> 8) ^ thi[k]
    lo ^= 0xFFFF
    hi ^= 0xFFFF
    buf[n] = lo & 0xFF
    buf[n + 1] = lo >> 8
    buf[n + 2] = hi & 0xFF
    buf[n + 3] = hi >> 8


def check_le(buf, n):
    """True when buf[n:n + 4] holds the CRC-32 of buf[:n] (as put_le writes it); allocates
    nothing."""
    if _half_lo is None:
        _build_halves()
    tlo = _half_lo
    thi = _half_hi
    lo = 0xFFFF
    hi = 0xFFFF
    for i in range(n):
        k = (lo ^ buf[i]) & 0xFF
        lo = ((lo >> 8) | ((hi & 0xFF) << 8)) ^ tlo[k]
        hi = (hi >> 8) ^ thi[k]
    lo ^= 0xFFFF
    hi ^= 0xFFFF
    return (buf[n] == lo & 0xFF and buf[n + 1] == lo >> 8 and buf[n + 2] == hi & 0xFF
            and buf[n + 3] == hi >> 8)


def crc32(data, crc=0):
    """CRC-32 of data (bytes-like), continuing from crc; equals zlib.crc32."""
    if _native is not None:
        return _native(data, crc) & 0xFFFFFFFF
    return crc32_table(data, crc)


def has_native():
    return _native is not None
