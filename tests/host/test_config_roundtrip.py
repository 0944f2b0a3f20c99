"""Property tests: a setting the controller accepts is written as JSON that reads back as the
same value and the same settings hash, under CPython (doubles) and with single-precision
arithmetic as on the STM32 boards (emulated: every float result rounded to 32 bits)."""
import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

import host_tools  # noqa: F401  (makes `core` the firmware's core package)
from core import config as C

PROFILE = settings(max_examples=400, deadline=None, derandomize=True, database=None)
NUM_KEYS = sorted(k for k in C.KEYS if C.scale(k) and C.SCHEMA[k][0] == C.NUM)


def _room(key):
    """Other keys set so that the cross-key rules leave the whole range of key open."""
    return {'EVSE_TEMP_DERATE_C': {'EVSE_TEMP_LIMIT_C': 100},
            'EVSE_TEMP_LIMIT_C': {'EVSE_TEMP_DERATE_C': 30},
            'BATTERY_TEMP_DERATE_C': {'BATTERY_TEMP_LIMIT_C': 70},
            'BATTERY_TEMP_LIMIT_C': {'BATTERY_TEMP_DERATE_C': 20},
            'MAX_DISCHARGE_AMPS': {'MAX_CHARGE_AMPS': 80},
            'MAX_CHARGE_AMPS': {'MAX_DISCHARGE_AMPS': 0}}.get(key, {})


def _step_range(key):
    kind, lo, hi, default, unit, _ = C.SCHEMA[key]
    return C.steps(lo, C.scale(key))[0], C.steps(hi, C.scale(key))[0]


@st.composite
def on_step(draw):
    key = draw(st.sampled_from(NUM_KEYS))
    lo, hi = _step_range(key)
    return key, draw(st.integers(lo, hi))


@PROFILE
@given(on_step())
def test_an_accepted_value_reads_back_identically(case):
    key, n = case
    scale = C.scale(key)
    text = C.dec_text(n, scale)
    changes = dict(_room(key), **{key: json.loads(text)})
    cfg, errs = C.check(changes)
    if cfg is None:   # the very top of a derate range: no limit can be above it
        assert key.endswith('_DERATE_C') and n == _step_range(key)[1], errs
        return
    written = cfg.dumps()
    json.loads(written)                                   # JSON, always
    assert '"{}":{}'.format(key, text) in written
    back = C.load_json(written)
    assert back.to_json() == cfg.to_json() and back.config_hash() == cfg.config_hash()
    # and a second boot changes nothing either
    assert C.load_json(back.dumps()).config_hash() == cfg.config_hash()


@PROFILE
@given(st.sampled_from(NUM_KEYS), st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_any_number_is_refused_or_taken_as_what_is_written(key, v):
    cfg, errs = C.check(dict(_room(key), **{key: v}))
    if cfg is None:
        assert key in dict(errs), errs
        return
    back = C.load_json(cfg.dumps())
    assert back.get(key) == cfg.get(key) and back.config_hash() == cfg.config_hash()
    # what is in force is within float noise of what was asked
    assert abs(cfg.get(key) - v) <= abs(v) * 1e-12 + 1e-12


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


class F32(float):
    """A float whose arithmetic rounds every result to single precision, as on the board."""

    def __new__(cls, x):
        return float.__new__(cls, f32(float(x)))

    def _op(fn):
        def op(self, other):
            r = fn(float(self), float(other))
            return F32(r)
        return op

    __add__ = _op(lambda a, b: a + b)
    __radd__ = _op(lambda a, b: b + a)
    __sub__ = _op(lambda a, b: a - b)
    __rsub__ = _op(lambda a, b: b - a)
    __mul__ = _op(lambda a, b: a * b)
    __rmul__ = _op(lambda a, b: b * a)

    def __neg__(self):
        return F32(-float(self))


@PROFILE
@given(case=on_step())
def test_written_text_reads_back_as_the_same_step_on_a_single_precision_board(case):
    key, n = case
    scale = C.scale(key)
    old = C._STEP_TOL
    C._STEP_TOL = 2.0 ** -23 * 16      # the tolerance the board computes for itself
    try:
        text = C.dec_text(n, scale)
        v = F32(float(text))           # the board's json gives the nearest single
        got, exact = C.steps(v, scale)
        assert (got, exact) == (n, True), (key, text, float(v))
        assert C.dec_text(got, scale) == text   # the board writes back the very same text
    finally:
        C._STEP_TOL = old


@PROFILE
@given(case=on_step(), nudge=st.sampled_from((0.3, 0.4, 0.05, 0.01)))
def test_a_value_between_steps_is_refused_on_a_single_precision_board_too(case, nudge):
    key, n = case
    scale = C.scale(key)
    x = (n + nudge) / scale
    v = F32(x)
    if abs(float(v) * scale - n) * 2 ** 23 < 64 * (n or 1):
        return    # closer to the step than single precision can tell apart
    old = C._STEP_TOL
    C._STEP_TOL = 2.0 ** -23 * 16
    try:
        assert C.steps(v, scale)[1] is False, (key, x)
    finally:
        C._STEP_TOL = old


def test_single_precision_emulation_is_single():
    assert float(F32(0.1)) != 0.1 and float(F32(0.1)) == f32(0.1)
    assert isinstance(F32(1.5) * 1000, F32)
