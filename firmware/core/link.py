"""Host link: framing, message checks and builders (controller side).

Wire format (docs/host-link.md): each frame is
    COBS( CBOR(message) + CRC-32(CBOR bytes) little-endian ) + 0x00
with at most MAX_FRAME bytes between COBS and the delimiter's removal.
Every message is a CBOR map with text keys, "v" = VERSION and "t" = type.

Receiving is a bounded state machine over preallocated buffers. Anything
wrong with a frame (oversized, bad COBS, short, bad CRC, undecodable CBOR,
not a valid message, unknown type) is counted in `stats`, described in
`last_error` and dropped; reception resynchronises on the next 0x00. feed()
never raises for bad input.

Pure: no I/O, no clock. The shell owns the UART and calls feed()/send().
"""

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import cbor, cobs, crc32

VERSION = const(1)
MAX_FRAME = const(1024)  # CBOR + CRC bytes, before COBS
_CRC_LEN = const(4)
_MAX_DEPTH = const(8)  # link messages nest at most 4 deep (evt -> list -> map -> value)
TXN_MAX_LEN = const(64)

STAT_NAMES = (
    "frames_ok",     # valid messages delivered
    "crc_errors",    # CRC mismatch, or a frame too short to hold a CRC
    "cobs_errors",   # not valid COBS
    "oversize",      # longer than max_frame; dropped up to the next 0x00
    "cbor_errors",   # payload is not one well-formed CBOR item
    "unknown_type",  # valid message of a type this version does not know
    "bad_msg",       # not a map, wrong "v", missing/ill-typed field
    "tx_frames",     # frames written
    "tx_errors",     # messages send() refused (unencodable or too large)
)

_EMPTY = ()

# The steady-state messages in their deterministic encoding, for the paths that allocate
# nothing: a heartbeat {"t": "hb", "v": 1, "seq": N, "host_ms": N} and an rtt
# {"t": "rtt", "v": 1, "ms": N} are recognised byte by byte (anything else, or the same in
# another key order, goes through the general decoder), and hback is written in place.
_HB_HEAD = b"\xa4\x61t\x62hb\x61v\x01\x63seq"
_HBACK_HEAD = b"\xa4\x61t\x65hback\x61v\x01\x63seq"
_HOST_MS = b"\x67host_ms"
_RTT_HEAD = b"\xa3\x61t\x63rtt\x61v\x01\x62ms"
_FAST_MAX = const(48)      # COBS bytes of the longest frame the fast path looks at
_SMALL = const(0x3FFFFFFF)  # the largest int that is not a heap object on a 32-bit board

# field kinds
_INT = const(0)
_STR = const(1)
_BOOL = const(2)
_MAP = const(3)
_LIST = const(4)
_STR_OR_NONE = const(5)

# type -> ((field, kind, required), ...); unknown extra fields are ignored
SCHEMA = {
    "hello": (("fw", _STR, True), ("board", _STR, True), ("cfg_hash", _STR, True),
              ("reset_cause", _STR, True), ("boot_count", _INT, True)),
    "hb": (("seq", _INT, True), ("host_ms", _INT, True)),
    "hback": (("seq", _INT, True), ("host_ms", _INT, True)),
    "rtt": (("ms", _INT, True),),
    "cmd": (("txn", _STR, True), ("op", _STR, True), ("args", _MAP, False),
            ("deadline_ms", _INT, False), ("ttl_ms", _INT, False)),
    "res": (("txn", _STR, True), ("ok", _BOOL, True), ("code", _STR_OR_NONE, True),
            ("msg", _STR, True), ("data", _MAP, True)),
    "tel": (("samples", _LIST, True),),
    "evt": (("events", _LIST, True),),
}
_EVENT_SCHEMA = (("t_ms", _INT, True), ("code", _STR, True), ("on", _BOOL, True), ("msg", _STR, True))


def _is_int(x):
    # bool is a subclass of int in CPython (not in MicroPython): exclude it on both
    return isinstance(x, int) and x is not True and x is not False


def _kind_ok(x, kind):
    if kind == _INT:
        return _is_int(x)
    if kind == _STR:
        return isinstance(x, str)
    if kind == _BOOL:
        return x is True or x is False
    if kind == _MAP:
        return isinstance(x, dict)
    if kind == _LIST:
        return isinstance(x, list)
    return x is None or isinstance(x, str)


def _check_fields(msg, fields):
    for name, kind, required in fields:
        if name in msg:
            if not _kind_ok(msg[name], kind):
                return "field {} has the wrong type".format(name)
        elif required:
            return "field {} missing".format(name)
    return None


def check(msg):
    """Validate a decoded message. Returns (stat_name, reason) or None if valid."""
    if not isinstance(msg, dict):
        return ("bad_msg", "message is not a map")
    v = msg.get("v")
    if not _is_int(v) or v != VERSION:
        return ("bad_msg", "link version {!r} is not {}".format(v, VERSION))
    t = msg.get("t")
    if not isinstance(t, str):
        return ("bad_msg", "type is not text")
    fields = SCHEMA.get(t)
    if fields is None:
        return ("unknown_type", "unknown type {!r}".format(t))
    if t == "hello" and "fw" not in msg:
        return None  # a hello without fields is the host asking for one
    why = _check_fields(msg, fields)
    if why is None:
        if t == "cmd" or t == "res":
            n = len(msg["txn"])
            if n < 1 or n > TXN_MAX_LEN:
                why = "txn length {} not in 1..{}".format(n, TXN_MAX_LEN)
        elif t == "rtt" and msg["ms"] < 0:
            why = "negative rtt"
        elif t == "tel":
            for s in msg["samples"]:
                if not isinstance(s, dict):
                    why = "telemetry sample is not a map"
                    break
        elif t == "evt":
            for e in msg["events"]:
                if not isinstance(e, dict):
                    why = "event is not a map"
                else:
                    why = _check_fields(e, _EVENT_SCHEMA)
                if why is not None:
                    break
    if why is not None:
        return ("bad_msg", "{}: {}".format(t, why))
    return None


class Link:
    """One end of the host link.

    write_fn(buf) must write or copy all of buf before it returns: buf is a
    memoryview of a buffer the next send() reuses.
    """

    def __init__(self, write_fn, max_frame=MAX_FRAME, write_n=None):
        self.write_fn = write_fn
        # write_n(buf, n) writes buf[:n] (a UART's write(buf, n)): then a frame goes out
        # without a memoryview slice being made for it
        self.write_n = write_n
        self.max_frame = max_frame
        enc_max = cobs.max_encoded_len(max_frame)
        self._rx = bytearray(enc_max)  # COBS bytes of the frame being received
        self._rxv = memoryview(self._rx)
        self._rxn = 0
        self._dropping = False  # frame overflowed: discard up to the next 0x00
        self.fed_to = 0         # where the last feed() stopped
        # the decoded frame (may exceed max_frame by a little: checked), and the CBOR + CRC of
        # the frame being sent: one buffer, as a received frame is read into objects before
        # anything is sent and a send is over when it returns (1 kB of RAM less)
        self._dec = bytearray(enc_max)
        self._decv = memoryview(self._dec)
        self._txp = self._dec
        # leading 0x00 (first frame only) + COBS + delimiter
        self._txf = bytearray(enc_max + 2)
        self._txfv = memoryview(self._txf)
        self._sent_any = False
        self.stats = {}
        for name in STAT_NAMES:
            self.stats[name] = 0
        self.last_error = ""
        self._at = 0     # where the last _uint() stopped
        # the fast path's messages: the same two maps each time, their values replaced
        self._hb = {"v": VERSION, "t": "hb", "seq": 0, "host_ms": 0}
        self._rtt = {"v": VERSION, "t": "rtt", "ms": 0}

    def reset_stats(self):
        for name in STAT_NAMES:
            self.stats[name] = 0

    # ------------------------------------------------------------ receive

    def feed(self, data, n=-1, start=0, max_frames=0, sink=None):
        """Take received bytes (data[start:n], to the end when n < 0); return the
        complete valid messages (a list, or an empty tuple when there are none).

        With a sink, each message is passed to sink(msg) as it is found instead
        (the return is then empty), and a heartbeat or rtt frame in
        deterministic encoding takes a path that allocates nothing: its message
        is a map this link reuses, valid only until sink returns.

        With max_frames > 0 the scan stops after that many frames (valid or
        dropped): the work of one call is bounded whatever arrived. `fed_to` then
        says where it stopped; the caller passes the rest again (start=fed_to)
        before anything newer. Without a bound fed_to is n.

        bytes/bytearray input is scanned for delimiters at C speed; a
        memoryview is scanned byte by byte (slower but correct).
        """
        if n < 0 or n > len(data):
            n = len(data)
        kind = type(data)
        fast = kind is bytes or kind is bytearray
        mv = None    # made when a frame is copied: the fast path reads data itself
        if not fast:
            mv = data if kind is memoryview else memoryview(data)
        out = None
        frames = 0
        i = start
        while i < n:
            if max_frames > 0 and frames >= max_frames:
                break
            if fast:
                z = data.find(b"\x00", i, n)
            else:
                z = i
                while z < n and mv[z] != 0:
                    z += 1
                if z == n:
                    z = -1
            if z > i and sink is not None and z - i <= _FAST_MAX and not self._rxn and not self._dropping:
                msg = self._fast(data, i, z)
                if msg is not None:
                    frames += 1
                    sink(msg)
                    i = z + 1
                    continue
            end = n if z < 0 else z
            if mv is None:
                mv = memoryview(data)
            if not self._dropping:
                k = self._rxn
                if k + (end - i) > len(self._rx):
                    self._dropping = True
                elif end > i:
                    self._rxv[k:k + end - i] = mv[i:end]
                    self._rxn = k + end - i
            if z < 0:
                i = n
                break
            if self._rxn or self._dropping:
                frames += 1     # idle fill between frames costs nothing and is not counted
            msg = self._frame_end()
            if msg is not None and sink is not None:
                sink(msg)
            elif msg is not None:
                if out is None:
                    out = []
                out.append(msg)
            i = z + 1
        self.fed_to = i
        return _EMPTY if out is None else out

    def _fast(self, data, i, z):
        """The message of the frame data[i:z] when it is a heartbeat or an rtt in
        deterministic encoding with small values; else None (the general path then
        takes the frame, and counts what is wrong with it). Allocates nothing."""
        m = cobs.decode_at(data, i, z, self._dec)
        if m <= _CRC_LEN:
            return None
        body = m - _CRC_LEN
        d = self._dec
        if _starts(d, _HB_HEAD):
            seq = self._uint(d, len(_HB_HEAD), body)
            p = self._at
            if seq < 0 or not _starts(d, _HOST_MS, p):
                return None
            host_ms = self._uint(d, p + len(_HOST_MS), body)
            if host_ms < 0 or self._at != body or not crc32.check_le(d, body):
                return None
            msg = self._hb
            msg["seq"] = seq
            msg["host_ms"] = host_ms
        elif _starts(d, _RTT_HEAD):
            ms = self._uint(d, len(_RTT_HEAD), body)
            if ms < 0 or self._at != body or not crc32.check_le(d, body):
                return None
            msg = self._rtt
            msg["ms"] = ms
        else:
            return None
        self.stats["frames_ok"] += 1
        return msg

    def _uint(self, d, p, end):
        """The CBOR unsigned integer at d[p] when it is below 2**30, its end in _at;
        else -1 (another type, or a number that would be a heap object)."""
        if p >= end:
            return -1
        ib = d[p]
        if ib < 24:
            self._at = p + 1
            return ib
        if ib == 24:
            k = 1
        elif ib == 25:
            k = 2
        elif ib == 26:
            k = 4
        else:
            return -1
        if p + 1 + k > end:
            return -1
        if k == 4 and d[p + 1] > 0x3F:
            return -1
        v = 0
        for j in range(p + 1, p + 1 + k):
            v = (v << 8) | d[j]
        self._at = p + 1 + k
        return v

    def _drop(self, stat, why):
        self.stats[stat] += 1
        self.last_error = why
        return None

    def _frame_end(self):
        n = self._rxn
        self._rxn = 0
        if self._dropping:
            self._dropping = False
            return self._drop("oversize", "frame longer than {} bytes".format(self.max_frame))
        if n == 0:
            return None  # back-to-back delimiters are idle fill, not errors
        m = cobs.decode_into(self._rxv, n, self._decv)
        if m < 0:
            return self._drop("cobs_errors", "invalid COBS")
        if m > self.max_frame:
            return self._drop("oversize", "frame longer than {} bytes".format(self.max_frame))
        if m <= _CRC_LEN:
            return self._drop("crc_errors", "frame of {} bytes has no room for a CRC".format(m))
        body = m - _CRC_LEN
        d = self._dec
        want = crc32.crc32(self._decv[:body])
        got = d[body] | (d[body + 1] << 8) | (d[body + 2] << 16) | (d[body + 3] << 24)
        if want != got:
            return self._drop("crc_errors", "CRC mismatch")
        try:
            msg = cbor.loads(self._decv[:body], _MAX_DEPTH)
        except Exception as e:  # CBORError, or MemoryError on a tiny heap
            return self._drop("cbor_errors", "CBOR: {}".format(e))
        bad = check(msg)
        if bad is not None:
            return self._drop(bad[0], bad[1])
        if msg["t"] == "cmd" and "args" not in msg:
            msg["args"] = {}
        self.stats["frames_ok"] += 1
        return msg

    # ------------------------------------------------------------ send

    def send(self, msg):
        """Encode and write one message. Returns True when written; False when
        the message cannot be encoded or exceeds max_frame (counted in
        tx_errors, reason in last_error). Errors of write_fn propagate."""
        try:
            payload = cbor.dumps(msg, _MAX_DEPTH)
        except cbor.CBORError as e:
            self.stats["tx_errors"] += 1
            self.last_error = "send: {}".format(e)
            return False
        n = len(payload)
        if n + _CRC_LEN > self.max_frame:
            self.stats["tx_errors"] += 1
            self.last_error = "send: {} bytes exceed the {}-byte frame".format(n + _CRC_LEN, self.max_frame)
            return False
        p = self._txp
        p[0:n] = payload
        c = crc32.crc32(payload)
        p[n] = c & 0xFF
        p[n + 1] = (c >> 8) & 0xFF
        p[n + 2] = (c >> 16) & 0xFF
        p[n + 3] = (c >> 24) & 0xFF
        # the very first frame gets a leading delimiter so the far end drops
        # whatever partial bytes (boot noise) it holds before it
        start = 0
        if not self._sent_any:
            self._txf[0] = 0
            start = 1
            self._sent_any = True
        m = cobs.encode_into(p, n + _CRC_LEN, self._txfv[start:])
        self._write(start + m)
        return True

    def _write(self, end):
        # the COBS frame is _txf[:end]: delimit and write it
        self._txf[end] = 0
        if self.write_n is not None:
            self.write_n(self._txf, end + 1)
        else:
            self.write_fn(self._txfv[:end + 1])
        self.stats["tx_frames"] += 1

    def send_payload(self, buf, n):
        """Frame and write the message whose CBOR is buf[:n]; buf has 4 more bytes after
        it for the CRC. Nothing allocates (with write_n): the steady-state sends (telemetry,
        heartbeat echo) encode their CBOR in place and come here. False, counted in
        tx_errors, when it exceeds max_frame."""
        if n + _CRC_LEN > self.max_frame or n + _CRC_LEN > len(buf):
            self.stats["tx_errors"] += 1
            self.last_error = "send: {} bytes exceed the {}-byte frame".format(n + _CRC_LEN, self.max_frame)
            return False
        crc32.put_le(buf, n)
        start = 0
        if not self._sent_any:
            self._txf[0] = 0
            start = 1
            self._sent_any = True
        self._write(cobs.encode_at(buf, n + _CRC_LEN, self._txf, start))
        return True

    def send_hback(self, hb_msg):
        """Echo a heartbeat; written in place when its values are small ints (always, for
        a host that keeps host_ms within 30 bits), else through send()."""
        seq = hb_msg["seq"]
        host_ms = hb_msg["host_ms"]
        if not (0 <= seq <= _SMALL and 0 <= host_ms <= _SMALL):
            return self.send(hback(hb_msg))
        p = self._txp
        at = _put(p, 0, _HBACK_HEAD)
        at = _put_uint(p, at, seq)
        at = _put(p, at, _HOST_MS)
        at = _put_uint(p, at, host_ms)
        return self.send_payload(p, at)


def _starts(d, pat, at=0):
    """True when d[at:] starts with the bytes pat (compared in place)."""
    if at + len(pat) > len(d):
        return False
    for j in range(len(pat)):
        if d[at + j] != pat[j]:
            return False
    return True


def _put(buf, at, raw):
    """Copy the bytes raw into buf at index at; return the index after them."""
    for j in range(len(raw)):
        buf[at + j] = raw[j]
    return at + len(raw)


def _put_uint(buf, at, v):
    """The CBOR head of the unsigned integer v (0 <= v < 2**30) at buf[at]; the index after."""
    if v < 24:
        buf[at] = v
        return at + 1
    if v < 0x100:
        buf[at] = 0x18
        buf[at + 1] = v
        return at + 2
    if v < 0x10000:
        buf[at] = 0x19
        buf[at + 1] = v >> 8
        buf[at + 2] = v & 0xFF
        return at + 3
    buf[at] = 0x1A
    buf[at + 1] = v >> 24
    buf[at + 2] = (v >> 16) & 0xFF
    buf[at + 3] = (v >> 8) & 0xFF
    buf[at + 4] = v & 0xFF
    return at + 5


def encode_frame(msg, max_frame=MAX_FRAME):
    """One complete wire frame (COBS + delimiter) as bytes: for tests and docs."""
    out = []
    link = Link(out.append, max_frame)
    link._sent_any = True  # no leading delimiter
    if not link.send(msg):
        raise ValueError(link.last_error)
    return bytes(out[0])


# ---------------------------------------------------------------- builders

def hello(fw, board, cfg_hash, reset_cause, boot_count):
    return {"v": VERSION, "t": "hello", "fw": fw, "board": board, "cfg_hash": cfg_hash,
            "reset_cause": reset_cause, "boot_count": boot_count}


def hello_request():
    return {"v": VERSION, "t": "hello"}


def is_hello_request(msg):
    return msg["t"] == "hello" and "fw" not in msg


def hb(seq, host_ms):
    return {"v": VERSION, "t": "hb", "seq": seq, "host_ms": host_ms}


def hback(hb_msg):
    """The echo of a received heartbeat."""
    return {"v": VERSION, "t": "hback", "seq": hb_msg["seq"], "host_ms": hb_msg["host_ms"]}


def rtt(ms):
    return {"v": VERSION, "t": "rtt", "ms": ms}


def cmd(txn, op, args=None, deadline_ms=None, ttl_ms=None):
    msg = {"v": VERSION, "t": "cmd", "txn": txn, "op": op, "args": {} if args is None else args}
    if deadline_ms is not None:
        msg["deadline_ms"] = deadline_ms
    if ttl_ms is not None:
        msg["ttl_ms"] = ttl_ms
    return msg


def res(txn, ok, code=None, msg="", data=None):
    return {"v": VERSION, "t": "res", "txn": txn, "ok": ok, "code": code, "msg": msg,
            "data": {} if data is None else data}


def res_from(txn, result):
    """res from the (ok, code, msg, data) tuple of Controller.command()."""
    return res(txn, result[0], result[1], result[2] or "", result[3])


def tel(samples):
    return {"v": VERSION, "t": "tel", "samples": samples}


def evt(events):
    """evt from (t_ms, code, raised, msg) tuples as Controller.pop_events() gives them."""
    out = []
    for t_ms, code, raised, text in events:
        out.append({"t_ms": t_ms, "code": code, "on": raised, "msg": text})
    return {"v": VERSION, "t": "evt", "events": out}
