"""Consistent Overhead Byte Stuffing (COBS) for the host link.

COBS removes every 0x00 from a payload so 0x00 can delimit frames on the
wire. The encoded form is at most len + len // 254 + 1 bytes.

The *_into functions work on caller-owned buffers (bytearray/memoryview) and
copy whole runs with slice assignment, so they allocate nothing per byte.
They return the number of bytes written, or -1 when the input is not valid
COBS or the output buffer is too small; they never raise for bad data.
"""


def max_encoded_len(n):
    """Worst-case encoded length of an n-byte payload (without delimiter)."""
    return n + n // 254 + 1


def encode_into(src, n, dst):
    """COBS-encode src[:n] into dst; return the encoded length or -1 if dst is too small.

    Pass src as bytes/bytearray (not a memoryview) to scan for zeros at C speed.
    """
    limit = len(dst)
    if limit < 1:
        return -1
    fast = isinstance(src, (bytes, bytearray))  # memoryview has no find()
    code_at = 0  # where the current block's code byte goes
    out = 1
    i = 0
    while i < n:
        # run of non-zero bytes starting at i, at most 254 long
        stop = i + 254
        if stop > n:
            stop = n
        if fast:
            j = src.find(b"\x00", i, stop)  # C speed
            if j < 0:
                j = stop
        else:
            j = i
            while j < stop and src[j] != 0:
                j += 1
        run = j - i
        if out + run > limit:
            return -1
        dst[out:out + run] = src[i:j]
        out += run
        dst[code_at] = run + 1
        if run == 254:
            i = j  # a full block (code 0xFF) implies no zero
            if i == n:
                return out
        elif j < n:
            i = j + 1  # src[j] is the zero implied by the code byte
        else:
            return out  # reached the end of the data
        # start a new block: after a zero, or after a full 254-byte run
        if out >= limit:
            return -1
        code_at = out
        out += 1
    # data ended right after a zero or a full block: close with an empty block
    dst[code_at] = 1
    return out


def decode_into(src, n, dst):
    """Decode COBS src[:n] into dst; return the decoded length or -1 if invalid.

    src[:n] must hold no 0x00 byte (the link's deframer splits on them, so it
    never passes one); code bytes are checked, data bytes are only copied.
    """
    limit = len(dst)
    out = 0
    i = 0
    while i < n:
        code = src[i]
        if code == 0:
            return -1  # a zero cannot appear inside an encoded frame
        i += 1
        run = code - 1
        if i + run > n or out + run > limit:
            return -1
        dst[out:out + run] = src[i:i + run]
        out += run
        i += run
        if code < 0xFF and i < n:
            if out >= limit:
                return -1
            dst[out] = 0
            out += 1
    return out


class COBSError(ValueError):
    """Input is not valid COBS."""


def encode(data):
    """Encode bytes; returns new bytes (convenience for tests and host code)."""
    n = len(data)
    buf = bytearray(max_encoded_len(n))
    used = encode_into(bytes(data), n, memoryview(buf))
    return bytes(buf[:used])


def decode(data):
    """Decode bytes; returns new bytes or raises COBSError."""
    n = len(data)
    if 0 in bytes(data):
        raise COBSError("0x00 inside COBS data")
    buf = bytearray(n)
    used = decode_into(memoryview(data), n, memoryview(buf))
    if used < 0:
        raise COBSError("invalid COBS data")
    return bytes(buf[:used])


def encode_at(src, n, dst, at):
    """COBS-encode src[:n] into dst from index at, byte by byte; return the end index, or -1
    if dst is too small. The same bytes as encode_into, and nothing allocates (no slices):
    for the small frames of the steady state (telemetry, heartbeat echo)."""
    if len(dst) - at < max_encoded_len(n):
        return -1
    code_at = at    # where the open block's code byte goes; -1 after a full block
    out = at + 1
    code = 1
    for i in range(n):
        if code_at < 0:
            code_at = out
            out += 1
            code = 1
        b = src[i]
        if b:
            dst[out] = b
            out += 1
            code += 1
            if code == 0xFF:   # 254 non-zero bytes: a full block, no implied zero
                dst[code_at] = 0xFF
                code_at = -1
        else:
            dst[code_at] = code
            code_at = out
            out += 1
            code = 1
    if code_at >= 0:
        dst[code_at] = code
    return out


def decode_at(src, start, end, dst):
    """Decode COBS src[start:end] into dst byte by byte; return the decoded length or -1
    (invalid, or dst too small). Allocates nothing; src[start:end] holds no 0x00."""
    limit = len(dst)
    out = 0
    i = start
    while i < end:
        code = src[i]
        i += 1
        stop = i + code - 1
        if code == 0 or stop > end or out + code - 1 > limit:
            return -1
        while i < stop:
            dst[out] = src[i]
            out += 1
            i += 1
        if code < 0xFF and i < end:
            if out >= limit:
                return -1
            dst[out] = 0
            out += 1
    return out
