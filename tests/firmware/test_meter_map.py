"""Eastron SDM630/SDM120 maps and the snapshot reader, against a scripted meter."""

import struct

from fwtest import raises

from core import meter_map as mm
from core import modbus


class FakeMeter:
    """Input registers of a meter as floats; answers requests like the real one."""

    def __init__(self, unit, values):
        self.unit = unit
        self.values = values  # register address -> float
        self.requests = []

    def answer(self, req):
        unit, func = req[0], req[1]
        addr = (req[2] << 8) | req[3]
        count = (req[4] << 8) | req[5]
        self.requests.append((addr, count))
        body = bytearray([unit, func, 2 * count])
        for r in range(addr, addr + count, 2):
            body += struct.pack(">f", self.values.get(r, 0.0))
        c = modbus.crc16(body, len(body))
        body.append(c & 0xFF)
        body.append(c >> 8)
        return body


SDM630_VALUES = {
    0x00: 230.1, 0x02: 231.2, 0x04: 229.9, 0x06: 16.0, 0x08: 15.5, 0x0A: -16.25,
    0x0C: 3680.0, 0x0E: 3583.6, 0x10: -3735.9, 0x34: 3527.7, 0x1E: 0.99, 0x20: 0.98, 0x22: -0.97,
    0x46: 49.98, 0x48: 1234.5, 0x4A: 67.25,
}


def _snapshot(reader, meter, now_ms, corrupt=None):
    m = reader.master
    assert reader.start(now_ms)
    now_us = now_ms * 1000
    done = False
    k = 0
    while reader.busy():
        n = m.tx_ready(now_us)
        waited = 0
        while n == 0:  # inter-frame silence
            now_us += 1000
            waited += 1000
            assert waited <= m.t35_us + 1000
            n = m.tx_ready(now_us)
        assert n == 8
        m.sent(now_us)
        reply = meter.answer(m.tx)
        if corrupt is not None and k == corrupt[0]:
            reply = corrupt[1](reply)
        now_us += 30000
        if reply:
            m.feed(reply, len(reply), now_us)
        r = m.poll(now_us)
        while r == modbus.BUSY:
            now_us += 5000
            r = m.poll(now_us)
        done = reader.on_result(r, now_us // 1000)
        now_us += 10000
        k += 1
    return done


def test_short_blocks_cover_the_map_and_each_fits_a_control_step():
    for model, blocks, fmap in ((mm.SDM630, mm.BLOCKS_SDM630, mm.MAP_SDM630),
                                (mm.SDM120, mm.BLOCKS_SDM120, mm.MAP_SDM120)):
        for _start, count in blocks:
            assert count <= mm.MAX_BLOCK_REGS and count % 2 == 0
            # request, reply, both t3.5 silences and the meter's allowance within 50 ms
            assert mm.slot_steps(count, 9600, 50) == 1, count
        for _field, reg in fmap:
            assert sum(1 for s, c in blocks if s <= reg and reg + 2 <= s + c) == 1
        # voltage first, frequency second: the V and f slots of the cycle
        assert blocks[0][0] == mm.REG_V_L1 and blocks[1][0] == mm.REG_FREQ
        assert mm.cycle_steps(model, 9600, 50) == (1, 1, 1, 3)
        # a grid step just after the voltage read waits the whole cycle for the next one
        assert mm.sense_ms(model, 9600, 50) == 150
    # slower lines: every read takes two steps, the cycle six
    assert mm.cycle_steps(mm.SDM630, 4800, 50) == (2, 2, 2, 6) and mm.sense_ms(mm.SDM630, 4800, 50) == 350


def test_at_38400_baud_the_bytes_move_between_steps_and_a_grid_step_shows_within_100_ms():
    # a 6-register read pumped between steps: 10.0 ms on the wire with both t3.5, the
    # meter's 10 ms, up to 1 ms for each of three looks at the line
    assert mm.pump_slot_us(6, 38400) == 10025 + 10000 + 3000
    for model in (mm.SDM630, mm.SDM120):
        v, f, x, cycle = mm.cycle_us(model, 38400)
        assert cycle == v + f + x and cycle + max(v, f) <= 100000
        assert mm.between_steps(model, 38400, 50)
        # the step lands just after a V read: the next one leaves a cycle later and is used
        # at the first control step after its reply
        assert mm.sense_ms(model, 38400, 50) == 100
    assert mm.cycle_us(mm.SDM630, 38400) == (23025, 23025, 23025, 69075)
    assert mm.read_every_ms(mm.SDM630, 38400, 50) == 70
    # at 19200 baud and below a transaction per step is as soon or sooner: no pump
    for baud, sense in ((19200, 150), (9600, 150), (4800, 350), (2400, 550)):
        assert not mm.between_steps(mm.SDM630, baud, 50), baud
        assert mm.sense_ms(mm.SDM630, baud, 50) == sense, baud
        assert mm.read_every_ms(mm.SDM630, baud, 50) == mm.cycle_steps(mm.SDM630, baud, 50)[3] * 50
    # (pumped, 9600 baud would show a step 200 ms late, 19200 150 ms)
    assert mm._sense_pumped(mm.SDM630, 9600, 50, mm.BLOCKS_SDM630) == 200


def test_the_reader_polls_from_a_block_table_of_its_own():
    # each poll reads the block table; frozen into an image, the module's constant tuple of
    # ints would be heap integers there (tests/host/test_frozen_rules.py)
    r = mm.MeterReader(modbus.ModbusMaster(9600, 200), mm.SDM630, 1)
    assert r.blocks == mm.BLOCKS_SDM630 and r.blocks is not mm.BLOCKS_SDM630


def test_sdm630_snapshot():
    meter = FakeMeter(1, SDM630_VALUES)
    rd = mm.MeterReader(modbus.ModbusMaster(9600, 200), mm.SDM630, 1)
    assert rd.reading.age_ms(0) >= 0x3FFFFFFF and not rd.reading.valid
    assert _snapshot(rd, meter, 1000)
    assert meter.requests == list(mm.BLOCKS_SDM630)
    r = rd.reading
    assert r.valid and r.seq == 1
    v = r.vals
    assert v[mm.F_MV1] == 230100 and v[mm.F_MV2] == 231200 and v[mm.F_MV3] == 229900
    assert v[mm.F_MA1] == 16000 and v[mm.F_MA3] == -16250
    assert v[mm.F_MW1] == 3680000 and v[mm.F_MW3] == -3735900 and v[mm.F_MW_TOTAL] == 3527700
    assert abs(v[mm.F_MW2] - 3583600) <= 1
    assert v[mm.F_PF1] == 990 and v[mm.F_PF3] == -970
    assert v[mm.F_MHZ] == 49980 and v[mm.F_IMPORT_WH] == 1234500 and v[mm.F_EXPORT_WH] == 67250
    assert r.get("mhz") == 49980
    assert r.age_ms(1500) == 1500 - r.t_ms


def test_sdm120_snapshot():
    meter = FakeMeter(3, {0x00: 229.0, 0x06: 7.5, 0x0C: 1717.5, 0x1E: 1.0, 0x46: 50.01, 0x48: 9.875, 0x4A: 0.5})
    rd = mm.MeterReader(modbus.ModbusMaster(2400, 500), mm.model_from_name("SDM120"), 3)
    assert _snapshot(rd, meter, 10)
    assert meter.requests == list(mm.BLOCKS_SDM120)
    v = rd.reading.vals
    assert v[mm.F_MV1] == 229000 and v[mm.F_MA1] == 7500 and v[mm.F_MW_TOTAL] == 1717500
    assert v[mm.F_MV2] == 0 and v[mm.F_PF1] == 1000 and v[mm.F_IMPORT_WH] == 9875


def _bad_crc(reply):
    reply[-2] ^= 0x55
    return reply


def _silent(reply):
    return b""


def _nan(reply):
    reply[3:7] = b"\x7f\xc0\x00\x00"
    c = modbus.crc16(reply, len(reply) - 2)
    reply[-2] = c & 0xFF
    reply[-1] = c >> 8
    return reply


def test_failed_block_keeps_previous_reading():
    # a two-block table (a meter that refuses reads across unassigned registers): a
    # snapshot is never half old, half new
    meter = FakeMeter(1, SDM630_VALUES)
    master = modbus.ModbusMaster(9600, 200)
    rd = mm.MeterReader(master, mm.SDM630, 1, blocks=((0x0000, 0x36), (0x0046, 6)))
    assert _snapshot(rd, meter, 1000)
    assert meter.requests == [(0x0000, 0x36), (0x0046, 6)]
    assert rd.reading.vals[mm.F_EXPORT_WH] == 67250 and rd.reading.vals[mm.F_MW_TOTAL] == 3527700
    t_good = rd.reading.t_ms
    now = 5000
    for k, fault in ((0, _bad_crc), (1, _bad_crc), (1, _silent), (0, _nan)):
        now += 2000
        meter.values = dict(SDM630_VALUES)
        meter.values[0x00] = 1.0  # would show if a partial snapshot leaked through
        assert not _snapshot(rd, meter, now, corrupt=(k, fault))
        assert rd.reading.vals[mm.F_MV1] == 230100 and rd.reading.t_ms == t_good
        assert not rd.busy()
    assert rd.snapshots_failed == 4 and rd.bad_values == 1
    assert master.stats.crc_errors == 2 and master.stats.timeouts == 1
    assert rd.reading.age_ms(now) == now - t_good


def test_failed_single_block_keeps_previous_reading():
    meter = FakeMeter(1, SDM630_VALUES)
    rd = mm.MeterReader(modbus.ModbusMaster(9600, 200), mm.SDM630, 1)
    assert _snapshot(rd, meter, 1000)
    t_good = rd.reading.t_ms
    meter.values = dict(SDM630_VALUES)
    meter.values[0x00] = 1.0
    for i, fault in enumerate((_bad_crc, _silent, _nan)):
        assert not _snapshot(rd, meter, 3000 + 1000 * i, corrupt=(0, fault))
        assert rd.reading.vals[mm.F_MV1] == 230100 and rd.reading.t_ms == t_good
    assert rd.snapshots_failed == 3 and rd.bad_values == 1


def test_block_table_override_refused_when_it_cannot_work():
    m = modbus.ModbusMaster(9600, 200)
    e = raises(ValueError, mm.MeterReader, m, mm.SDM630, 1, blocks=((0x0000, 0x36),))
    assert "misses" in str(e)         # frequency and energy would never be read
    e = raises(ValueError, mm.MeterReader, m, mm.SDM630, 1, blocks=((0x0000, 0x4C), (0x0046, 6)))
    assert "repeats" in str(e)
    e = raises(ValueError, mm.MeterReader, m, mm.SDM630, 1, blocks=((0x0000, 82),))
    assert "1..80" in str(e)
    e = raises(ValueError, mm.MeterReader, m, mm.SDM120, 1, blocks=())
    assert "empty" in str(e)


def test_bad_config_refused():
    m = modbus.ModbusMaster(9600, 200)
    raises(ValueError, mm.MeterReader, m, 99, 1)
    raises(ValueError, mm.MeterReader, m, mm.SDM630, 0)
    raises(ValueError, mm.MeterReader, m, mm.SDM630, 248)
    e = raises(ValueError, mm.model_from_name, "SDM72")
    assert "SDM72" in str(e)


def test_start_refused_while_busy():
    m = modbus.ModbusMaster(9600, 200)
    rd = mm.MeterReader(m, mm.SDM630, 1)
    assert rd.start(0)
    assert not rd.start(1)
    assert not rd.on_result(modbus.ERR_TIMEOUT, 300)
    assert not rd.busy() and not rd.reading.valid


def test_snapshot_decode_allocates_nothing():
    import micropython

    meter = FakeMeter(1, SDM630_VALUES)
    m = modbus.ModbusMaster(9600, 200)
    rd = mm.MeterReader(m, mm.SDM630, 1)
    replies = []
    for start, count in mm.BLOCKS_SDM630:
        req = bytearray(8)
        modbus.build_read_input(req, 1, start, count)
        replies.append(meter.answer(req))
    done = [False]
    micropython.heap_lock()
    try:
        rd.start(0)
        t = 0
        for reply in replies:
            m.tx_ready(t)
            m.sent(t)
            t += 50000
            m.feed(reply, len(reply), t)
            done[0] = rd.on_result(m.poll(t), t // 1000)
            t += 10000
    finally:
        micropython.heap_unlock()
    assert done[0] and rd.reading.vals[mm.F_MHZ] == 49980


WRAP = 1 << 30   # time.ticks_ms() wraps here on MicroPython


def test_age_across_the_tick_wrap():
    r = mm.MeterReading()
    r.valid = True
    r.t_ms = WRAP - 100
    # 300 ms later the ticks have wrapped to 200: the age is still 300 ms
    assert r.age_ms(200) == 300
    assert r.valid


def test_silent_meter_does_not_look_fresh_after_the_wrap():
    r = mm.MeterReading()
    r.valid = True
    r.t_ms = 1000
    # a reading older than 2**29 ms is not believable: stale for good ...
    assert r.age_ms(1000 + (1 << 29) + 1) >= 0x3FFFFFFF
    assert not r.valid
    # ... so once the ticks come round again it still reads as never
    assert r.age_ms(WRAP + 1050 - WRAP) >= 0x3FFFFFFF


def test_stamp_from_the_future_is_stale():
    r = mm.MeterReading()
    r.valid = True
    r.t_ms = 5000
    assert r.age_ms(4000) >= 0x3FFFFFFF   # never a negative or small age


def _cycle_transaction(rd, meter, now_ms):
    """One transaction of the poll cycle, answered at once; the block read (start, count)."""
    m = rd.master
    assert rd.next(now_ms)
    t = now_ms * 1000
    n = m.tx_ready(t + m.t35_us)
    assert n == 8
    m.sent(t + 9000)
    reply = meter.answer(m.tx)
    m.feed(reply, len(reply), t + 40000)
    rd.on_result(m.poll(t + 40000), now_ms)
    return meter.requests[-1]


def test_cycle_reads_voltage_and_frequency_every_third_transaction_and_completes_snapshots():
    meter = FakeMeter(1, SDM630_VALUES)
    rd = mm.MeterReader(modbus.ModbusMaster(9600, 200), mm.SDM630, 1)
    # no snapshot asked for: the X slot is skipped, V and f take turns
    got = [_cycle_transaction(rd, meter, 50 * i) for i in range(4)]
    assert got == [(0x0000, 6), (0x0046, 6)] * 2
    assert rd.mv == 230100 and rd.mhz == 49980 and not rd.reading.valid
    assert rd.snapshot(200) and not rd.snapshot(200)      # one at a time
    # the cycle goes on where it was (the X slot next): three X blocks, with V and f between
    got = [_cycle_transaction(rd, meter, 250 + 50 * i) for i in range(7)]
    assert got == [(0x0006, 6), (0x0000, 6), (0x0046, 6), (0x000C, 6),
                   (0x0000, 6), (0x0046, 6), (0x001E, 6)]
    r = rd.reading
    assert r.valid and r.seq == 1 and r.t_ms == 550 and rd.snapshots_ok == 1
    assert r.vals[mm.F_MW_TOTAL] == 3527700 and r.vals[mm.F_PF3] == -970
    # a failed read drops the snapshot under way, never the cycle
    meter.values = dict(SDM630_VALUES)
    meter.values[0x46] = 50.5
    assert rd.snapshot(700)
    _cycle_transaction(rd, meter, 700)                     # V
    m = rd.master
    assert rd.next(750) and m.tx_ready(750000 + m.t35_us) == 8
    m.sent(759000)
    assert rd.on_result(m.poll(759000 + 200000), 959) is False   # f timed out
    assert rd.snapshots_failed == 1 and not rd.pending and rd.mhz == 49980
    assert _cycle_transaction(rd, meter, 1000) == (0x0000, 6)     # the X slot has nothing to do
    assert _cycle_transaction(rd, meter, 1050) == (0x0046, 6) and rd.mhz == 50500


def test_cycle_allocates_nothing():
    import micropython

    meter = FakeMeter(1, SDM630_VALUES)
    m = modbus.ModbusMaster(9600, 200)
    rd = mm.MeterReader(m, mm.SDM630, 1)
    replies = {}
    for start, count in mm.BLOCKS_SDM630:
        req = bytearray(8)
        modbus.build_read_input(req, 1, start, count)
        replies[start] = meter.answer(req)
    micropython.heap_lock()
    try:
        rd.snapshot(0)
        t = 0
        for _ in range(9):
            rd.next(t // 1000)
            m.tx_ready(t)
            m.sent(t)
            t += 40000
            reply = replies[(m.tx[2] << 8) | m.tx[3]]
            m.feed(reply, len(reply), t, t - 1000)
            rd.on_result(m.poll(t), t // 1000)
            t += 10000
    finally:
        micropython.heap_unlock()
    assert rd.snapshots_ok == 1 and rd.reading.vals[mm.F_MHZ] == 49980
