"""SoC target logic: direction toward the target, the reserve floor, V2G availability.

SoC in per-mille. The floor is max(MIN_SOC_THRESHOLD, RESERVE_MARGIN): no
discharge at or below it. Discharge only starts with SoC at least
V2G_AVAILABLE_MARGIN above the floor; once it stopped at the floor it stays
unavailable until SoC is back above floor + margin (no short-cycling). Around
the target a band of BAND_PM holds the direction so the station does not flip
between charge and discharge.

The driver's departure goes with the target: the host sends it as seconds from now (the
controller has no wall clock) and it is kept as a deadline on the tick clock. The decision
logic does not use it yet; it is reported (status `departure_s`) for the ISO 15118 vehicle.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import ticks

HOLD = const(0)
CHARGE = const(1)
DISCHARGE = const(-1)

_MODE_AUTO = const(0)        # charge or discharge toward the target
MODE_CHARGE = const(1)      # only charge toward the target
MODE_DISCHARGE = const(2)   # only discharge toward the target
MODE_NAMES = ('auto', 'charge', 'discharge')

_NO_TARGET = const(-1)
_BAND_PM = const(10)   # 1 % SoC each side of the target
# The furthest departure taken: 6 days. A tick deadline is read correctly only up to half
# the 2**30 ms tick period ahead (6.2 days, core/ticks.py); further than that is refused.
DEPARTURE_MAX_S = const(518400)


def mode_index(name):
    for i in range(len(MODE_NAMES)):
        if MODE_NAMES[i] == name:
            return i
    return -1


class Setpoint:
    def __init__(self, floor_pm, margin_pm):
        self.floor_pm = floor_pm
        self.margin_pm = margin_pm
        self.target_pm = _NO_TARGET
        self.mode = _MODE_AUTO
        self.direction = CHARGE
        self.available = False
        self.wants_discharge = False
        self.departure_set = False      # a departure is known ...
        self.departure_at = 0           # ... at this tick time, ms (the control step drops it once passed)

    def configure(self, floor_pm, margin_pm):
        self.floor_pm = floor_pm
        self.margin_pm = margin_pm

    def set_target(self, target_pm, mode=_MODE_AUTO):
        self.target_pm = target_pm
        self.mode = mode

    def clear_target(self):
        self.target_pm = _NO_TARGET
        self.mode = _MODE_AUTO

    def set_departure(self, now, seconds):
        """Departure in `seconds` (1..DEPARTURE_MAX_S) from now; None clears it."""
        if seconds is None:
            self.departure_set = False
            return
        self.departure_at = ticks.add(now, seconds * 1000)
        self.departure_set = True

    def departure_left_s(self, now):
        """Whole seconds until the departure (rounded up, at least 1), None without one."""
        if not self.departure_set:
            return None
        left = ticks.diff(self.departure_at, now)
        if left <= 0:
            return None
        return (left + 999) // 1000

    def start_threshold_pm(self):
        return self.floor_pm + self.margin_pm

    def update_available(self, soc_pm):
        if soc_pm <= self.floor_pm:
            self.available = False
        elif soc_pm >= self.floor_pm + self.margin_pm:
            self.available = True
        return self.available

    def would_discharge(self, soc_pm, target_pm, mode):
        """True if target_pm (with mode) asks to discharge from soc_pm."""
        return mode != MODE_CHARGE and soc_pm > target_pm + _BAND_PM

    def update(self, soc_known, soc_pm, charge_only):
        """Next direction (CHARGE, DISCHARGE, HOLD)."""
        d = self.direction
        t = self.target_pm
        if soc_known:
            self.update_available(soc_pm)
        if charge_only or t < 0:
            # no host plan (or the host asked for it): charge like a plain charger
            self.wants_discharge = False
            self.direction = CHARGE
            return CHARGE
        if not soc_known:
            self.wants_discharge = False
            if d == DISCHARGE:
                d = HOLD
            self.direction = d
            return d
        mode = self.mode
        floor = self.floor_pm
        if d == CHARGE:
            if soc_pm >= t or mode == MODE_DISCHARGE:
                d = HOLD
        elif d == DISCHARGE:
            if soc_pm <= t or soc_pm <= floor or not self.available or mode == MODE_CHARGE:
                d = HOLD
        if d == HOLD:
            if soc_pm < t - _BAND_PM and mode != MODE_DISCHARGE:
                d = CHARGE
            elif (soc_pm > t + _BAND_PM and mode != MODE_CHARGE and self.available
                  and soc_pm > floor):
                d = DISCHARGE
        self.wants_discharge = d == DISCHARGE or (mode != MODE_CHARGE and soc_pm > t + _BAND_PM)
        self.direction = d
        return d

    def capacity_wh(self, soc_pm, capacity_wh):
        """Energy the battery can give before the floor, Wh."""
        e = soc_pm - self.floor_pm
        if e <= 0:
            return 0
        return e * capacity_wh // 1000
