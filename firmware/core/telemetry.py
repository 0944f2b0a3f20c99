"""The `tel` message encoded in place: each sample is written as CBOR straight into one
preallocated buffer, so the station's sample a second allocates nothing on the board.

The bytes are those cbor.dumps(link.tel(samples)) gives (deterministic encoding: map keys
in bytewise order of their encoding), so the host reads the same message as before.

A sample is begin(), then put(key, value) for each field and put_errors(key, mask) for the
error list, then end(). A key is learnt the first time it is put (its encoding and place in
the key order are kept): adding a field to the telemetry is one more put. Values: ints,
True/False/None, text (each distinct string encoded once and kept), an error mask sent as
the list of its codes. Ints of 2**30 or more are heap objects on a 32-bit board already;
writing them allocates nothing more.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import cbor, errors

# {"t": "tel", "v": 1, "samples": [...]}: the array head follows, then the samples
_HEAD = b"\xa3\x61t\x63tel\x61v\x01\x67samples"
_FIELDS_MAX = const(40)
_TEXT_MAX = const(48)     # distinct strings kept encoded (modes, pilot states, limit sources)
_ERRORS = const(1)        # field kind: an error mask sent as its codes
_CODE_STRIDE = const(8)   # an error code's CBOR text: head byte + up to 7 characters


class TelBatch:
    def __init__(self, max_payload, max_samples):
        if max_samples > 23:
            raise ValueError('a tel batch holds at most 23 samples (one-byte array head)')
        self.limit = max_payload           # CBOR bytes of one message at most
        self.buf = bytearray(max_payload + 4)   # + room for the link's CRC
        self.start = _put(self.buf, 0, _HEAD) + 1
        self.end_at = self.start
        self.count = 0                     # samples in the batch
        self.n = 0                         # fields learnt
        self.index = {}                    # key -> field number
        # the learnt keys' CBOR texts one after another in one buffer (field i's from
        # key_at[i] to key_at[i + 1]): a bytes object each would take three times the RAM
        self.keys = bytearray()
        self.key_at = [0] * (_FIELDS_MAX + 1)
        self.kind = bytearray(_FIELDS_MAX)
        self.vals = [None] * _FIELDS_MAX
        self.have = bytearray(_FIELDS_MAX)  # put since begin()
        self.order = bytearray(_FIELDS_MAX)  # field numbers in key order
        self.text = {}                     # str -> its CBOR
        # every error code's CBOR text in one buffer, _CODE_STRIDE bytes each (24 bytes
        # objects and their list would take four times the RAM)
        self.codes = bytearray(_CODE_STRIDE * len(errors.CODES))
        for i in range(len(errors.CODES)):
            raw = cbor.dumps(errors.CODES[i])
            if len(raw) > _CODE_STRIDE:
                raise ValueError('telemetry: error code {} longer than {} bytes'.format(
                    errors.CODES[i], _CODE_STRIDE - 1))
            _put(self.codes, i * _CODE_STRIDE, raw)

    # -- one sample ---------------------------------------------------------------------

    def begin(self):
        for i in range(self.n):
            self.have[i] = 0

    def put(self, key, value):
        i = self.index.get(key, -1)
        if i < 0:
            i = self._learn(key, 0)
        self.vals[i] = value
        self.have[i] = 1

    def put_errors(self, key, mask):
        i = self.index.get(key, -1)
        if i < 0:
            i = self._learn(key, _ERRORS)
        self.vals[i] = mask
        self.have[i] = 1

    def end(self):
        """Add the sample to the batch: True; False when it does not fit behind the samples
        already there (the batch is unchanged: send it, then end() again)."""
        at = self._encode(self.end_at)
        if at < 0 or at > self.limit:
            return False
        self.end_at = at
        self.count += 1
        return True

    # -- the batch ----------------------------------------------------------------------

    def payload(self):
        """The number of CBOR bytes of the tel message in buf."""
        self.buf[self.start - 1] = 0x80 | self.count
        return self.end_at

    def clear(self):
        self.end_at = self.start
        self.count = 0

    # -- encoding -----------------------------------------------------------------------

    def _learn(self, key, kind):
        if self.n >= _FIELDS_MAX:
            raise ValueError('telemetry: more than {} fields'.format(_FIELDS_MAX))
        i = self.n
        self.index[key] = i
        self.keys.extend(cbor.dumps(key))
        self.key_at[i + 1] = len(self.keys)
        self.kind[i] = kind
        self.n = i + 1
        keys = self.keys
        at = self.key_at
        for j, f in enumerate(sorted(range(self.n), key=lambda f: bytes(keys[at[f]:at[f + 1]]))):
            self.order[j] = f
        return i

    def _encode(self, at):
        b = self.buf
        room = len(b) - 4
        fields = 0
        for i in range(self.n):
            fields += self.have[i]
        at = _head(b, at, 0xA0, fields)
        for j in range(self.n):
            i = self.order[j]
            if not self.have[i]:
                continue
            k = self.key_at[i]
            end = self.key_at[i + 1]
            if at + end - k + 9 > room:
                return -1
            keys = self.keys
            while k < end:
                b[at] = keys[k]
                at += 1
                k += 1
            v = self.vals[i]
            if self.kind[i] == _ERRORS:
                at = self._errors(b, at, v, room)
            elif v is True:
                b[at] = 0xF5
                at += 1
            elif v is False:
                b[at] = 0xF4
                at += 1
            elif v is None:
                b[at] = 0xF6
                at += 1
            elif isinstance(v, int):
                at = _int(b, at, v)
            else:
                raw = self.text.get(v) if isinstance(v, str) else None
                if raw is None:
                    raw = cbor.dumps(v)   # a new string (kept), or another type (allocates)
                    if isinstance(v, str) and len(self.text) < _TEXT_MAX:
                        self.text[v] = raw
                if at + len(raw) > room:
                    return -1
                at = _put(b, at, raw)
            if at < 0:
                return -1
        return at

    def _errors(self, b, at, mask, room):
        codes = self.codes
        n = len(codes) // _CODE_STRIDE
        k = 0
        for i in range(n):
            if mask & (1 << i):
                k += 1
        at = _head(b, at, 0x80, k)
        for i in range(n):
            if mask & (1 << i):
                c = i * _CODE_STRIDE
                end = c + 1 + (codes[c] & 0x1F)   # the text's head holds its length
                if at + end - c > room:
                    return -1
                while c < end:
                    b[at] = codes[c]
                    at += 1
                    c += 1
        return at


def _put(buf, at, raw):
    for j in range(len(raw)):
        buf[at + j] = raw[j]
    return at + len(raw)


def _head(b, at, major, n):
    # a CBOR head (major type in the top 3 bits) for 0 <= n < 2**32
    if n < 24:
        b[at] = major | n
        return at + 1
    if n < 0x100:
        b[at] = major | 24
        b[at + 1] = n
        return at + 2
    if n < 0x10000:
        b[at] = major | 25
        b[at + 1] = n >> 8
        b[at + 2] = n & 0xFF
        return at + 3
    b[at] = major | 26
    b[at + 1] = (n >> 24) & 0xFF
    b[at + 2] = (n >> 16) & 0xFF
    b[at + 3] = (n >> 8) & 0xFF
    b[at + 4] = n & 0xFF
    return at + 5


def _int(b, at, v):
    major = 0x00
    if v < 0:
        major = 0x20
        v = -1 - v
    if v <= 0x3FFFFFFF:   # a small int: compared without touching a heap integer
        return _head(b, at, major, v)
    if v <= 0xFFFFFFFF:
        return _head(b, at, major, v)
    if v > 0xFFFFFFFFFFFFFFFF:
        raise ValueError('telemetry: integer {} does not fit 64 bits'.format(v))
    b[at] = major | 27
    for j in range(8):
        b[at + 1 + j] = (v >> (56 - 8 * j)) & 0xFF
    return at + 9
