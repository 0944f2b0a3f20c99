"""f32_milli (integer-only float32 decode) against exact rational arithmetic."""

import struct
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools import vm

vm.firmware_sys_path("sim")

from core import modbus  # noqa: E402


@settings(max_examples=3000, deadline=None)
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_f32_milli_matches_exact_rounding(bits):
    raw = bits.to_bytes(4, "big")
    (v,) = struct.unpack(">f", raw)
    got = modbus.f32_milli(raw, 0)
    if v != v or v in (float("inf"), float("-inf")):
        assert got == modbus.MILLI_INVALID
        return
    exact = Fraction(v) * 1000
    if abs(exact) >= modbus.MILLI_MAX:
        assert got == (modbus.MILLI_MAX if exact > 0 else -modbus.MILLI_MAX)
        return
    # round half away from zero; below 4 milli-units exact ties may round either way
    assert abs(Fraction(got) - exact) <= Fraction(1, 2)


@settings(max_examples=3000, deadline=None)
@given(st.floats(min_value=-1.0e6, max_value=1.0e6, width=32, allow_nan=False))
def test_f32_milli_in_meter_range(v):
    raw = struct.pack(">f", v)
    got = modbus.f32_milli(raw, 0)
    assert abs(Fraction(got) - Fraction(v) * 1000) <= Fraction(1, 2)
