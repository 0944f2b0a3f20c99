"""Modbus RTU master: CRC, request bytes, reply checks, timing, stats."""

import struct

from fwtest import raises

from core import modbus


def _crc_frame(body):
    b = bytearray(body)
    c = modbus.crc16(b, len(b))
    b.append(c & 0xFF)
    b.append(c >> 8)
    return b


def _reply(unit, regs_bytes):
    return _crc_frame(bytes([unit, 4, len(regs_bytes)]) + bytes(regs_bytes))


def test_crc_reference_vectors():
    # CRC-16/MODBUS check value for "123456789"
    assert modbus.crc16(b"123456789", 9) == 0x4B37
    assert modbus.crc16(b"", 0) == 0xFFFF
    # the classic example: read 2 input registers from unit 1 at 0 -> CRC bytes 71 CB
    assert modbus.crc16(bytes([1, 4, 0, 0, 0, 2]), 6) == 0xCB71
    # start offset
    assert modbus.crc16(b"xx123456789", 9, 2) == 0x4B37


def test_crc_table_is_the_polynomials():
    # the table is a bytes constant (flash, not heap): every entry is what 0xA001 gives
    t = modbus._CRC_TABLE
    assert isinstance(t, bytes) and len(t) == 512
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        assert t[2 * i] | (t[2 * i + 1] << 8) == c, i


def test_request_bytes():
    buf = bytearray(8)
    assert modbus.build_read_input(buf, 1, 0, 2) == 8
    assert bytes(buf) == bytes([0x01, 0x04, 0x00, 0x00, 0x00, 0x02, 0x71, 0xCB])
    modbus.build_read_input(buf, 1, 0x0046, 6)
    assert bytes(buf[:6]) == bytes([1, 4, 0x00, 0x46, 0x00, 0x06])
    c = modbus.crc16(buf, 6)
    assert buf[6] == c & 0xFF and buf[7] == c >> 8


def test_request_rejects_bad_fields_and_leaves_buffer():
    buf = bytearray(b"\xAA" * 8)
    for unit, addr, count in ((0, 0, 1), (248, 0, 1), (1, -1, 1), (1, 0x10000, 1), (1, 0, 0), (1, 0, 126),
                              (1, 0xFFFF, 2)):
        raises(ValueError, modbus.build_read_input, buf, unit, addr, count)
    assert bytes(buf) == b"\xAA" * 8


def test_parse_good_reply():
    f = _reply(1, [0x43, 0x66, 0x19, 0x9A])
    assert modbus.parse_reply(f, len(f), 1, 4, 2) == modbus.OK


def test_parse_bad_inputs():
    good = _reply(1, [0x43, 0x66, 0x19, 0x9A])
    # corrupt CRC
    bad = bytearray(good)
    bad[-1] ^= 0x01
    assert modbus.parse_reply(bad, len(bad), 1, 4, 2) == modbus.ERR_CRC
    # corrupted payload byte
    bad = bytearray(good)
    bad[4] ^= 0x40
    assert modbus.parse_reply(bad, len(bad), 1, 4, 2) == modbus.ERR_CRC
    # truncated
    for n in (0, 1, 4, 5, 8):
        assert modbus.parse_reply(good, n, 1, 4, 2) == modbus.ERR_BAD_LENGTH
    # wrong unit (otherwise a perfect frame)
    other = _reply(2, [0x43, 0x66, 0x19, 0x9A])
    assert modbus.parse_reply(other, len(other), 1, 4, 2) == modbus.ERR_WRONG_UNIT
    # wrong length: a valid frame carrying 3 registers where 2 were asked
    longer = _reply(1, [0, 1, 2, 3, 4, 5])
    assert modbus.parse_reply(longer, len(longer), 1, 4, 2) == modbus.ERR_BAD_LENGTH
    # byte count lies but the frame length and CRC match the request
    lie = _crc_frame(bytes([1, 4, 6, 0x43, 0x66, 0x19, 0x9A]))
    assert modbus.parse_reply(lie, len(lie), 1, 4, 2) == modbus.ERR_BAD_LENGTH
    # other function code with a good CRC
    f3 = _crc_frame(bytes([1, 3, 4, 0, 0, 0, 0]))
    assert modbus.parse_reply(f3, len(f3), 1, 4, 2) == modbus.ERR_BAD_FUNCTION
    # garbage
    g = bytearray(b"\x13\x37\xde\xad\xbe\xef\x00\x55\xaa")
    assert modbus.parse_reply(g, len(g), 1, 4, 2) in (modbus.ERR_CRC, modbus.ERR_BAD_LENGTH)


def test_parse_exception_reply():
    e = _crc_frame(bytes([1, 0x84, 0x02]))
    assert modbus.parse_reply(e, 5, 1, 4, 2) == modbus.ERR_EXCEPTION
    assert e[2] == 2
    assert modbus.parse_reply(e, 4, 1, 4, 2) == modbus.ERR_BAD_LENGTH
    e2 = _crc_frame(bytes([9, 0x84, 0x02]))
    assert modbus.parse_reply(e2, 5, 1, 4, 2) == modbus.ERR_WRONG_UNIT


def _f32(v):
    return struct.pack(">f", v)


def test_float_decode_milli():
    for v, want in ((230.1, 230100), (0.0, 0), (-0.0, 0), (1.0, 1000), (-16.5, -16500), (49.987, 49987),
                    (0.0004, 0), (0.0005, 1), (-0.0015, -2), (12345.678, 12345678), (0.999, 999),
                    (1048575.0, 1048575000), (3.0e9, modbus.MILLI_MAX), (-3.0e9, -modbus.MILLI_MAX),
                    (1e-30, 0),
                    # edges: ties decided by the lowest significand bits, the last value
                    # below the saturation limit and the first above it
                    (0.0015, 2), (0.0025, 2), (-0.0025, -2), (0.0004999, 0),
                    (1073741.75, 1073741750), (-1073741.75, -1073741750),
                    (1073741.875, modbus.MILLI_MAX), (1048576.0, 1048576000), (3.4028235e38, modbus.MILLI_MAX)):
        got = modbus.f32_milli(_f32(v), 0)
        assert got == want, (v, got, want)
    assert modbus.f32_milli(b"\x7f\xc0\x00\x00", 0) == modbus.MILLI_INVALID  # NaN
    assert modbus.f32_milli(b"\xff\x80\x00\x00", 0) == modbus.MILLI_INVALID  # -inf
    assert modbus.f32_milli(b"\x00\x00" + _f32(2.5), 2) == 2500


def test_wait_us_says_when_a_transaction_next_needs_the_shell():
    m = modbus.ModbusMaster(38400, 200)
    assert m.wait_us(0, 10000) is None                   # nothing in hand
    assert m.request(1, 0, 6)
    assert m.wait_us(5000, 10000) == 0                   # never heard: may leave at once
    assert m.tx_ready(5000) == 8
    # handed to the UART: the request's 8 characters still on the wire
    assert m.wait_us(5000, 10000) == 8 * 261 and m.wait_us(6000, 10000) == 8 * 261 - 1000
    m.sent(7088)
    # the reply of 17 bytes, due after t3.5 and the meter's allowance
    assert m.wait_us(7088, 10000) == 1750 + 10000 + 17 * 261
    assert m.wait_us(30000, 10000) < 0                   # late: the shell looks again
    reply = bytearray([1, 4, 12] + [0] * 12)
    c = modbus.crc16(reply, len(reply))
    reply += bytes([c & 0xFF, c >> 8])
    m.feed(reply, 10, 15000)
    assert m.wait_us(15000, 10000) == 7 * 261            # the rest of the frame
    m.feed(reply[10:], 7, 17000, 16900)
    assert m.poll(17000) == modbus.OK and m.wait_us(17000, 10000) is None
    assert m.request(1, 0x46, 6)
    # the next request waits for t3.5 after the reply's end
    assert m.wait_us(17000, 10000) == 1750 - 100 and m.tx_ready(17000) == 0
    assert m.tx_ready(16900 + 1750) == 8


def test_timing_from_baud():
    m = modbus.ModbusMaster(9600, 200)
    assert m.char_us == 1042  # 10 bits at 9600 baud, rounded up
    assert m.t35_us == 3647
    m19 = modbus.ModbusMaster(19200, 200)
    assert m19.t35_us == (35 * 521 + 9) // 10
    m38 = modbus.ModbusMaster(38400, 200)
    assert m38.t35_us == 1750 and m38.t15_us == 750
    m11 = modbus.ModbusMaster(9600, 200, 11)
    assert m11.char_us == 1146
    raises(ValueError, modbus.ModbusMaster, 300, 200)
    raises(ValueError, modbus.ModbusMaster, 9600, 0)
    raises(ValueError, modbus.ModbusMaster, 9600, 200, 9)


def test_ticks_diff_wraps():
    assert modbus.ticks_diff(5, 0x3FFFFFFE) == 7
    assert modbus.ticks_diff(0x3FFFFFFE, 5) == -7
    assert modbus.ticks_diff(1000, 10) == 990


def _run(m, now, reply, chunks=1):
    """Send the pending request at `now`, deliver reply bytes, return (result, now)."""
    assert m.tx_ready(now) == 8
    m.sent(now + 8 * m.char_us)
    now += 8 * m.char_us + 20000
    step = (len(reply) + chunks - 1) // chunks if reply else 0
    i = 0
    while i < len(reply):
        part = reply[i:i + step]
        m.feed(part, len(part), now)
        now += 1000
        i += step
    r = m.poll(now)
    while r == modbus.BUSY:
        now += 1000
        r = m.poll(now)
    return r, now


def test_master_good_transaction_in_chunks():
    m = modbus.ModbusMaster(9600, 200)
    assert m.request(1, 0, 2)
    assert not m.request(1, 0, 2)  # one at a time
    r, _ = _run(m, 100000, _reply(1, _f32(230.0)), chunks=3)
    assert r == modbus.OK
    assert modbus.f32_milli(m.rx, m.reg_offset(0)) == 230000
    assert m.stats.ok == 1 and m.state == modbus.IDLE


def test_master_waits_for_silence_before_sending():
    m = modbus.ModbusMaster(9600, 200)
    m.feed(b"\x01\x02", 2, 1000000)  # bus activity (stray)
    assert m.stats.stray_bytes == 2
    m.request(1, 0, 2)
    assert m.tx_ready(1000000 + m.t35_us - 1) == 0
    assert m.tx_ready(1000000 + m.t35_us) == 8


def test_silence_counts_from_the_reply_end_when_the_port_tells_it():
    # a reply read 40 ms after it ended: with its end time the next request may leave in
    # the same pass; without, t3.5 must pass after the read
    for end in (None, 1000000):
        m = modbus.ModbusMaster(9600, 200)
        assert m.request(1, 0, 2)
        assert m.tx_ready(900000) == 8
        m.sent(908000)
        reply = _reply(1, _f32(230.0))
        m.feed(reply, len(reply), 1040000, end)
        assert m.poll(1040000) == modbus.OK
        assert m.request(1, 0x46, 2)
        if end is None:
            assert m.tx_ready(1040000 + m.t35_us - 1) == 0
            assert m.tx_ready(1040000 + m.t35_us) == 8
        else:
            assert m.tx_ready(1040000) == 8
    # an end time later than the read, or for bytes nobody waited for, is not believed
    m = modbus.ModbusMaster(9600, 200)
    m.feed(b"\x01", 1, 910000, 905000)           # stray: no request out
    assert m.t_quiet == 910000
    m.request(1, 0, 2)
    m.tx_ready(920000)
    m.sent(928000)
    m.feed(b"\x01", 1, 931000, 950000)
    assert m.t_quiet == 931000


def test_master_timeout():
    m = modbus.ModbusMaster(9600, 200)
    m.request(1, 0, 2)
    assert m.tx_ready(0x3FFFFF00) == 8  # near the ticks wrap
    m.sent(0x3FFFFF00)
    assert m.poll(0x3FFFFF00 + 199999 - 0x40000000) == modbus.BUSY
    assert m.poll(0x3FFFFF00 + 200000 - 0x40000000) == modbus.ERR_TIMEOUT
    assert m.stats.timeouts == 1 and m.state == modbus.IDLE
    # a late reply is stray, never a reading
    m.feed(b"\x01\x04", 2, 500)
    assert m.stats.stray_bytes == 2 and m.poll(600) == modbus.BUSY


def test_master_error_kinds_counted():
    m = modbus.ModbusMaster(9600, 200)
    now = 0
    good = _reply(1, _f32(1.0))
    cases = (
        (bytes(good[:-1]) + bytes([good[-1] ^ 0xFF]), modbus.ERR_CRC),
        (good[:6], modbus.ERR_BAD_LENGTH),
        (_reply(7, _f32(1.0)), modbus.ERR_WRONG_UNIT),
        (_crc_frame(bytes([1, 0x84, 0x04])), modbus.ERR_EXCEPTION),
        (_crc_frame(bytes([1, 0x84, 0x02])), modbus.ERR_EXCEPTION),
        (_crc_frame(bytes([1, 0x84, 0x02])), modbus.ERR_EXCEPTION),
        (bytes(b"\xde\xad\xbe\xef\x00\x11\x22\x33\x44"), modbus.ERR_CRC),
        (_crc_frame(bytes([1, 3, 4, 0, 0, 0, 0])), modbus.ERR_BAD_FUNCTION),
    )
    for frame, want in cases:
        assert m.request(1, 0, 2)
        r, now = _run(m, now + 100000, frame)
        assert r == want, (frame, r, want)
    s = m.stats
    assert s.ok == 0
    assert s.crc_errors == 2 and s.bad_length == 1 and s.wrong_unit == 1 and s.bad_function == 1
    assert s.exceptions[4] == 1 and s.exceptions[2] == 2 and s.exceptions_total() == 3
    # after all that the master still works
    m.request(1, 0, 2)
    r, now = _run(m, now + 100000, good)
    assert r == modbus.OK and s.ok == 1


def test_master_overlong_reply_ends_at_expected_length():
    m = modbus.ModbusMaster(9600, 200)
    m.request(1, 0, 2)
    good = _reply(1, _f32(2.0))
    r, now = _run(m, 0, good + b"\x00\x00")
    # extra bytes that arrive together with the frame make it the wrong length
    assert r == modbus.ERR_BAD_LENGTH and m.stats.bad_length == 1
    # extra bytes that arrive after the frame was judged are stray, never parsed
    m2 = modbus.ModbusMaster(9600, 200)
    m2.request(1, 0, 2)
    assert m2.tx_ready(0) == 8
    m2.sent(100)
    m2.feed(good, len(good), 5000)
    assert m2.poll(5001) == modbus.OK
    m2.feed(b"\x00\x00", 2, 5002)
    assert m2.stats.stray_bytes == 2


def test_short_frame_judged_after_silence():
    m = modbus.ModbusMaster(9600, 200, min_gap_us=0)
    m.request(1, 0, 2)
    m.tx_ready(0)
    m.sent(0)
    m.feed(b"\x01\x04\x04", 3, 1000)
    assert m.poll(1000 + m.t35_us - 1) == modbus.BUSY
    assert m.poll(1000 + m.t35_us) == modbus.ERR_BAD_LENGTH


def test_wire_time():
    m = modbus.ModbusMaster(9600, 200)
    # 8 + 113 chars of 1042 us + 2 * t3.5
    assert m.wire_time_us(54) == 121 * 1042 + 2 * 3647


def test_transaction_allocates_nothing():
    import micropython

    m = modbus.ModbusMaster(9600, 200)
    reply = _reply(1, _f32(230.5) + _f32(-1.25))
    results = [0, 0, 0]
    micropython.heap_lock()
    try:
        m.request(1, 0, 4)
        n = m.tx_ready(0)
        m.sent(9000)
        m.feed(reply, len(reply), 40000)
        results[0] = m.poll(40001)
        results[1] = modbus.f32_milli(m.rx, 3)
        results[2] = modbus.f32_milli(m.rx, 7)
    finally:
        micropython.heap_unlock()
    assert n == 8 and results == [modbus.OK, 230500, -1250]


def test_float_decode_at_every_exponent_allocates_nothing():
    # no intermediate may outgrow a small int (a bignum would allocate on the board)
    import micropython

    buf = bytearray(4)
    out = [0]
    micropython.heap_lock()
    try:
        for e in range(256):
            for frac_hi in (0x00, 0x7F):
                buf[0] = e >> 1
                buf[1] = ((e & 1) << 7) | frac_hi
                buf[2] = 0xFF
                buf[3] = 0xFF
                r = modbus.f32_milli(buf, 0)
                if r != modbus.MILLI_INVALID and (r > modbus.MILLI_MAX or r < 0):
                    out[0] += 1
    finally:
        micropython.heap_unlock()
    assert out[0] == 0
