"""Simulated time for the simulated board: the clock the shell reads and sleeps on.

`v2g sim` runs the real shell (app/run.py control_loop, app/station.py) in simulated time.
The board's HAL takes this clock (`Hal(clock=SimClock())`): `hal.ticks_ms()` reads it and
`hal.sleep_ms(ms)` is the shell's sleep. A sleep does not wait: it hands control back to
whoever drives the shell's coroutine (the scenario driver, boards/sim/scenario_run.py) with
the time to wake at in `wake_ms`; the driver moves the clock on and resumes the coroutine.
That is the whole event loop: one task, stepped deterministically, the same on CPython and
on the MicroPython VM.

    clock = SimClock()
    shell = run.control_loop(Hal(..., clock=clock))
    shell.send(None)          # the shell runs until its first sleep
    clock.now_ms = clock.wake_ms
    shell.send(None)          # ... the next control step
"""
import sys

_MICROPYTHON = sys.implementation.name == 'micropython'
_ONES = 64        # sleeps per list of the MicroPython sleep (see SimClock.sleep_ms)


class _Sleep:
    """The awaitable a sleep returns: yields once to the driver, then the sleep is over.
    One object, reused: a sleep allocates nothing."""

    def __init__(self):
        self.pending = False
        self.done = StopIteration()   # raised each time, never made again (as asyncio's sleep)

    def __iter__(self):       # MicroPython: await is `yield from`
        return self

    __await__ = __iter__      # CPython

    def __next__(self):
        if self.pending:
            self.pending = False
            return None       # to the driver: the shell sleeps
        self.done.__traceback__ = None
        raise self.done


class SimClock:
    def __init__(self, now_ms=0):
        self.now_ms = now_ms
        self.wake_ms = now_ms
        self._slept_at = None
        self._sleep = _Sleep()
        self._ones = None
        self._it = None

    def __call__(self):
        return self.now_ms

    def ticks_ms(self):
        return self.now_ms

    def sleep_ms(self, ms):
        now = self.now_ms
        if now == self._slept_at:
            # one sleep per wake: a second one at the same time never gave the driver control
            raise RuntimeError('sim clock: a sleep at {} ms did not hand control back'.format(now))
        self._slept_at = now
        self.wake_ms = now + (ms if ms > 0 else 0)
        if not _MICROPYTHON:
            s = self._sleep
            s.pending = True
            return s
        # On MicroPython `await x` is `yield from iter(x)`, and ending it with a raised
        # StopIteration (as _Sleep does) costs the VM more than a whole plant step. A list
        # iterator is resumed natively: it yields the list's next item, and stops, without
        # raising, once it has caught up with the list; it does not stay stopped when the
        # list grows. So each sleep adds one item: the await yields once to the driver and
        # ends when the driver resumes it. Every _ONES sleeps the list is emptied and a new
        # iterator starts over it (the only allocation).
        ones = self._ones
        if ones is None or len(ones) >= _ONES:
            if ones is None:
                ones = self._ones = []
            else:
                del ones[:]
            self._it = iter(ones)
        ones.append(None)
        return self._it
