"""Field buses in the station: meter task (Modbus RTU) and CAN task over the simulated board's
ports. The test plays the meter (a small SDM630 responder) and the CAN bus (it loops the
plant's vehicle frames back to the controller, as the virtual board's bus does).
Runs on both interpreters.
"""
import json

from fwtest import in_dir, scratch, wipe
import struct

from app import station as station_mod
from board import hal as sim_hal
from core import can_msgs as M
from core import config
from core import link as L
from core import modbus
from core.controller import CONTROL_PERIOD_MS

WORK = scratch('buses')
CFG = {'METER_STALE_S': 1, 'CAN_TIMEOUT_MS': 500, 'GRID_PROFILE': 'EN50549_50HZ',
       'NOMINAL_VOLTAGE_V': 230, 'GRID_ENTER_SERVICE_DELAY_S': 0, 'GRID_RAMP_S': 0}


class Meter:
    """SDM630 on the test's side of the RS-485 port: answers function 0x04 reads."""

    def __init__(self, unit=1):
        self.unit = unit
        self.regs = [0] * 0x50
        self.fault = None        # None, 'silent', 'crc', 'exception', 'wrong_unit', 'truncated'
        self.requests = 0
        self.set(v=230.0, a=10.0, w=2300.0, hz=50.0, kwh=1.5)

    def put(self, reg, x):
        b = struct.pack('>f', x)
        self.regs[reg] = (b[0] << 8) | b[1]
        self.regs[reg + 1] = (b[2] << 8) | b[3]

    def set(self, v, a, w, hz, kwh):
        for r in (0, 2, 4):
            self.put(r, v)
        self.put(6, a)
        self.put(0x0C, w)
        self.put(0x34, w)
        self.put(0x46, hz)
        self.put(0x48, kwh)

    def answer(self, req):
        if len(req) != 8 or req[0] != self.unit:
            return b''
        self.requests += 1
        addr = (req[2] << 8) | req[3]
        count = (req[4] << 8) | req[5]
        if self.fault == 'silent':
            return b''
        if self.fault == 'exception':
            body = bytearray([self.unit, 0x84, 4])
        else:
            body = bytearray([self.unit if self.fault != 'wrong_unit' else self.unit + 1, 4, 2 * count])
            for i in range(count):
                r = self.regs[addr + i] if addr + i < len(self.regs) else 0
                body.append(r >> 8)
                body.append(r & 0xFF)
        crc = modbus.crc16(body, len(body))
        frame = bytes(body) + bytes([crc & 0xFF, crc >> 8])
        if self.fault == 'crc':
            frame = frame[:-1] + bytes([frame[-1] ^ 0x5A])
        if self.fault == 'truncated':
            frame = frame[:7]
        return frame


class Rig:
    def __init__(self, cfg=None):
        wipe(WORK)
        with open('v2g_vars.json', 'w') as f:
            f.write(json.dumps(cfg or CFG))
        self.ports = sim_hal.MemoryPorts()
        self.now = 0
        self.hal = sim_hal.Hal(ports=self.ports, clock=lambda: self.now,
                               buses={'meter': 'modbus', 'bms': 'can', 'ev_can': 'plant'})
        self.st = station_mod.Station(self.hal, self.now)
        self.host = L.Link(lambda b: None)
        self.meter = Meter()
        self.can_loop = True      # the bus carries the vehicle's frames back to the controller
        self.ctl_frames = []      # (id, data) the controller sent
        self.extra_can = []       # records the test injects
        self.msgs = []
        self.seq = 0
        self.hb = True            # the host's heartbeat every second

    def plant(self, **ev):
        self.ports.inbox['plant'] += (json.dumps(ev) + '\n').encode()

    def send(self, msg):
        self.ports.inbox['link'] += L.encode_frame(msg)

    def bus(self):
        out = self.ports.outbox['can']
        self.ports.outbox['can'] = b''
        back = b''
        for i in range(0, len(out), 14):
            rec = out[i:i + 14]
            cid = rec[1] | (rec[2] << 8)
            if rec[0] == 1:
                if self.can_loop:
                    back += b'\x00' + rec[1:]
            else:
                self.ctl_frames.append((cid, bytes(rec[6:14])))
        for rec in self.extra_can:
            back += rec
        self.extra_can = []
        self.ports.inbox['can'] += back

    def run(self, ms):
        end = self.now + ms
        while self.now < end:
            if self.now % 1000 == 0 and self.hb:
                self.seq += 1
                self.send(L.hb(self.seq, self.now))
            self.st.tick(self.now)
            req = self.ports.outbox['rs485']
            self.ports.outbox['rs485'] = b''
            if req:
                self.ports.inbox['rs485'] += self.meter.answer(req)
            self.bus()
            self.msgs += self.host.feed(self.ports.outbox['link'])
            self.ports.outbox['link'] = b''
            self.now += CONTROL_PERIOD_MS

    def events(self, code, since_ms=0):
        # before the first reading and the first BMS frame the controller has V2G-120 and
        # V2G-130 up for a step: the tests look at what happens after start-up
        return [e for m in self.msgs if m['t'] == 'evt' for e in m['events']
                if e['code'] == code and e['t_ms'] >= since_ms]

    def diag(self):
        self.send(L.cmd('d' + str(self.now), 'diag'))
        self.run(100)
        res = [m for m in self.msgs if m['t'] == 'res']
        return res[-1]['data']


def record(cid, data, dlc=None):
    d = bytes(data) + bytes(8 - len(data))
    return bytes([0, cid & 0xFF, cid >> 8, 0, 0, len(data) if dlc is None else dlc]) + d


@in_dir(WORK)
def test_meter_readings_reach_the_inputs_and_diagnostics():
    rig = Rig()
    rig.run(1500)
    inp = rig.st.inputs
    assert inp.meter_mv == 230000 and inp.meter_mhz == 50000 and inp.meter_ma == 10000
    assert inp.meter_ok and inp.meter_age_ms < 1000
    rig.meter.put(0x0C, -2300.0)
    rig.meter.put(0x34, -2300.0)       # exporting: the current is reported negative
    rig.run(2000)
    assert inp.meter_ma == -10000
    m = rig.diag()['buses']['meter']
    assert m['frames_ok'] >= 4 and m['snap_ok'] >= 2 and 'timeouts' not in m
    assert 'failure' not in m
    assert not rig.events('V2G-120', 500)


def check_fault(kind, counter, words):
    rig = Rig()
    rig.run(1000)
    rig.meter.fault = kind
    t0 = rig.now
    rig.run(2500)
    raised = [e for e in rig.events('V2G-120', t0) if e['on']]
    assert len(raised) == 1, raised
    for w in words:
        assert w in raised[0]['msg'], (w, raised[0]['msg'])
    out = rig.st.ctl.out
    assert out.limit_discharge_ma == 0
    logged = [e for e in rig.st.ctl.log.entries() if e[1] == 'V2G-120']
    assert logged and words[0] in logged[-1][3]
    d = rig.diag()['buses']['meter']
    assert d.get(counter) if counter != 'exceptions' else d['exceptions'].get('04')
    rig.meter.fault = None
    rig.run(1500)
    cleared = [e for e in rig.events('V2G-120', t0) if not e['on']]
    assert len(cleared) == 1
    assert rig.st.inputs.meter_ok


@in_dir(WORK)
def test_meter_silence_is_named_timeout_and_recovers():
    check_fault('silent', 'timeouts', ('timeout',))


@in_dir(WORK)
def test_meter_crc_error_is_named_and_recovers():
    check_fault('crc', 'crc_errors', ('CRC',))


@in_dir(WORK)
def test_meter_exception_is_named_with_its_code():
    check_fault('exception', 'exceptions', ('exception code 04',))


@in_dir(WORK)
def test_meter_wrong_unit_and_truncated_replies_never_become_readings():
    for kind, counter, word in (('wrong_unit', 'wrong_unit', 'wrong unit'), ('truncated', 'bad_length', 'length')):
        check_fault(kind, counter, (word,))


@in_dir(WORK)
def test_garbage_on_rs485_is_counted_not_a_reading():
    rig = Rig()
    rig.run(1000)
    seq = rig.st.buses.meter.reader.reading.seq
    rig.meter.fault = 'silent'
    for _ in range(20):
        rig.ports.inbox['rs485'] += b'\xff\x00garbage\x01\x04'
        rig.run(100)
    assert rig.st.buses.meter.reader.reading.seq == seq
    d = rig.diag()['buses']['meter']
    assert d.get('stray_bytes', 0) + d.get('bad_length', 0) + d.get('crc_errors', 0) > 0


@in_dir(WORK)
def test_bms_frames_fill_the_inputs_and_controller_frames_go_out():
    rig = Rig()
    rig.plant(do='plug')
    rig.run(1500)
    inp = rig.st.inputs
    p = rig.hal.plant
    assert inp.bms_age_ms <= 200
    assert inp.bms_soc_pm == p.soc_pm() and inp.bms_capacity_wh == p.capacity_wh
    assert inp.bms_max_charge_ma == p.bms_charge_ma() and inp.bms_max_discharge_ma == p.bms_discharge_ma()
    assert inp.bms_temp_dc == 250
    ids = [f[0] for f in rig.ctl_frames]
    for cid in (M.VCU_POWER_REQUEST_ID, M.EVSE_STATUS_ID, M.EVSE_LIMITS_ID):
        assert 13 <= ids.count(cid) <= 16, (cid, ids.count(cid))   # 100 ms period over 1.5 s
    st = M.EvseStatus()
    last = [f[1] for f in rig.ctl_frames if f[0] == M.EVSE_STATUS_ID][-1]
    assert last[7] == M.checksum(last, M.EVSE_STATUS_ID)
    assert M.unpack_evse_status(last, st) and M.CP_STATE_NAMES[st.cp_state] == 'B'
    assert not rig.events('V2G-130', 200)


@in_dir(WORK)
def test_can_loss_raises_130_and_bad_frames_are_counted():
    rig = Rig()
    rig.plant(do='plug')
    rig.run(1000)
    good = bytearray(8)
    s = M.BmsStatus()
    s.soc_pm = 999
    s.counter = 9
    M.pack_bms_status(s, good)
    rig.extra_can = [record(M.BMS_STATUS_ID, good[:5]),                # wrong length
                     record(0x123, b'\x01\x02'),                       # unknown id
                     record(M.BMS_STATUS_ID, good[:7] + b'\x00'),      # bad checksum
                     b'\x07' + bytes(13)]                              # not a record from the bus
    rig.run(100)
    assert rig.st.inputs.bms_soc_pm != 999
    rig.can_loop = False
    t0 = rig.now
    rig.run(1000)
    raised = [e for e in rig.events('V2G-130', t0) if e['on']]
    assert raised and rig.st.ctl.out.limit_discharge_ma == 0
    c = rig.diag()['buses']['can']
    assert c.get('bad_dlc', 0) >= 1 and c.get('unknown_id', 0) >= 1 and c.get('bad_checksum', 0) >= 1
    assert rig.diag()['buses']['can_port']['bad_records'] == 1
    rig.can_loop = True
    rig.run(500)
    assert [e for e in rig.events('V2G-130', t0) if not e['on']]


@in_dir(WORK)
def test_stuck_bms_counter_ends_in_130():
    rig = Rig()
    rig.plant(do='plug')
    rig.run(1000)
    rig.can_loop = False
    t0 = rig.now
    frame = bytearray(8)
    s = M.BmsStatus()
    s.soc_pm = 500
    s.counter = 3
    M.pack_bms_status(s, frame)
    for _ in range(15):
        rig.extra_can = [record(M.BMS_STATUS_ID, frame)]
        rig.run(100)
    assert [e for e in rig.events('V2G-130', t0) if e['on']]
    assert rig.diag()['buses']['can'].get('counter_stuck', 0) >= 10


class PacedPort:
    """RS-485 at `baud` 8N1 on a simulated clock: every byte takes 10 bit times on the one
    shared wire, and the meter starts its reply `latency_us` after the request's last byte.
    The meter task sees a byte only once its stop bit has arrived, as through a UART."""

    def __init__(self, meter, clock, baud=9600, latency_us=5000, knows_rx_end=True):
        self.meter = meter
        self.knows_rx_end = knows_rx_end   # the UART tells when the line went idle
        self.clock = clock                 # [now_us], moved by the test
        self.char_us = (10 * 1000000 + baud - 1) // baud
        self.latency_us = latency_us
        self.wire_free = 0
        self.tx_end = 0
        self.rx = []                       # [due_us, byte]
        self.requests = []                 # (clock when the request left, addr, count)
        self.rx_end = None
        if not knows_rx_end:
            self.rx_idle_us = None         # the meter task then takes the read time

    def open(self, baud):
        pass

    def rx_idle_us(self):
        return self.rx_end & 0x3FFFFFFF if self.rx_end is not None else None

    def write(self, buf, n):
        now = self.clock[0]
        start = now if now > self.wire_free else self.wire_free
        self.tx_end = start + n * self.char_us
        req = bytes(buf[:n])
        self.requests.append((self.tx_end, (req[2] << 8) | req[3], (req[4] << 8) | req[5]))
        reply = self.meter.answer(req)
        t = self.tx_end + self.latency_us
        for b in reply:
            t += self.char_us
            self.rx.append([t, b])
        self.wire_free = t

    def tx_done(self):
        return self.clock[0] >= self.tx_end

    def readinto(self, buf):
        n = 0
        while self.rx and self.rx[0][0] <= self.clock[0] and n < len(buf):
            self.rx_end = self.rx[0][0]
            buf[n] = self.rx.pop(0)[1]
            n += 1
        return n


def paced_cycle(knows_rx_end=True, latency_us=5000, until_ms=3000, baud=9600, pump=True):
    """MeterTask on a line paced to `baud`, driven as app/run.py's loop drives the station: a
    control step every CONTROL_PERIOD_MS and, between steps, io() whenever next_io_ms() asks
    (pump False: steps only). Returns (the times, in ms, at which a request left per block
    start address, snapshot completion times, the times the loop woke between steps)."""
    from app.meter import MeterTask
    from core import config
    from core.controller import Inputs

    cfg = config.validate({'METER_BAUD': baud})
    assert cfg.meter_model == 'SDM630' and cfg.meter_poll_ms == 500
    clock = [0]
    meter = Meter()
    port = PacedPort(meter, clock, baud=baud, latency_us=latency_us, knows_rx_end=knows_rx_end)
    task = MeterTask(port, cfg, lambda: clock[0] & 0x3FFFFFFF)
    inputs = Inputs()
    sent = {}
    snaps = []
    wakes = []
    now = next_step = 1000
    while now < until_ms:
        clock[0] = now * 1000
        k = len(port.requests)
        seq = task.reader.reading.seq
        if now == next_step:
            task.step(now, inputs, cfg)
            next_step += CONTROL_PERIOD_MS
        else:
            task.io(now)
            wakes.append(now)
        for _t, addr, _count in port.requests[k:]:
            sent.setdefault(addr, []).append(now)
        if task.reader.reading.seq != seq:
            snaps.append(now)
        io = task.next_io_ms(now) if pump else None
        assert io is None or io > now
        now = io if io is not None and io < next_step else next_step
    assert inputs.meter_ok and inputs.meter_mv == 230000 and inputs.meter_mhz == 50000
    assert not task.master.stats.timeouts and not task.reader.snapshots_failed
    return sent, snaps, wakes


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def test_at_9600_baud_voltage_and_frequency_are_read_every_third_step():
    sent, snaps, wakes = paced_cycle(baud=9600)
    # no bytes between steps at this speed (it would show a grid step later, not sooner)
    assert wakes == []
    # one request per step, every step: V, f, then a further block of the snapshot
    steps = sorted(t for ts in sent.values() for t in ts)
    assert _gaps(steps) == [CONTROL_PERIOD_MS] * (len(steps) - 1)
    assert max(_gaps(sent[0x0000])) == 150 and max(_gaps(sent[0x0046])) == 150
    # a snapshot every METER_POLL_MS (asked for on time; it completes with its third X
    # block, one cycle early or late depending on where the cycle stood)
    assert len(snaps) >= 3 and all(450 <= g <= 550 for g in _gaps(snaps)), snaps
    assert len(sent[0x0006]) == len(sent[0x000C]) == len(sent[0x001E]) == len(snaps)


def test_at_the_default_38400_baud_the_bytes_move_between_steps():
    from core import meter_map
    sent, snaps, wakes = paced_cycle(baud=38400)
    steps = sorted(t for ts in sent.values() for t in ts)
    # a request as soon as the line allows: at most 20 ms a transaction (request 2.1 ms,
    # t3.5, the meter's 10 ms allowance, a 6-register reply 4.4 ms, each look at the line
    # on the next whole ms; sooner when a control step finds the reply first), two or three
    # in every control step
    assert max(_gaps(steps)) == 20, sorted(set(_gaps(steps)))
    for t in range(1000, 2950, CONTROL_PERIOD_MS):
        assert 2 <= len([x for x in steps if t <= x < t + CONTROL_PERIOD_MS]) <= 3, t
    # V and f at least every 60 ms (V, f, X), sooner between snapshots (V, f)
    assert max(_gaps(sent[0x0000])) == 60 and max(_gaps(sent[0x0046])) == 60
    assert min(_gaps(sent[0x0000])) < 40
    # within what the grid protection allows for: a cycle and a read (meter_map.cycle_us)
    v, _f, _x, cycle = meter_map.cycle_us(meter_map.SDM630, 38400)
    assert 60 + 20 <= (cycle + v) // 1000 == 92
    assert len(snaps) >= 3 and all(450 <= g <= 550 for g in _gaps(snaps)), snaps
    assert len(sent[0x0006]) == len(sent[0x000C]) == len(sent[0x001E]) == len(snaps)
    # the same line moved only with the control steps: a request per step, V every 150 ms
    sent, _snaps, wakes = paced_cycle(baud=38400, pump=False)
    assert wakes == [] and max(_gaps(sent[0x0000])) == 150


def test_without_the_receive_time_every_transaction_takes_two_steps():
    # t3.5 counted from the read: the next request leaves a step later; the snapshot's
    # further values then come in one read of three steps (I .. PF), a snapshot per cycle
    sent, snaps, _wakes = paced_cycle(knows_rx_end=False, baud=9600)
    assert set(sent) == {0x0000, 0x0046, 0x0006}
    assert max(_gaps(sent[0x0000])) == 350 and max(_gaps(sent[0x0046])) == 350
    assert len(snaps) >= 3 and all(450 <= g <= 550 for g in _gaps(snaps)), snaps


def test_pumped_without_the_receive_time_the_silence_costs_one_look_more():
    # between steps the silence counted from the read is only t3.5 more (to the next whole
    # ms): the short blocks stay, at most 22 ms a transaction, still within the allowance
    sent, snaps, _wakes = paced_cycle(knows_rx_end=False, baud=38400)
    assert set(sent) == {0x0000, 0x0046, 0x0006, 0x000C, 0x001E}
    steps = sorted(t for ts in sent.values() for t in ts)
    assert max(_gaps(steps)) == 22, sorted(set(_gaps(steps)))
    assert max(_gaps(sent[0x0000])) == 66 and len(snaps) >= 3


def test_a_slow_meter_stretches_the_cycle_but_keeps_t35():
    # 25 ms latency: the reply ends after the next step, which must wait for it
    sent, snaps, _wakes = paced_cycle(latency_us=25000, baud=9600)
    assert max(_gaps(sent[0x0000])) == 300 and snaps
    # pumped: once the reply is later than the allowance it is looked for every 2 ms, and
    # the next request still waits t3.5 after it: 2.1 + 25 + 4.4 ms, to the next look, + t3.5
    sent, snaps, _wakes = paced_cycle(latency_us=25000, baud=38400)
    steps = sorted(t for ts in sent.values() for t in ts)
    assert max(_gaps(steps)) == 34, sorted(set(_gaps(steps)))
    assert snaps


def test_requests_and_limits_go_out_cut_toward_zero_never_above_the_decision():
    from app import canbus

    class Port:
        def __init__(self):
            self.frames = {}

        def open(self, bitrate):
            pass

        def send(self, cid, buf, dlc):
            self.frames[cid] = bytes(buf[:dlc])
            return True

    class Out:
        mode = 'discharging'
        cp_state = 'C'
        contactor = True
        pwm_pm = 50
        errors = 0
        limit_charge_src = 'station'
        limit_discharge_src = 'grid'
        mode_i, cp_i, charge_src_i, discharge_src_i = 3, 2, 0, 4   # the same as numbers

    class Inp:
        contactor_closed = True
        meter_ma = -16049

    for req, lim_c, lim_d, want_req, want_c, want_d in (
            (-16051, 31999, 16099, -16000, 31900, 16000),
            (16050, 6050, 0, 16000, 6000, 0),
            (-49, 99, 50, 0, 0, 0),
            (-32000, 32000, 32000, -32000, 32000, 32000)):
        port = Port()
        task = canbus.CanTask(port, config.Config(config.defaults()))
        out = Out()
        out.request_ma, out.limit_charge_ma, out.limit_discharge_ma = req, lim_c, lim_d
        task.transmit(0, out, Inp())
        o = M.VcuPowerRequest()
        assert M.unpack_vcu_power_request(port.frames[M.VCU_POWER_REQUEST_ID], o)
        assert o.req_current_ma == want_req, (req, o.req_current_ma)
        el = M.EvseLimits()
        assert M.unpack_evse_limits(port.frames[M.EVSE_LIMITS_ID], el)
        assert (el.limit_charge_ma, el.limit_discharge_ma) == (want_c, want_d)
        assert el.meter_current_ma == -16000     # a measurement keeps nearest rounding


class StillPort:
    """An RS-485 port that allocates nothing: replies built beforehand, one per block,
    available from the step after the request, its end reported as a UART would."""

    def __init__(self, meter, clock, blocks, delay_us=40000):
        self.clock = clock
        self.delay_us = delay_us
        self.replies = {}
        for start, count in blocks:
            req = bytearray(8)
            modbus.build_read_input(req, 1, start, count)
            self.replies[start] = meter.answer(req)
        self.reply = None
        self.due = 0
        self.end = 0

    def open(self, baud):
        pass

    def write(self, buf, n):
        self.reply = self.replies.get((buf[2] << 8) | buf[3])
        self.due = self.clock[0] + self.delay_us

    def tx_done(self):
        return True

    def readinto(self, buf):
        r = self.reply
        if r is None or self.clock[0] < self.due:
            return 0
        for i in range(len(r)):
            buf[i] = r[i]
        self.reply = None
        self.end = self.due & 0x3FFFFFFF
        return len(r)

    def rx_idle_us(self):
        return self.end


def test_meter_task_step_allocates_nothing_in_steady_state():
    import micropython
    from app.meter import MeterTask
    from core import config, meter_map
    from core.controller import Inputs

    cfg = config.validate({})
    clock = [0]
    port = StillPort(Meter(), clock, meter_map.BLOCKS_SDM630)
    task = MeterTask(port, cfg, lambda: clock[0])
    inputs = Inputs()
    now = 0
    for _ in range(40):                 # warm up: first snapshot, every path taken once
        clock[0] = now * 1000
        task.step(now, inputs, cfg)
        now += 50
    seq = task.reader.reading.seq
    micropython.heap_lock()
    try:
        for _ in range(60):             # 3 s: six snapshots, 60 reads
            clock[0] = now * 1000
            task.step(now, inputs, cfg)
            now += 50
    finally:
        micropython.heap_unlock()
    assert task.reader.reading.seq >= seq + 5 and task.fail_streak == 0
    assert inputs.meter_ok and inputs.meter_mv == 230000 and inputs.meter_mhz == 50000


def test_meter_pump_between_steps_allocates_nothing_in_steady_state():
    # the shell's loop at 38400 baud: a control step every 50 ms and, between steps, the
    # pump whenever next_io_ms() asks; neither allocates
    import micropython
    from app.meter import MeterTask
    from core import config, meter_map
    from core.controller import Inputs

    cfg = config.validate({'METER_BAUD': 38400})
    clock = [0]
    port = StillPort(Meter(), clock, meter_map.BLOCKS_SDM630, delay_us=12000)
    task = MeterTask(port, cfg, lambda: clock[0])
    inputs = Inputs()
    state = [0, 0, 0]      # now, next step, looks between steps
    _shell_loop(task, clock, inputs, cfg, state, 2000)   # warm up: first snapshot, every path once
    seq = task.reader.reading.seq
    looks = state[2]
    ok = task.master.stats.ok
    micropython.heap_lock()
    try:
        _shell_loop(task, clock, inputs, cfg, state, 5000)    # 3 s: six snapshots
    finally:
        micropython.heap_unlock()
    assert task.reader.reading.seq >= seq + 5 and task.fail_streak == 0
    # more than a read per step, most of them between steps
    assert task.master.stats.ok - ok > 3000 // 50 and state[2] - looks > 3000 // 50
    assert inputs.meter_ok and inputs.meter_mv == 230000 and inputs.meter_mhz == 50000


def _shell_loop(task, clock, inputs, cfg, state, until):
    # app/run.py's loop for the meter task alone (a plain function: calling a closure with
    # this many names allocates on MicroPython)
    now, next_step = state[0], state[1]
    while now < until:
        clock[0] = now * 1000
        if now == next_step:
            task.step(now, inputs, cfg)
            next_step += 50
        else:
            task.io(now)
            state[2] += 1
        io = task.next_io_ms(now)
        now = io if io is not None and io < next_step else next_step
    state[0] = now
    state[1] = next_step


def test_can_frames_carry_the_controllers_own_numbers_without_allocating():
    # mode, pilot state and limit sources go out as the controller's own numbers: every one
    # has its DBC value of the same name (a heartbeat limit is "heartbeat" on the bus, a
    # fault "fault"; no closest value stands in), and nothing is looked up or allocated
    import micropython

    from app import canbus
    from core import limits
    from core import pilot
    from core.controller import MODES

    class Port:
        def __init__(self):
            self.frames = {}
            for cid in (M.VCU_POWER_REQUEST_ID, M.EVSE_STATUS_ID, M.EVSE_LIMITS_ID):
                self.frames[cid] = bytearray(8)

        def open(self, bitrate):
            pass

        def send(self, cid, buf, dlc):
            f = self.frames[cid]
            for i in range(8):
                f[i] = buf[i]
            return True

    class Out:
        contactor = False
        pwm_pm = 0
        errors = 0
        request_ma = limit_charge_ma = limit_discharge_ma = 0
        mode_i = cp_i = charge_src_i = discharge_src_i = 0

    class Inp:
        contactor_closed = False
        meter_ma = 0

    n = max(len(MODES), pilot.F + 1, limits.N_SOURCES)
    port, out, inp = Port(), Out(), Inp()
    task = canbus.CanTask(port, config.Config(config.defaults()))
    st, el, vr = M.EvseStatus(), M.EvseLimits(), M.VcuPowerRequest()
    task.transmit(0, out, inp)            # once to warm up
    now = 0
    seen = set()
    for i in range(n):
        mode, cp, src = i % len(MODES), i % (pilot.F + 1), i % limits.N_SOURCES
        back = limits.N_SOURCES - 1 - src
        out.mode_i, out.cp_i, out.charge_src_i, out.discharge_src_i = mode, cp, src, back
        now += 100                        # the frames' period
        micropython.heap_lock()
        try:
            task.transmit(now, out, inp)
        finally:
            micropython.heap_unlock()
        assert M.unpack_evse_status(port.frames[M.EVSE_STATUS_ID], st)
        assert M.MODE_NAMES[st.mode] == MODES[mode], mode
        assert M.CP_STATE_NAMES[st.cp_state] == pilot.LETTERS[cp], cp
        assert M.unpack_evse_limits(port.frames[M.EVSE_LIMITS_ID], el)
        assert M.LIMIT_CHARGE_SRC_NAMES[el.limit_charge_src] == limits.SOURCES[src], src
        assert M.LIMIT_CHARGE_SRC_NAMES[el.limit_discharge_src] == limits.SOURCES[back], back
        assert M.unpack_vcu_power_request(port.frames[M.VCU_POWER_REQUEST_ID], vr)
        assert (vr.req_mode == M.REQ_MODE_STOP) == (MODES[mode] == 'fault'), mode
        seen.add(el.limit_charge_src)
    # every source has a value of its own: none shares one with another
    assert len(seen) == limits.N_SOURCES


@in_dir(WORK)
def test_can_frames_name_the_limit_sources_the_controller_names():
    # end to end: what the CAN frames say is what the controller says, also for the sources
    # the DBC had no value of its own for (a lost host heartbeat went out as "host")
    rig = Rig()
    rig.plant(do='plug')
    rig.run(1500)
    rig.hb = False
    rig.run(12000)                        # past HEARTBEAT_TIMEOUT_S: discharge forbidden
    out = rig.st.ctl.out
    assert 'V2G-101' in [e['code'] for m in rig.msgs if m['t'] == 'evt' for e in m['events']]
    st, el = M.EvseStatus(), M.EvseLimits()
    last = [f[1] for f in rig.ctl_frames if f[0] == M.EVSE_LIMITS_ID][-1]
    assert M.unpack_evse_limits(last, el)
    assert M.LIMIT_CHARGE_SRC_NAMES[el.limit_discharge_src] == out.limit_discharge_src == 'heartbeat'
    assert M.LIMIT_CHARGE_SRC_NAMES[el.limit_charge_src] == out.limit_charge_src
    last = [f[1] for f in rig.ctl_frames if f[0] == M.EVSE_STATUS_ID][-1]
    assert M.unpack_evse_status(last, st)
    assert M.MODE_NAMES[st.mode] == out.mode and M.CP_STATE_NAMES[st.cp_state] == out.cp_state
