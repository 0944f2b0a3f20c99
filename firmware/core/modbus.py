"""Modbus RTU master for the RS-485 energy meter (pure: no I/O, no clock).

The shell owns the UART. It moves bytes between the UART and this master and
passes in the time; the master decides what is a frame, what is an error and
when the bus is quiet enough to talk:

    master.request(unit, addr, count)        # queue a read-input-registers (0x04)
    n = master.tx_ready(now_us)              # > 0: write master.tx[:n] to the UART
    master.sent(now_us)                      # after the last byte left the wire
    master.feed(buf, n, now_us, end_us)      # bytes read from the UART (end_us: optional)
    r = master.poll(now_us)                  # BUSY, or the final result code

Times are MicroPython `ticks_us()` values: differences are taken modulo the
ticks period (2**30), so the shell may pass the raw ticks and never a bignum.

Every failure ends in the named safe state IDLE with the reply discarded and a
stats counter raised; the meter reader then keeps its last reading ageing, and
the controller's METER_STALE_S rule (V2G-120) forbids discharge.
"""

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core.ticks import diff as ticks_diff  # noqa: F401  (a - b for ticks, across the wrap)

_FUNC_READ_INPUT = const(0x04)
_EXC_FLAG = const(0x80)

# Result codes of parse_reply() and poll().
OK = const(0)
BUSY = const(1)
ERR_TIMEOUT = const(-1)
ERR_CRC = const(-2)
ERR_WRONG_UNIT = const(-3)
ERR_BAD_LENGTH = const(-4)
ERR_EXCEPTION = const(-5)
ERR_BAD_FUNCTION = const(-6)

# Master states.
IDLE = const(0)
_PENDING = const(1)  # request built, waiting for bus silence before sending
_SENT = const(2)  # bytes handed to the UART, waiting for sent()
_WAIT_REPLY = const(3)

MAX_REGS = const(125)  # Modbus limit for function 0x04 (reply PDU <= 253 bytes)
_RX_SIZE = const(256)  # largest RTU frame

# Largest magnitude returned by f32_milli (the MicroPython small-int limit).
MILLI_MAX = const(0x3FFFFFFF)
MILLI_INVALID = const(-0x40000000)  # NaN or infinity in the register pair


# CRC-16/MODBUS table (reflected polynomial 0xA001), entry i as 2 bytes little-endian.
# A bytes constant stays in flash when frozen or run from ROMFS, where a table built at
# import took 1 kB of heap (tests/firmware/test_modbus.py checks it against the polynomial).
_CRC_TABLE = (
    b'\x00\x00\xc1\xc0\x81\xc1\x40\x01\x01\xc3\xc0\x03\x80\x02\x41\xc2'
    b'\x01\xc6\xc0\x06\x80\x07\x41\xc7\x00\x05\xc1\xc5\x81\xc4\x40\x04'
    b'\x01\xcc\xc0\x0c\x80\x0d\x41\xcd\x00\x0f\xc1\xcf\x81\xce\x40\x0e'
    b'\x00\x0a\xc1\xca\x81\xcb\x40\x0b\x01\xc9\xc0\x09\x80\x08\x41\xc8'
    b'\x01\xd8\xc0\x18\x80\x19\x41\xd9\x00\x1b\xc1\xdb\x81\xda\x40\x1a'
    b'\x00\x1e\xc1\xde\x81\xdf\x40\x1f\x01\xdd\xc0\x1d\x80\x1c\x41\xdc'
    b'\x00\x14\xc1\xd4\x81\xd5\x40\x15\x01\xd7\xc0\x17\x80\x16\x41\xd6'
    b'\x01\xd2\xc0\x12\x80\x13\x41\xd3\x00\x11\xc1\xd1\x81\xd0\x40\x10'
    b'\x01\xf0\xc0\x30\x80\x31\x41\xf1\x00\x33\xc1\xf3\x81\xf2\x40\x32'
    b'\x00\x36\xc1\xf6\x81\xf7\x40\x37\x01\xf5\xc0\x35\x80\x34\x41\xf4'
    b'\x00\x3c\xc1\xfc\x81\xfd\x40\x3d\x01\xff\xc0\x3f\x80\x3e\x41\xfe'
    b'\x01\xfa\xc0\x3a\x80\x3b\x41\xfb\x00\x39\xc1\xf9\x81\xf8\x40\x38'
    b'\x00\x28\xc1\xe8\x81\xe9\x40\x29\x01\xeb\xc0\x2b\x80\x2a\x41\xea'
    b'\x01\xee\xc0\x2e\x80\x2f\x41\xef\x00\x2d\xc1\xed\x81\xec\x40\x2c'
    b'\x01\xe4\xc0\x24\x80\x25\x41\xe5\x00\x27\xc1\xe7\x81\xe6\x40\x26'
    b'\x00\x22\xc1\xe2\x81\xe3\x40\x23\x01\xe1\xc0\x21\x80\x20\x41\xe0'
    b'\x01\xa0\xc0\x60\x80\x61\x41\xa1\x00\x63\xc1\xa3\x81\xa2\x40\x62'
    b'\x00\x66\xc1\xa6\x81\xa7\x40\x67\x01\xa5\xc0\x65\x80\x64\x41\xa4'
    b'\x00\x6c\xc1\xac\x81\xad\x40\x6d\x01\xaf\xc0\x6f\x80\x6e\x41\xae'
    b'\x01\xaa\xc0\x6a\x80\x6b\x41\xab\x00\x69\xc1\xa9\x81\xa8\x40\x68'
    b'\x00\x78\xc1\xb8\x81\xb9\x40\x79\x01\xbb\xc0\x7b\x80\x7a\x41\xba'
    b'\x01\xbe\xc0\x7e\x80\x7f\x41\xbf\x00\x7d\xc1\xbd\x81\xbc\x40\x7c'
    b'\x01\xb4\xc0\x74\x80\x75\x41\xb5\x00\x77\xc1\xb7\x81\xb6\x40\x76'
    b'\x00\x72\xc1\xb2\x81\xb3\x40\x73\x01\xb1\xc0\x71\x80\x70\x41\xb0'
    b'\x00\x50\xc1\x90\x81\x91\x40\x51\x01\x93\xc0\x53\x80\x52\x41\x92'
    b'\x01\x96\xc0\x56\x80\x57\x41\x97\x00\x55\xc1\x95\x81\x94\x40\x54'
    b'\x01\x9c\xc0\x5c\x80\x5d\x41\x9d\x00\x5f\xc1\x9f\x81\x9e\x40\x5e'
    b'\x00\x5a\xc1\x9a\x81\x9b\x40\x5b\x01\x99\xc0\x59\x80\x58\x41\x98'
    b'\x01\x88\xc0\x48\x80\x49\x41\x89\x00\x4b\xc1\x8b\x81\x8a\x40\x4a'
    b'\x00\x4e\xc1\x8e\x81\x8f\x40\x4f\x01\x8d\xc0\x4d\x80\x4c\x41\x8c'
    b'\x00\x44\xc1\x84\x81\x85\x40\x45\x01\x87\xc0\x47\x80\x46\x41\x86'
    b'\x01\x82\xc0\x42\x80\x43\x41\x83\x00\x41\xc1\x81\x81\x80\x40\x40'
)


def crc16(buf, n, start=0):
    """CRC-16/MODBUS over buf[start:start+n]; init 0xFFFF. Sent low byte first."""
    crc = 0xFFFF
    t = _CRC_TABLE
    for i in range(start, start + n):
        k = ((crc ^ buf[i]) & 0xFF) << 1
        crc = (crc >> 8) ^ t[k] ^ (t[k + 1] << 8)
    return crc


def build_read_input(buf, unit, addr, count):
    """Write a function 0x04 request into buf (>= 8 bytes); return its length (8).

    Raises ValueError naming the field if a value cannot be sent.
    """
    if unit < 1 or unit > 247:
        raise ValueError("unit id out of 1..247")
    if addr < 0 or addr > 0xFFFF:
        raise ValueError("register address out of 0..65535")
    if count < 1 or count > MAX_REGS or addr + count > 0x10000:
        raise ValueError("register count out of 1..125")
    buf[0] = unit
    buf[1] = _FUNC_READ_INPUT
    buf[2] = addr >> 8
    buf[3] = addr & 0xFF
    buf[4] = count >> 8
    buf[5] = count & 0xFF
    crc = crc16(buf, 6)
    buf[6] = crc & 0xFF
    buf[7] = crc >> 8
    return 8


def parse_reply(buf, n, unit, func, count):
    """Check a complete reply frame buf[:n] to a read of `count` registers.

    Returns OK (registers at buf[3:3 + 2*count]) or an ERR_* code. For
    ERR_EXCEPTION the exception code is buf[2].
    The length is judged before the CRC so that a truncated or over-long frame
    is reported as such rather than as line noise.
    """
    if n < 5:
        return ERR_BAD_LENGTH
    f = buf[1]
    if f == func:
        if n != 5 + 2 * count:
            return ERR_BAD_LENGTH
    elif f == func | _EXC_FLAG:
        if n != 5:
            return ERR_BAD_LENGTH
    crc = crc16(buf, n - 2)
    if buf[n - 2] != crc & 0xFF or buf[n - 1] != crc >> 8:
        return ERR_CRC
    if buf[0] != unit:
        return ERR_WRONG_UNIT
    if f == func | _EXC_FLAG:
        return ERR_EXCEPTION
    if f != func:
        return ERR_BAD_FUNCTION
    if buf[2] != 2 * count:
        return ERR_BAD_LENGTH
    return OK


def f32_milli(buf, off):
    """IEEE-754 float32, big-endian, high word first -> value * 1000 as int, rounded
    half away from zero.

    Integer arithmetic only, so the result is the same on the board (single
    precision floats), on the VM (doubles) and on CPython, and nothing is
    allocated. |result| saturates at MILLI_MAX; NaN/inf give MILLI_INVALID.
    """
    hi = (buf[off] << 8) | buf[off + 1]
    lo = (buf[off + 2] << 8) | buf[off + 3]
    e = (hi >> 7) & 0xFF
    if e == 0xFF:
        return MILLI_INVALID
    if e == 0:
        return 0  # zero or subnormal (< 1.2e-38)
    m = ((hi & 0x7F) << 16) | lo | 0x800000  # 24-bit significand
    # value * 1000 = m * 125 / 2**t with t = 150 - e - 3, rounded half up. m * 125
    # would pass 2**30, so split m = mh * 256 + ml: a = mh * 125, b = ml * 125, and
    # value * 1000 = (a * 256 + b) / 2**t, every partial sum below 2**30.
    t = 147 - e
    if t < 0:
        r = MILLI_MAX   # at least 2**23 * 125 * 2 = 2.1e9 milli-units
    elif t > 32:
        r = 0           # below 2**24 * 125 / 2**33 = 0.24 milli-units
    else:
        a = (m >> 8) * 125
        b = (m & 0xFF) * 125
        if t == 0:
            r = MILLI_MAX if a > (MILLI_MAX - b) >> 8 else (a << 8) + b
        elif t <= 8:
            r = (a << (8 - t)) + ((b + (1 << (t - 1))) >> t)
        else:
            # a = ah * 2**u + al: ah + floor((al * 256 + b + 2**(t-1)) / 2**t), and since
            # al and 2**(t-9) are whole, the quotient is unchanged with b / 256 floored
            u = t - 8
            r = (a >> u) + (((a & ((1 << u) - 1)) + (1 << (t - 9)) + (b >> 8)) >> u)
        if r > MILLI_MAX:
            r = MILLI_MAX
    if hi & 0x8000:
        return -r
    return r


class ModbusStats:
    def __init__(self):
        self.ok = 0
        self.timeouts = 0
        self.crc_errors = 0
        self.wrong_unit = 0
        self.bad_length = 0
        self.bad_function = 0
        self.stray_bytes = 0  # bytes received while no reply was expected
        self.overruns = 0  # reply longer than the receive buffer
        # exceptions[code] for codes 1..15; index 0 collects any other code
        self.exceptions = [0] * 16

    def exceptions_total(self):
        s = 0
        for c in self.exceptions:
            s += c
        return s

    def clear(self):
        self.__init__()


class ModbusMaster:
    def __init__(self, baud, timeout_ms, bits_per_char=10, min_gap_us=10000):
        """baud: line speed; timeout_ms: reply timeout after the request left;
        bits_per_char: 10 for 8N1, 11 for 8E1/8O1/8N2.

        min_gap_us: the shell sees bytes when it polls the UART, not when they
        arrive, so a short (bad) reply is declared complete after
        max(t3.5, min_gap_us) of silence. Good replies end at their expected
        length and never wait for it. t3.5 alone still rules when we transmit.
        """
        if baud < 1200 or baud > 115200:
            raise ValueError("baud out of 1200..115200")
        if timeout_ms < 10 or timeout_ms > 5000:
            raise ValueError("timeout_ms out of 10..5000")
        if bits_per_char not in (10, 11):
            raise ValueError("bits_per_char must be 10 or 11")
        self.baud = baud
        self.char_us = (bits_per_char * 1000000 + baud - 1) // baud
        if baud > 19200:
            # Modbus over serial line: fixed values above 19200 baud
            self.t35_us = 1750
            self.t15_us = 750
        else:
            self.t35_us = (35 * self.char_us + 9) // 10
            self.t15_us = (15 * self.char_us + 9) // 10
        self.timeout_us = timeout_ms * 1000
        self.gap_us = self.t35_us if self.t35_us > min_gap_us else min_gap_us
        self.tx = bytearray(8)
        self.rx = bytearray(_RX_SIZE)
        self.rx_n = 0
        self.state = IDLE
        self.unit = 0
        self.count = 0
        self.expect_n = 0
        self.exc_code = 0
        self.last_result = OK
        self.t_tx = 0  # when tx_ready() handed the request over
        self.t_sent = 0
        self.t_last_rx = 0
        self.t_quiet = 0  # last bus activity (our tx end or any rx byte)
        self.heard = False  # t_quiet means nothing until the bus was active once
        self.stats = ModbusStats()

    def request(self, unit, addr, count):
        """Queue a read of `count` input registers. False if a request is in flight."""
        if self.state != IDLE:
            return False
        build_read_input(self.tx, unit, addr, count)
        self.unit = unit
        self.count = count
        self.expect_n = 5 + 2 * count
        self.state = _PENDING
        return True

    def tx_ready(self, now_us):
        """Bytes of self.tx to write now, or 0 (nothing queued, or bus not yet quiet for t3.5)."""
        if self.state != _PENDING:
            return 0
        if self.heard and ticks_diff(now_us, self.t_quiet) < self.t35_us:
            return 0
        self.state = _SENT
        self.t_tx = now_us
        self.rx_n = 0
        return 8

    def sent(self, now_us):
        """The request has left the wire: the reply timeout starts now."""
        if self.state == _SENT:
            self.state = _WAIT_REPLY
            self.t_sent = now_us
            self.t_quiet = now_us
            self.heard = True

    def feed(self, buf, n, now_us, end_us=None):
        """Bytes received from the line; now_us is when the shell read them.

        end_us: when the last of them had left the wire, if the port can tell (its
        receiver's idle time); it must not be later than now_us."""
        if n <= 0:
            return
        # The last byte arrived at or before now_us; without a receive timestamp that
        # is the only safe start for the t3.5 silence the meter needs before we talk.
        # With one, the next request may leave in this same pass once t3.5 has passed,
        # so a request per control step fits (app/meter.py).
        # Only for a reply being awaited: it ended after our request; stray bytes may not.
        if end_us is not None and self.state == _WAIT_REPLY and ticks_diff(now_us, end_us) >= 0:
            self.t_quiet = end_us
        else:
            self.t_quiet = now_us
        self.heard = True
        if self.state != _WAIT_REPLY:
            self.stats.stray_bytes += n  # a late or foreign reply: never parsed
            return
        i = 0
        rx = self.rx
        k = self.rx_n
        while i < n:
            if k >= _RX_SIZE:
                self.stats.overruns += 1
                break
            rx[k] = buf[i]
            k += 1
            i += 1
        self.rx_n = k
        self.t_last_rx = now_us

    def poll(self, now_us):
        """BUSY while a transaction runs (or nothing asked); else its final result.

        A frame ends at its expected length, or after t3.5 of silence.
        """
        if self.state != _WAIT_REPLY:
            return BUSY
        n = self.rx_n
        if n == 0:
            if ticks_diff(now_us, self.t_sent) >= self.timeout_us:
                self.stats.timeouts += 1
                return self._finish(ERR_TIMEOUT)
            return BUSY
        done = n >= self.expect_n or (n >= 5 and self.rx[1] & _EXC_FLAG)
        if not done and ticks_diff(now_us, self.t_last_rx) >= self.gap_us:
            done = True
        if not done:
            if ticks_diff(now_us, self.t_sent) >= self.timeout_us + self.gap_us + self.char_us * _RX_SIZE:
                done = True  # a trickle that never completes
            else:
                return BUSY
        r = parse_reply(self.rx, n, self.unit, _FUNC_READ_INPUT, self.count)
        s = self.stats
        if r == OK:
            s.ok += 1
        elif r == ERR_CRC:
            s.crc_errors += 1
        elif r == ERR_WRONG_UNIT:
            s.wrong_unit += 1
        elif r == ERR_BAD_LENGTH:
            s.bad_length += 1
        elif r == ERR_BAD_FUNCTION:
            s.bad_function += 1
        elif r == ERR_EXCEPTION:
            c = self.rx[2]
            self.exc_code = c
            if c < 16:
                s.exceptions[c] += 1
            else:
                s.exceptions[0] += 1
        return self._finish(r)

    def _finish(self, r):
        self.state = IDLE
        self.last_result = r
        return r

    def wait_us(self, now_us, reply_us):
        """Microseconds from now_us until the transaction in hand next needs the shell, for
        a shell that moves bytes whenever they are due (app/meter.py): the t3.5 silence
        before a queued request ends, the request leaves the wire, the reply is complete
        if the meter answers within reply_us beyond t3.5 (or its rest arrives). 0 or less:
        due now (a reply that is late, looked for again by the shell); None: nothing in
        hand."""
        s = self.state
        if s == _PENDING:
            return self.t35_us - ticks_diff(now_us, self.t_quiet) if self.heard else 0
        if s == _SENT:
            return 8 * self.char_us - ticks_diff(now_us, self.t_tx)
        if s == _WAIT_REPLY:
            n = self.rx_n
            if n:
                return (self.expect_n - n) * self.char_us - ticks_diff(now_us, self.t_last_rx)
            return (self.t35_us + reply_us + self.expect_n * self.char_us
                    - ticks_diff(now_us, self.t_sent))
        return None

    def abort(self):
        """Drop any transaction (safe state IDLE); the next request waits t3.5."""
        self.state = IDLE
        self.rx_n = 0

    def reg_offset(self, i):
        """Offset in self.rx of register i of the last OK reply."""
        return 3 + 2 * i

    def wire_time_us(self, count):
        """Time on the wire for one read of `count` registers at this baud:
        request + t3.5 + reply + t3.5 (the meter's own latency not included)."""
        return (8 + 5 + 2 * count) * self.char_us + 2 * self.t35_us
