"""Control pilot (IEC 61851-1 / SAE J1772): duty <-> current, level states, diode.

Duty is in per-mille (1000 = steady +12 V, no PWM; 0 = steady -12 V, state F).
Currents in mA. The EVSE offer must never exceed the limit, so current->duty
rounds down.
"""
from array import array

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

PWM_OFF = const(1000)      # steady +12 V: no PWM, no offer (state A/B "not ready")
PWM_STATE_F = const(0)     # steady -12 V: EVSE not available / fault
PWM_DIGITAL = const(50)    # 5 %: use digital communication (current asked over CAN)

MIN_OFFER_MA = const(6000)   # below 6 A the pilot cannot offer anything
_MAX_OFFER_MA = const(80000)
# 10-85 % duty: A = duty% * 0.6 (6-51 A); 85-96 %: A = (duty% - 64) * 2.5 (52.5-80 A).
# 51-52.75 A cannot be expressed (85.1 % is 52.75 A): the offer stays at 85 % (51 A), never above the limit.
_KNEE_MA = const(52500)
_DUTY_MIN = const(100)
_DUTY_KNEE = const(850)
_DUTY_MAX = const(960)

# pilot levels; index also into LETTERS
A = const(0)   # +12 V: no vehicle
B = const(1)   # +9 V: vehicle connected
C = const(2)   # +6 V: vehicle ready, energy
D = const(3)   # +3 V: vehicle ready, ventilation asked
E = const(4)   # 0 V: short circuit CP-PE / no power
F = const(5)   # -12 V: EVSE fault
UNKNOWN = const(6)   # fits no band
LETTERS = ('A', 'B', 'C', 'D', 'E', 'F', '?')

_BAND_MV = const(1000)   # each level +-1 V
# An array, not a tuple: frozen into an image a constant tuple's ints were heap objects and
# level() allocated on every control step (tests/host/test_frozen_rules.py).
_NOMINAL_MV = array('i', [12000, 9000, 6000, 3000, 0, -12000])
DIODE_LOW_MAX_MV = const(-11000)   # with the EV's diode the low side reaches about -12 V


def duty_for_ma(ma):
    """Per-mille duty that offers at most ma; PWM_OFF below 6 A (no offer)."""
    if ma < MIN_OFFER_MA:
        return PWM_OFF
    if ma >= _MAX_OFFER_MA:
        return _DUTY_MAX
    if ma < _KNEE_MA:
        d = ma // 60              # duty% = A / 0.6  ->  pm = mA / 60
        return d if d < _DUTY_KNEE else _DUTY_KNEE
    return 640 + (ma * 4) // 1000  # duty% = A / 2.5 + 64  ->  pm = 4 A + 640


def ma_for_duty(pm):
    """Current the EV may draw at duty pm; 0 for no offer, digital or invalid duty."""
    if pm < _DUTY_MIN or pm > _DUTY_MAX:
        return 0
    if pm <= _DUTY_KNEE:
        return pm * 60
    return (pm - 640) * 250


def level(cp_high_mv):
    """Level (A..F) whose +-1 V band holds cp_high_mv, else UNKNOWN."""
    for i in range(6):
        d = cp_high_mv - _NOMINAL_MV[i]
        if -_BAND_MV <= d <= _BAND_MV:
            return i
    return UNKNOWN


def power_level(lvl):
    """True for the levels in which energy may flow (C, D)."""
    return lvl == C or lvl == D


def diode_ok(cp_low_mv):
    return cp_low_mv <= DIODE_LOW_MAX_MV


class PilotFilter:
    """Debounced pilot state.

    A change towards energy (into C, D, or a fault level seen from a state
    without energy) must hold for n samples. A change while energy may flow
    (from C or D), or into A, B, E or F, acts at once: removing power is never
    delayed.
    """

    def __init__(self, n=3):
        self.n = n
        self.state = A
        self._cand = A
        self._count = 0

    def reset(self, lvl=A):
        self.state = lvl
        self._cand = lvl
        self._count = 0

    def update(self, lvl):
        st = self.state
        if lvl == st:
            self._count = 0
            self._cand = lvl
            return st
        if st == C or st == D or lvl == A or lvl == B or lvl == E or lvl == F:
            self.state = lvl
            self._cand = lvl
            self._count = 0
            return lvl
        if lvl == self._cand:
            self._count += 1
        else:
            self._cand = lvl
            self._count = 1
        if self._count >= self.n:
            self.state = lvl
            self._count = 0
        return self.state
