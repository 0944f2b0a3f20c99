"""The status LED patterns (core/status_led.py)."""
import micropython

from core import errors as E
from core import status_led as S
from core.controller import MODES


def test_each_mode_has_its_pattern():
    want = {'idle': 'idle', 'connected': 'connected', 'paused': 'connected', 'charging': 'charging',
            'discharging': 'discharging', 'charge_only': 'charge_only', 'fault': 'fault'}
    for mode in MODES:
        assert S.NAMES[S.select(mode, 0, False)] == want[mode], mode


def test_colours_and_shapes_of_the_field_manual():
    def desc(p):
        return S.COLORS[S.COLOR[p]], S.SHAPES[S.SHAPE[p]]
    assert desc(S.IDLE) == ('green', 'solid')
    assert desc(S.CHARGING) == ('green', 'breathe')
    assert desc(S.DISCHARGING) == ('blue', 'breathe')
    assert desc(S.CHARGE_ONLY) == ('amber', 'solid')
    assert desc(S.FAULT) == ('red', 'blink')
    assert desc(S.UPDATE) == ('cyan', 'blink')
    assert desc(S.LINK) == ('amber', 'blink')
    assert len(S.NAMES) == len(S.COLOR) == len(S.SHAPE) == len(S.PERIOD_10MS) == len(S.ON_10MS)


def test_priority_fault_then_update_then_link_then_mode():
    link = E.E101
    assert S.select('fault', link, True) == S.FAULT
    assert S.select('charging', link, True) == S.UPDATE
    assert S.select('charge_only', E.E101, False) == S.LINK      # the heartbeat fallback
    assert S.select('discharging', E.E110, False) == S.LINK      # high latency
    assert S.select('charging', E.E013 | E.E120, False) == S.CHARGING   # other codes: the mode


def test_levels_over_time():
    # solid: always full
    assert [S.level(S.IDLE, t) for t in (0, 333, 999999)] == [1000, 1000, 1000]
    # fault: 4 Hz, on for the first 130 ms of each 250 ms
    assert [S.lit(S.FAULT, t) for t in (0, 129, 130, 249, 250)] == [True, True, False, False, True]
    # link trouble: a 150 ms amber flash every 500 ms
    assert [S.lit(S.LINK, t) for t in (0, 149, 150, 499, 500)] == [True, True, False, False, True]
    # breathing: up over the first second, down over the next
    assert [S.level(S.CHARGING, t) for t in (0, 500, 1000, 1500, 2000)] == [0, 500, 1000, 500, 0]
    assert S.level(S.DISCHARGING, 250) == 250 and not S.lit(S.DISCHARGING, 250)


def test_allocates_nothing():
    S.select('charging', 0, False)
    micropython.heap_lock()
    try:
        n = 0
        for t in range(0, 5000, 50):
            for mode in ('idle', 'charging', 'discharging', 'fault'):
                p = S.select(mode, E.E110 if t > 4000 else 0, t > 4500)
                if S.lit(p, t):
                    n += 1
    finally:
        micropython.heap_unlock()
    assert n > 0
