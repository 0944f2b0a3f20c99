"""CBOR (RFC 8949) codec for the host link and signed-update manifests.

Pure and portable (MicroPython 1.27 and CPython 3.11).

Decoding is strict because frames come from a wire and manifests from an
untrusted bundle. Every problem raises CBORError with the reason and the byte
offset; nothing else escapes for bad input. Refused on decode:
- truncated items and (unless allow_trailing) bytes after the top-level item;
- indefinite lengths (major types 2-5 with additional info 31) and the break
  byte: the link never sends them and deterministic encoding forbids them;
- reserved additional info 28-30, `undefined` and other simple values;
- declared lengths larger than the bytes left (checked before allocating);
- nesting deeper than max_depth (arrays, maps and tags each count one);
- duplicate map keys (Python equality: 1, 1.0 and true collide too) and keys
  that are arrays, maps or tags;
- text that is not well-formed UTF-8 (overlongs, surrogates, > U+10FFFF).
With canonical=True the input must also be in core deterministic encoding
(RFC 8949 section 4.2.1): it must re-encode to exactly the same bytes.

Encoding is always core deterministic: shortest heads, no indefinite
lengths, floats in the shortest of half/single/double that keeps the value
(NaN as f9 7e00), map keys sorted by their encoded bytes. Note that cbor2's
canonical=True sorts keys length-first (the older RFC 7049 rule); the two
agree when all keys are text (the link and the manifests) and differ only for
mixed key types or integer keys of different encoded lengths.

Decoded values: int, bytes, str, list, dict, bool, None, float and Tag.
On single-precision builds (STM32) decoded doubles are rounded to single.
"""

import math
import struct

_U64 = 0xFFFFFFFFFFFFFFFF
DEFAULT_MAX_DEPTH = 16


class CBORError(ValueError):
    """Malformed, hostile or unencodable CBOR; the message says what and where."""


class Tag:
    """A tagged item (major type 6): tag number and the enclosed value."""

    __slots__ = ("tag", "value")

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Tag({}, {!r})".format(self.tag, self.value)


# ---------------------------------------------------------------- decoding

def _half_to_float(h):
    sign = -1.0 if h & 0x8000 else 1.0
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 0:
        return sign * math.ldexp(frac, -24)
    if exp == 31:
        # float('inf') is built here at run time: mpy-cross folds math.inf/math.nan into
        # constants, which a frozen build writes into C as a bare inf/nan that does not compile
        return sign * float('inf') if frac == 0 else float('nan')
    return sign * math.ldexp(frac + 1024, exp - 25)


def utf8_valid(buf, pos, end):
    """True if buf[pos:end] is well-formed UTF-8 (Unicode table 3-7).

    MicroPython's bytes.decode accepts surrogates, overlong forms and code
    points above U+10FFFF, so the check is done here byte by byte.
    """
    while pos < end:
        c = buf[pos]
        if c < 0x80:
            pos += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            n = 1
        elif c == 0xE0:
            n = 2
            lo = 0xA0
        elif c == 0xED:
            n = 2
            hi = 0x9F
        elif 0xE1 <= c <= 0xEF:
            n = 2
        elif c == 0xF0:
            n = 3
            lo = 0x90
        elif 0xF1 <= c <= 0xF3:
            n = 3
        elif c == 0xF4:
            n = 3
            hi = 0x8F
        else:
            return False
        if pos + n >= end:
            return False
        c = buf[pos + 1]
        if c < lo or c > hi:
            return False
        k = 2
        while k <= n:
            if buf[pos + k] & 0xC0 != 0x80:
                return False
            k += 1
        pos += n + 1
    return True


class _Decoder:
    def __init__(self, mv, end, max_depth):
        self.mv = mv
        self.pos = 0
        self.end = end
        self.max_depth = max_depth

    def _fail(self, what, at):
        raise CBORError("{} at offset {}".format(what, at))

    def item(self, depth):
        mv = self.mv
        start = self.pos
        if start >= self.end:
            self._fail("truncated: item expected", start)
        ib = mv[start]
        major = ib >> 5
        ai = ib & 0x1F
        p = start + 1
        if ai < 24:
            arg = ai
        elif ai < 28:
            n = 1 << (ai - 24)
            if p + n > self.end:
                self._fail("truncated: {}-byte argument".format(n), start)
            arg = 0
            for i in range(p, p + n):
                arg = (arg << 8) | mv[i]
            p += n
        elif ai == 31:
            if major == 7:
                self._fail("unexpected break byte", start)
            self._fail("indefinite length refused (major type {})".format(major), start)
        else:
            self._fail("reserved additional info {}".format(ai), start)
        self.pos = p
        left = self.end - p

        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2 or major == 3:
            if arg > left:
                self._fail("declared length {} exceeds the {} bytes left".format(arg, left), start)
            self.pos = p + arg
            if major == 2:
                return bytes(mv[p:p + arg])
            # the interpreter's decode checks the byte structure at C speed; the
            # full check (overlongs, surrogates, range) runs only on non-ASCII text
            try:
                text = str(bytes(mv[p:p + arg]), "utf-8")
            except UnicodeError:
                text = None
            if text is None or (len(text) != arg and not utf8_valid(mv, p, p + arg)):
                self._fail("invalid UTF-8 in text string", start)
            return text
        if major == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            if ai == 25:
                return _half_to_float(arg)
            if ai == 26:
                return struct.unpack(">f", mv[p - 4:p])[0]
            if ai == 27:
                return struct.unpack(">d", mv[p - 8:p])[0]
            self._fail("unsupported simple value {}".format(arg), start)
        # containers and tags nest
        if depth >= self.max_depth:
            self._fail("nesting deeper than {}".format(self.max_depth), start)
        depth += 1
        if major == 4:
            if arg > left:  # every item takes at least one byte
                self._fail("declared {} array items exceed the {} bytes left".format(arg, left), start)
            out = []
            for _ in range(arg):
                out.append(self.item(depth))
            return out
        if major == 5:
            if 2 * arg > left:
                self._fail("declared {} map pairs exceed the {} bytes left".format(arg, left), start)
            out = {}
            end = self.end
            for _ in range(arg):
                kpos = self.pos
                ib = mv[kpos] if kpos < end else 0
                n = ib - 0x60
                if 0 <= n < 24 and kpos + 1 + n <= end:
                    # short text key (every link and manifest key): inline, no call
                    try:
                        key = str(bytes(mv[kpos + 1:kpos + 1 + n]), "utf-8")
                    except UnicodeError:
                        key = None
                    if key is None or (len(key) != n and not utf8_valid(mv, kpos + 1, kpos + 1 + n)):
                        self._fail("invalid UTF-8 in text string", kpos)
                    self.pos = kpos + 1 + n
                else:
                    key = self.item(depth)
                if isinstance(key, (list, dict, Tag)):
                    self._fail("map key must be a scalar", kpos)
                if key != key:
                    self._fail("NaN map key", kpos)
                if key in out:
                    self._fail("duplicate map key {!r}".format(key), kpos)
                out[key] = self.item(depth)
            return out
        # major 6: tag
        return Tag(arg, self.item(depth))


def _as_view(data):
    if isinstance(data, memoryview):
        return data
    if isinstance(data, (bytes, bytearray)):
        return memoryview(data)
    raise CBORError("cannot decode from {}".format(type(data).__name__))


def loads(data, max_depth=DEFAULT_MAX_DEPTH, allow_trailing=False, canonical=False):
    """Decode one CBOR item from bytes/bytearray/memoryview."""
    value, used = decode_prefix(data, max_depth)
    total = len(data)
    if used != total and not allow_trailing:
        raise CBORError("{} trailing bytes at offset {}".format(total - used, used))
    if canonical:
        if dumps(value, max_depth) != bytes(_as_view(data)[:used]):
            raise CBORError("not in deterministic encoding (RFC 8949 4.2.1) at offset 0")
    return value


def decode_prefix(data, max_depth=DEFAULT_MAX_DEPTH):
    """Decode the first item; return (value, number of bytes it used)."""
    mv = _as_view(data)
    dec = _Decoder(mv, len(mv), max_depth)
    value = dec.item(0)
    return value, dec.pos


# ---------------------------------------------------------------- encoding

def _float_to_half(x):
    """IEEE half-precision bits of x if x converts exactly, else -1 (x not NaN)."""
    if x == 0.0:
        return 0x8000 if math.copysign(1.0, x) < 0 else 0
    sign = 0
    if x < 0:
        sign = 0x8000
        x = -x
    if math.isinf(x):
        return sign | 0x7C00
    m, e = math.frexp(x)  # x = m * 2**e, 0.5 <= m < 1
    biased = e + 14  # as 1.f * 2**(biased - 15)
    if biased >= 31:
        return -1
    if biased >= 1:
        f = (m * 2.0 - 1.0) * 1024.0
    else:
        f = math.ldexp(x, 24)  # subnormal: x = f * 2**-24
        biased = 0
    fi = int(f)
    if fi != f:
        return -1
    return sign | (biased << 10) | fi


def _head(out, major, n):
    major <<= 5
    if n < 24:
        out.append(major | n)
    elif n < 0x100:
        out.append(major | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(major | 25)
        out.append(n >> 8)
        out.append(n & 0xFF)
    elif n < 0x100000000:
        out.append(major | 26)
        out.extend(n.to_bytes(4, "big"))
    else:
        out.append(major | 27)
        out.extend(n.to_bytes(8, "big"))


def _enc_float(out, x):
    if x != x:
        out.extend(b"\xf9\x7e\x00")
        return
    h = _float_to_half(x)
    if h >= 0:
        out.append(0xF9)
        out.extend(h.to_bytes(2, "big"))
        return
    try:
        single = struct.pack(">f", x)
        fits = struct.unpack(">f", single)[0] == x
    except (OverflowError, ValueError):
        fits = False
    if fits:
        out.append(0xFA)
        out.extend(single)
    else:
        out.append(0xFB)
        out.extend(struct.pack(">d", x))


def _enc(out, obj, depth, max_depth):
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            if obj > _U64:
                raise CBORError("integer {} does not fit 64 bits".format(obj))
            _head(out, 0, obj)
        else:
            n = -1 - obj
            if n > _U64:
                raise CBORError("integer {} does not fit 64 bits".format(obj))
            _head(out, 1, n)
    elif isinstance(obj, float):
        _enc_float(out, obj)
    elif isinstance(obj, str):
        try:
            raw = obj.encode("utf-8")
        except UnicodeError:
            raise CBORError("text is not encodable as UTF-8") from None
        _head(out, 3, len(raw))
        out.extend(raw)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(out, 2, len(obj))
        out.extend(obj)
    else:
        if depth >= max_depth:
            raise CBORError("nesting deeper than {}".format(max_depth))
        depth += 1
        if isinstance(obj, (list, tuple)):
            _head(out, 4, len(obj))
            for v in obj:
                _enc(out, v, depth, max_depth)
        elif isinstance(obj, dict):
            pairs = []
            for k, v in obj.items():
                kb = _key_cache.get(k) if isinstance(k, str) else None
                if kb is None:
                    kbuf = bytearray()
                    _enc(kbuf, k, depth, max_depth)
                    kb = bytes(kbuf)
                    if isinstance(k, str) and len(_key_cache) < _KEY_CACHE_MAX:
                        _key_cache[k] = kb
                pairs.append((kb, v))
            pairs.sort()  # encoded keys are distinct, so values are never compared
            _head(out, 5, len(pairs))
            for kb, v in pairs:
                out.extend(kb)
                _enc(out, v, depth, max_depth)
        elif isinstance(obj, Tag):
            if not isinstance(obj.tag, int) or obj.tag < 0 or obj.tag > _U64:
                raise CBORError("tag number {!r} out of range".format(obj.tag))
            _head(out, 6, obj.tag)
            _enc(out, obj.value, depth, max_depth)
        else:
            raise CBORError("cannot encode type {}".format(type(obj).__name__))


# encoded text map keys: link messages reuse a few dozen keys, so caching them
# saves an encode and two allocations per key
_KEY_CACHE_MAX = 96
_key_cache = {}



def dumps(obj, max_depth=DEFAULT_MAX_DEPTH):
    """Encode obj in core deterministic CBOR; returns bytes."""
    out = bytearray()
    _enc(out, obj, 0, max_depth)
    return bytes(out)


def dumps_into(out, obj, max_depth=DEFAULT_MAX_DEPTH):
    """Append the encoding of obj to the bytearray out (saves one copy)."""
    _enc(out, obj, 0, max_depth)
