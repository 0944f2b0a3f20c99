"""app/run.py's loop on a simulated clock: a control step every CONTROL_PERIOD_MS and, between
steps, only the meter port's byte pump, at the moments the station asks for. Runs on both
interpreters (the coroutine is driven as boards/sim/scenario_run.py drives it)."""
from app import run
from board.clock import SimClock
from core.controller import CONTROL_PERIOD_MS


class Hal:
    def __init__(self, clock):
        self.clock = clock
        self.ticks_ms = clock.ticks_ms
        self.sleep_ms = clock.sleep_ms
        self.stop = False
        self.errors = []

    def stop_requested(self):
        return self.stop

    def log_exception(self, e):
        self.errors.append(e)


class Station:
    """Asks for the pump at the times in `io_at` (each asked for once it is the next)."""

    def __init__(self, io_at, fail_io_at=None):
        self.io_at = list(io_at)
        self.fail_io_at = fail_io_at
        self.calls = []

    def tick(self, now):
        self.calls.append(('tick', now))
        self._served(now)      # the step moves the meter's bytes itself

    def _served(self, now):
        while self.io_at and self.io_at[0] <= now:
            self.io_at.pop(0)

    def io(self, now):
        self.calls.append(('io', now))
        if now == self.fail_io_at:
            raise ValueError('pump bug')
        self._served(now)

    def next_io_ms(self, now):
        return self.io_at[0] if self.io_at else None


def _drive(hal, clock, station, until):
    loop = run._run(hal, station, 0)
    sleeps = []
    try:
        loop.send(None)
        while clock.wake_ms <= until:
            sleeps.append(clock.wake_ms)
            clock.now_ms = clock.wake_ms
            loop.send(None)
    except StopIteration:
        return sleeps, True
    return sleeps, False


def test_between_steps_the_loop_runs_only_the_pump_when_the_station_asks():
    clock = SimClock(0)
    hal = Hal(clock)
    st = Station([12, 31, 50, 70, 149])
    sleeps, ended = _drive(hal, clock, st, 200)
    assert not ended and hal.errors == []
    P = CONTROL_PERIOD_MS
    # the pump at each asked moment before the next step; one asked for a step's own time
    # is the step's (the step moves the meter's bytes itself)
    assert st.calls == [('tick', 0), ('io', 12), ('io', 31), ('tick', P), ('io', 70),
                        ('tick', 2 * P), ('io', 149), ('tick', 3 * P), ('tick', 4 * P)]
    assert sleeps == [12, 31, 50, 70, 100, 149, 150, 200]


def test_a_bug_in_the_pump_ends_the_loop_as_a_bug_in_the_step_does():
    clock = SimClock(0)
    hal = Hal(clock)
    st = Station([20, 30], fail_io_at=20)
    sleeps, ended = _drive(hal, clock, st, 200)
    assert ended and len(hal.errors) == 1 and str(hal.errors[0]) == 'pump bug'
    assert st.calls == [('tick', 0), ('io', 20)]
