"""Cooling-loop supervision: the pump (or fan) command and its feedback (V2G-013).

Pure: time comes in as now_ms, integers only, step() allocates nothing.

When cooling runs: the current in either direction above COOLING_ON_AMPS, or the EVSE
temperature above COOLING_ON_TEMP_C. Once on, it runs on for RUN_ON_MS after both have
fallen back: the coolant carries the stage's stored heat away, and a current hovering at
the threshold does not cycle the pump.

Feedback: the HAL counts evidence that coolant moves in a free-running counter
(Inputs.cooling_count): tachometer pulses (an IRQ counter), or control steps with the
flow switch closed. Only a change of the count matters here.

States (STATE_NAMES):
- off       not commanded
- starting  commanded, no feedback yet: the loop has COOLING_FEEDBACK_S from the command
- running   commanded, feedback seen
- derated   commanded and no feedback for COOLING_FEEDBACK_S (from the command or the last
            feedback): V2G-013; both directions limited to COOLING_UNCOOLED_AMPS
- tripped   the same failure found while discharging above COOLING_UNCOOLED_AMPS: hard
            fault, no transfer in either direction (the controller opens the contactor)
- none      the board has no cooling hardware: never commanded, never a fault

A flickering feedback (a chattering flow switch) is debounced by the same rule: it raises
nothing as long as no silence lasts COOLING_FEEDBACK_S.

Latched until the loop works again: in derated and tripped the command stays on (the loop
must be running to show that it works) and V2G-013 clears once the feedback has kept
arriving for COOLING_FEEDBACK_S with no gap longer than _RECOVER_GAP_MS. A pump that is
restored clears it; a flow switch that still flickers does not. The command then follows
the current and temperature again.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core.ticks import age as _age

RUN_ON_MS = const(30000)        # the pump keeps running this long after the need has gone
_RECOVER_GAP_MS = const(500)     # longest silence that still counts as "feedback keeps arriving"
NO_LIMIT = const(1000000)       # as core.limits.NO_LIMIT

OFF = const(0)
STARTING = const(1)
RUNNING = const(2)
DERATED = const(3)
TRIPPED = const(4)
NONE = const(5)
STATE_NAMES = ('off', 'starting', 'running', 'derated', 'tripped', 'none')

# what step() reports, for the controller's event log
_EV_NONE = const(0)
EV_DERATED = const(1)     # V2G-013 raised, derate
EV_TRIPPED = const(2)     # V2G-013 raised, hard fault
EV_CLEARED = const(3)     # V2G-013 cleared: the loop works again


class Cooling:
    def __init__(self, present, on_ma, on_dc, feedback_ms, uncooled_ma):
        self.state = NONE
        self.cmd = False
        self.limit_ma = NO_LIMIT      # both directions
        self._count = 0
        self._seen = False            # a first count has been taken
        self._cmd_since = 0           # when the command went on
        self._fb_ms = 0               # last change of the feedback count
        self._need_ms = 0             # last time the current or temperature needed cooling
        self._ok_since = -1           # start of an unbroken run of feedback (recovery), -1 none
        self.silent_ms = 0            # silence when the fault was found (for the message)
        self.fault_ma = 0             # the current when the fault was found (for the message)
        self.configure(present, on_ma, on_dc, feedback_ms, uncooled_ma)

    def configure(self, present, on_ma, on_dc, feedback_ms, uncooled_ma):
        self.present = present
        self.on_ma = on_ma
        self.on_dc = on_dc
        self.feedback_ms = feedback_ms
        self.uncooled_ma = uncooled_ma
        if not present:
            self.state = NONE
            self.cmd = False
            self.limit_ma = NO_LIMIT
        elif self.state == NONE:
            self.state = OFF
        elif self.state == DERATED:
            self.limit_ma = uncooled_ma

    @property
    def faulted(self):
        return self.state == DERATED or self.state == TRIPPED

    @property
    def tripped(self):
        return self.state == TRIPPED

    def name(self):
        return STATE_NAMES[self.state]

    def step(self, now, cur_ma, req_ma, temp_dc, count):
        """One control step.

        cur_ma   the current now, + into the vehicle (the meter's, or the request when the
                 meter is stale): decides between derate and hard fault
        req_ma   the controller's present request: cooling starts with the request, before
                 the current has ramped up to it
        temp_dc  EVSE temperature, 0.1 degC
        count    the HAL's feedback count
        Returns EV_* for the event log."""
        if not self.present:
            return _EV_NONE
        fb = self._seen and count != self._count
        self._count = count
        self._seen = True
        if fb:
            self._fb_ms = now
        a = cur_ma if cur_ma >= 0 else -cur_ma
        r = req_ma if req_ma >= 0 else -req_ma
        if a > self.on_ma or r > self.on_ma or temp_dc > self.on_dc:
            self._need_ms = now
            need = True
        else:
            need = self.cmd and _age(now, self._need_ms) < RUN_ON_MS
        st = self.state
        if st == DERATED or st == TRIPPED:
            # latched: keep the pump commanded and wait for feedback that keeps arriving
            if not fb and _age(now, self._fb_ms) > _RECOVER_GAP_MS:
                self._ok_since = -1
            elif fb and self._ok_since < 0:
                self._ok_since = now
            if self._ok_since >= 0 and _age(now, self._ok_since) >= self.feedback_ms:
                self._ok_since = -1
                self.state = RUNNING
                self.limit_ma = NO_LIMIT
                self._need_ms = now         # run on from here, as after any need
                return EV_CLEARED
            return _EV_NONE
        if not need:
            self.cmd = False
            self.state = OFF
            return _EV_NONE
        if not self.cmd:
            self.cmd = True
            self._cmd_since = now
            self.state = STARTING
            return _EV_NONE
        if fb:
            self.state = RUNNING
            return _EV_NONE
        # silence since the command or, once it has run, since the last feedback
        since = self._fb_ms if st == RUNNING else self._cmd_since
        silent = _age(now, since)
        if silent <= self.feedback_ms:
            return _EV_NONE
        self.silent_ms = silent
        self.fault_ma = cur_ma
        self._ok_since = -1
        if -cur_ma > self.uncooled_ma:
            self.state = TRIPPED
            self.limit_ma = 0
            return EV_TRIPPED
        self.state = DERATED
        self.limit_ma = self.uncooled_ma
        return EV_DERATED
