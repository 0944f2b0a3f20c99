"""Cooling-loop supervision (core/cooling.py), one call = one 50 ms control step."""
import micropython

from core import cooling as C

ON_MA = 16000
ON_DC = 500
FB_MS = 5000
UNCOOLED_MA = 16000
# steps from the command's step to the end of the window: the command step plus 5 s; one
# step more and the silence is longer than COOLING_FEEDBACK_S
N_OK = FB_MS // 50 + 1
N_FAULT = N_OK + 1


class Loop:
    """The module with a pump whose tachometer counts while `pump` is True and the pump is
    commanded; `switch` overrides the feedback (None = follows the pump)."""

    def __init__(self, present=True):
        self.c = C.Cooling(present, ON_MA, ON_DC, FB_MS, UNCOOLED_MA)
        self.t = 0
        self.count = 0
        self.pump = True
        self.switch = None
        self.evs = []

    def step(self, cur_ma=0, temp_dc=250, n=1, req_ma=None):
        for _ in range(n):
            self.t += 50
            ev = self.c.step(self.t, cur_ma, cur_ma if req_ma is None else req_ma, temp_dc, self.count)
            if ev:
                self.evs.append((self.t, ev))
            fb = self.c.cmd and self.pump if self.switch is None else self.switch
            if fb:
                self.count += 1
        return self.c


def test_commanded_by_current_either_way_and_by_temperature():
    lp = Loop()
    assert lp.step(16000).state == C.OFF and not lp.c.cmd       # at the threshold: not above
    assert lp.step(16001).cmd and lp.c.state == C.STARTING
    lp2 = Loop()
    assert lp2.step(-20000).cmd
    lp3 = Loop()
    assert lp3.step(0, temp_dc=501).cmd
    lp4 = Loop()
    assert lp4.step(0, req_ma=-20000).cmd                      # the request starts it, before the current


def test_runs_on_after_the_need_has_gone():
    lp = Loop()
    lp.step(32000, n=10)
    assert lp.c.state == C.RUNNING
    lp.step(0, n=C.RUN_ON_MS // 50 - 1)
    assert lp.c.cmd and lp.c.state == C.RUNNING
    lp.step(0)
    assert not lp.c.cmd and lp.c.state == C.OFF and lp.evs == []


def test_feedback_within_the_window_is_no_fault():
    lp = Loop()
    lp.switch = False
    lp.step(32000, n=N_OK - 1)
    assert lp.c.state == C.STARTING and lp.evs == []
    lp.switch = None      # the first pulse, seen at the next step: silent exactly COOLING_FEEDBACK_S
    lp.step(32000, n=2)
    assert lp.c.state == C.RUNNING and lp.c.limit_ma == C.NO_LIMIT and lp.evs == []


def test_no_feedback_while_charging_derates_to_the_uncooled_rating():
    lp = Loop()
    lp.pump = False
    lp.step(32000, n=N_OK)
    assert lp.c.state == C.STARTING
    lp.step(32000)
    assert lp.c.state == C.DERATED and lp.c.limit_ma == UNCOOLED_MA and not lp.c.tripped
    assert lp.evs == [(lp.t, C.EV_DERATED)] and lp.c.silent_ms > FB_MS
    assert lp.c.name() == 'derated'


def test_no_feedback_while_discharging_above_the_uncooled_rating_trips():
    lp = Loop()
    lp.pump = False
    lp.step(-32000, n=N_FAULT)
    assert lp.c.state == C.TRIPPED and lp.c.tripped and lp.c.limit_ma == 0
    assert lp.evs[-1][1] == C.EV_TRIPPED and lp.c.fault_ma == -32000


def test_discharging_at_the_uncooled_rating_is_a_derate():
    lp = Loop()
    lp.pump = False
    lp.step(-16000, temp_dc=600, n=N_FAULT)      # cooling asked by the temperature
    assert lp.c.state == C.DERATED and lp.c.limit_ma == UNCOOLED_MA


def test_pump_stops_while_running():
    lp = Loop()
    lp.step(-32000, n=40)
    assert lp.c.state == C.RUNNING
    lp.pump = False
    lp.step(-32000, n=N_OK)      # the last pulse is seen in the first of these: silent 5 s at the end
    assert lp.c.state == C.RUNNING
    lp.step(-32000)
    assert lp.c.tripped


def test_flicker_shorter_than_the_window_never_faults():
    lp = Loop()
    lp.step(32000, n=10)
    # the flow switch: open 4.5 s, closed 0.2 s, again and again, for 5 minutes
    for _ in range(64):
        lp.switch = False
        lp.step(32000, n=90)
        lp.switch = True
        lp.step(32000, n=4)
    assert lp.c.state == C.RUNNING and lp.evs == []


def test_flicker_longer_than_the_window_faults():
    lp = Loop()
    lp.step(32000, n=10)
    lp.switch = False
    lp.step(32000, n=N_FAULT)
    assert lp.c.state == C.DERATED


def test_latched_until_feedback_keeps_arriving():
    lp = Loop()
    lp.pump = False
    lp.step(-32000, n=N_FAULT)
    assert lp.c.tripped
    # the contactor opens: no current, no hot stage; the pump stays commanded
    lp.step(0, n=2000)
    assert lp.c.tripped and lp.c.cmd
    # a flickering switch is not a working loop
    for _ in range(10):
        lp.switch = True
        lp.step(0, n=6)
        lp.switch = False
        lp.step(0, n=12)
    assert lp.c.tripped
    lp.switch = None
    lp.pump = True     # pump restored: first pulse seen at the 2nd step, 5 s of them from there
    lp.step(0, n=FB_MS // 50)
    assert lp.c.tripped
    lp.step(0, n=2)
    assert lp.c.state == C.RUNNING and lp.c.limit_ma == C.NO_LIMIT
    assert lp.evs[-1][1] == C.EV_CLEARED
    assert lp.c.cmd                           # runs on after the clear


def test_derate_latched_below_the_threshold():
    # derated to 16 A the current is no longer "above 16 A": the latch and the command hold
    lp = Loop()
    lp.pump = False
    lp.step(32000, n=N_FAULT)
    assert lp.c.state == C.DERATED
    lp.step(16000, n=C.RUN_ON_MS // 50 * 2)
    assert lp.c.state == C.DERATED and lp.c.cmd and lp.c.limit_ma == UNCOOLED_MA


def test_board_without_cooling():
    lp = Loop(present=False)
    lp.pump = False
    lp.step(-32000, temp_dc=900, n=FB_MS // 50 * 3)
    assert lp.c.state == C.NONE and not lp.c.cmd and lp.c.limit_ma == C.NO_LIMIT and lp.evs == []
    assert lp.c.name() == 'none'


def test_reconfigure_takes_the_new_window_and_rating():
    lp = Loop()
    lp.pump = False
    lp.c.configure(True, ON_MA, ON_DC, 1000, 10000)
    lp.step(20000, n=22)
    assert lp.c.state == C.DERATED and lp.c.limit_ma == 10000
    lp.c.configure(True, ON_MA, ON_DC, 1000, 12000)
    assert lp.c.limit_ma == 12000
    lp.c.configure(False, ON_MA, ON_DC, 1000, 12000)
    assert lp.c.state == C.NONE and lp.c.limit_ma == C.NO_LIMIT and not lp.c.cmd


def test_ticks_wrap():
    lp = Loop()
    lp.t = (1 << 30) - 1000     # the clock wraps during the window
    lp.pump = False
    lp.step(32000, n=N_OK)
    assert lp.c.state == C.STARTING
    lp.step(32000)
    assert lp.c.state == C.DERATED


def test_step_allocates_nothing():
    lp = Loop()
    lp.step(32000, n=5)
    c = lp.c
    t = lp.t
    count = lp.count
    micropython.heap_lock()
    try:
        for k in range(600):
            t += 50
            if k < 300 or k > 420:
                count += 1           # pump runs, stops for 6 s (derate), runs again (clears)
            c.step(t, 32000, 32000, 250, count)
    finally:
        micropython.heap_unlock()
    assert c.state == C.RUNNING
