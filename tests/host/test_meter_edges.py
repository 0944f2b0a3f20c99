"""The meter's float32 decode at its edges, not at random: every exponent with the
significands where rounding and saturation turn, against exact rational arithmetic, and
the same edges end to end from the pymodbus simulator's registers to a firmware reading."""

import os
import struct
import tty
from fractions import Fraction

from host_tools import vm
from host_tools.metersim import MeterSim, drive_snapshot

vm.firmware_sys_path("sim")

from core import meter_map as mm  # noqa: E402
from core import modbus  # noqa: E402


def _exact_milli(bits):
    """round-half-away(value * 1000), saturated, from exact arithmetic; None for NaN/inf."""
    (v,) = struct.unpack(">f", bits.to_bytes(4, "big"))
    if v != v or v in (float("inf"), float("-inf")):
        return None
    x = abs(Fraction(v) * 1000)
    r = int(x + Fraction(1, 2))       # half up on the magnitude
    r = min(r, modbus.MILLI_MAX)
    return -r if v < 0 else r


def _significands():
    # both ends, the middle, and for every t the significands whose value * 1000 lands
    # just below, on and just above a half (where a lost low bit would round wrongly)
    ms = {0, 1, 2, 0x7FFFFF, 0x7FFFFE, 0x400000, 0x3FFFFF, 0x000100, 0x0000FF}
    for t in range(0, 34):
        for k in range(1, 12, 2):                 # k/2 milli-units: the ties
            # m * 125 / 2**t = k / 2  ->  m = k * 2**(t-1) / 125
            if t == 0:
                continue
            m = (k << (t - 1)) // 125
            for d in (-1, 0, 1):
                if 0x800000 <= m + d <= 0xFFFFFF:
                    ms.add((m + d) - 0x800000)
    return sorted(ms)


def test_every_exponent_at_its_turning_points():
    checked = 0
    for e in range(256):
        for frac in _significands():
            for sign in (0, 1):
                bits = (sign << 31) | (e << 23) | frac
                want = _exact_milli(bits)
                got = modbus.f32_milli(bits.to_bytes(4, "big"), 0)
                if want is None:
                    assert got == modbus.MILLI_INVALID, hex(bits)
                else:
                    assert got == want, (hex(bits), got, want)
                checked += 1
    assert checked > 10000


def test_named_edges():
    cases = (
        (0.0, 0), (-0.0, 0), (1e-45, 0), (1.1754944e-38, 0),
        (0.0005, 1),              # float32 0.000500000024: just above the half
        (0.0004999, 0), (0.0015, 2), (0.0025, 2), (-0.0025, -2),   # 0.0025 is 0.00249999994 in float32
        (1073741.75, 1073741750),  # the largest value below the limit is exact ...
        (1073741.875, modbus.MILLI_MAX),   # ... the next float saturates
        (3.4028235e38, modbus.MILLI_MAX), (-3.4028235e38, -modbus.MILLI_MAX),
        (230.1, 230100), (-16.25, -16250), (99999.99, 99999992),
    )
    for v, want in cases:
        assert modbus.f32_milli(struct.pack(">f", v), 0) == want, (v, want)


def test_edges_from_the_simulator_to_the_reading():
    fd, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(fd, False)
    try:
        with MeterSim(os.ttyname(slave), model="SDM630") as sim:
            # the values are the point here, not the timing: a reply timeout a busy host cannot miss
            rd = mm.MeterReader(modbus.ModbusMaster(9600, 3000), mm.SDM630, 1)
            sim.update(v1=0.0005, v2=-0.0, v3=1073741.75, i1=-0.0025, i2=3.4028235e38, i3=1e-45,
                       p1=-3.4028235e38, p2=0.0015, p3=1073741.875, p_total=-1073741.75,
                       pf1=-1.0, pf2=0.0004999, pf3=1.0, hz=0.0, import_kwh=1073741.75, export_kwh=0.0)
            assert drive_snapshot(fd, rd)
            v = rd.reading.vals
            assert (v[mm.F_MV1], v[mm.F_MV2], v[mm.F_MV3]) == (1, 0, 1073741750)
            assert (v[mm.F_MA1], v[mm.F_MA2], v[mm.F_MA3]) == (-2, modbus.MILLI_MAX, 0)
            assert (v[mm.F_MW1], v[mm.F_MW2], v[mm.F_MW3]) == (-modbus.MILLI_MAX, 2, modbus.MILLI_MAX)
            # the SDM630's total is the sum of its phases, saturated per addition (the
            # meter's own total register lies outside the short blocks and is not read)
            assert v[mm.F_MW_TOTAL] == -modbus.MILLI_MAX + 2 + modbus.MILLI_MAX
            assert (v[mm.F_PF1], v[mm.F_PF2], v[mm.F_PF3]) == (-1000, 0, 1000)
            assert (v[mm.F_MHZ], v[mm.F_IMPORT_WH], v[mm.F_EXPORT_WH]) == (0, 1073741750, 0)
            # infinity and NaN in any mapped register: no reading, counted
            for bad in (float("inf"), float("-inf"), float("nan")):
                sim.update(hz=bad)
                assert not drive_snapshot(fd, rd)
            assert rd.bad_values == 3 and rd.reading.vals[mm.F_MV3] == 1073741750
    finally:
        os.close(fd)
        os.close(slave)
