"""The firmware Modbus master (under CPython) reads the pymodbus meter simulator over a
real pseudo-terminal pair: good snapshots, live updates, and each fault kind."""

import os
import time
import tty
import warnings

import pytest

from host_tools import vm
from host_tools.metersim import MeterSim, drive_snapshot

vm.firmware_sys_path("sim")

from core import meter_map as mm  # noqa: E402
from core import modbus  # noqa: E402


@pytest.fixture
def line():
    """(meter simulator on the pty slave, master fd the firmware side uses)."""
    fd, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(fd, False)
    sims = []

    def make(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the simulator API must not be a deprecated one
            sim = MeterSim(os.ttyname(slave), **kw).start()
        sims.append(sim)
        return sim

    yield make, fd
    for s in sims:
        s.stop()
    os.close(fd)
    os.close(slave)


# The reply timeout is real time against the simulator's thread: 300 ms (a meter's) was
# missed on a CPU shared with other tests, and a late answer then spoiled the next poll
def _reader(fd, model=mm.SDM630, unit=1, timeout_ms=1500):
    return mm.MeterReader(modbus.ModbusMaster(9600, timeout_ms), model, unit)


def test_sdm630_snapshot_and_live_update(line):
    make, fd = line
    sim = make(model="SDM630", unit=1)
    sim.update(v1=231.0, v2=229.5, v3=230.25, i1=16.0, i2=-8.5, i3=0.0, p1=3696.0, p2=-1950.75, p3=0.0,
               pf1=0.99, pf2=-0.95, pf3=1.0, hz=49.95, import_kwh=1234.5, export_kwh=67.125)
    rd = _reader(fd)
    assert drive_snapshot(fd, rd)
    v = rd.reading.vals
    assert (v[mm.F_MV1], v[mm.F_MV2], v[mm.F_MV3]) == (231000, 229500, 230250)
    assert (v[mm.F_MA1], v[mm.F_MA2], v[mm.F_MA3]) == (16000, -8500, 0)
    assert (v[mm.F_MW1], v[mm.F_MW2], v[mm.F_MW_TOTAL]) == (3696000, -1950750, 1745250)
    assert (v[mm.F_PF1], v[mm.F_PF2], v[mm.F_MHZ]) == (990, -950, 49950)
    assert (v[mm.F_IMPORT_WH], v[mm.F_EXPORT_WH]) == (1234500, 67125)
    n = len(mm.BLOCKS_SDM630)
    assert rd.master.stats.ok == n and sim.requests == n   # one request per block
    sim.update(hz=50.2, import_kwh=1234.75)
    assert drive_snapshot(fd, rd)
    assert v[mm.F_MHZ] == 50200 and v[mm.F_IMPORT_WH] == 1234750 and rd.reading.seq == 2


def test_sdm120_snapshot(line):
    make, fd = line
    sim = make(model="SDM120", unit=7)
    sim.update(v1=239.9, i1=-10.0, p1=-2399.0, pf1=1.0, hz=60.0, export_kwh=3.5)
    rd = _reader(fd, mm.SDM120, 7)
    assert drive_snapshot(fd, rd)
    v = rd.reading.vals
    assert v[mm.F_MV1] == 239900 and v[mm.F_MA1] == -10000 and v[mm.F_MW_TOTAL] == -2399000
    assert v[mm.F_MHZ] == 60000 and v[mm.F_EXPORT_WH] == 3500


def _good_then(fd, sim, rd, fault):
    assert drive_snapshot(fd, rd)
    before = list(rd.reading.vals)
    t = rd.reading.t_ms
    sim.update(v1=100.0)
    sim.fault = fault
    assert not drive_snapshot(fd, rd)
    assert rd.reading.vals == before and rd.reading.t_ms == t  # no reading from a failed poll
    sim.fault = None
    assert drive_snapshot(fd, rd)  # recovers on the next poll
    assert rd.reading.vals[mm.F_MV1] == 100000
    return rd.master.stats


def test_fault_timeout(line):
    make, fd = line
    sim = make()
    s = _good_then(fd, sim, _reader(fd), "timeout")
    # the timeout ends the snapshot at its first block; a frame per block of the good ones
    assert s.timeouts == 1 and s.crc_errors == 0 and s.ok == 2 * len(mm.BLOCKS_SDM630)


def test_fault_crc(line):
    make, fd = line
    sim = make()
    s = _good_then(fd, sim, _reader(fd), "crc")
    assert s.crc_errors == 1 and s.timeouts == 0


def test_fault_exception(line):
    make, fd = line
    sim = make()
    sim.exception_code = 6  # device busy
    s = _good_then(fd, sim, _reader(fd), "exception")
    assert s.exceptions[6] == 1 and s.exceptions_total() == 1 and s.crc_errors == 0


def test_other_unit_id_is_silent(line):
    make, fd = line
    sim = make(unit=1)
    rd = _reader(fd, unit=2)
    assert not drive_snapshot(fd, rd)
    assert rd.master.stats.timeouts == 1 and rd.master.stats.exceptions_total() == 0
    assert sim.foreign == 1 and not rd.reading.valid


def test_bad_simulator_arguments_refused():
    with pytest.raises(ValueError, match="model"):
        MeterSim("/dev/null", model="SDM72")
    sim = MeterSim("/dev/null", model="SDM120")
    with pytest.raises(ValueError, match="v2"):
        sim.update(v1=230.0, v2=230.0)
    assert sim.value("v1") == 230.0  # refused whole
    with pytest.raises(ValueError, match="fault"):
        sim.fault = "smoke"


def test_paced_line_gives_each_byte_its_wire_time():
    from host_tools.metersim import PacedLine, ticks_us

    with PacedLine(9600) as line, MeterSim(line.meter_port, model="SDM630") as sim:
        sim.update(v1=231.5, hz=49.9)
        with pytest.raises(ValueError, match="9600 baud.*19200"):
            line.open(19200)
        master = modbus.ModbusMaster(9600, 500)
        rd = mm.MeterReader(master, mm.SDM630, 1, blocks=((0x0000, 0x4C),))   # one long read
        assert rd.start(0)
        t0 = time.monotonic()
        n = master.tx_ready(ticks_us())
        line.write(master.tx, n)
        assert not line.tx_done()              # 8 bytes take 8.3 ms on the wire
        master.sent(ticks_us())
        buf = bytearray(256)
        got = 0
        while got < 5 + 2 * 0x4C and time.monotonic() - t0 < 3:
            k = line.readinto(buf)
            if k:
                master.feed(buf, k, ticks_us())
                got += k
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        assert line.tx_done()
        # request and reply, 8 + 157 characters of 10 bits, cannot be through any sooner
        assert elapsed >= 165 * 10 / 9600
        start, end = line.spans[0]
        assert end - start >= 165 * 10 / 9600
        assert rd.on_result(master.poll(ticks_us()), 1)
        assert rd.reading.vals[mm.F_MV1] == 231500 and rd.reading.vals[mm.F_MHZ] == 49900


@pytest.mark.serial      # paced in real time: another test's CPU load makes the host's steps late
def test_meter_task_at_its_control_step_over_the_paced_line():
    from bench import fieldbus

    sent, snaps = fieldbus.paced_cycle(seconds=2.0, in_steps=True)
    # V, f and one further block of a snapshot in turn, a request per 50 ms step: voltage
    # and frequency every third step (every second when no snapshot block is due). Counted
    # in steps: a reply that misses its step because the host was late may stretch a cycle,
    # and nothing may shorten one
    for start in (mm.REG_V_L1, mm.REG_FREQ):
        gaps = sorted(fieldbus._gaps(sent[start]))
        assert gaps[len(gaps) // 2] <= 3 and gaps[0] >= 2, gaps
    assert len(snaps) >= 2


def test_the_simulators_speak_the_controllers_default_speed():
    # a meter simulator on a real serial adapter must run at METER_BAUD: by default, the
    # firmware's default
    from core import config
    from host_tools import metersim
    assert metersim.DEFAULT_BAUD == config.validate({}).meter_baud == 38400
    assert MeterSim("/dev/null").baud == metersim.DEFAULT_BAUD
