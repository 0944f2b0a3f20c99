"""Millisecond ticks that wrap, as MicroPython's time.ticks_ms does (period 2**30, about
12.4 days). Compare and add times only through these, never with plain - and +: a plain
difference across the wrap is off by 2**30, which would stall a loop for days or make a
silent meter look fresh. Small ints only: nothing here allocates on the board.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

PERIOD = const(1 << 30)
_MASK = const((1 << 30) - 1)
_HALF = const(1 << 29)


def add(t, delta):
    """t + delta on the wrapping clock."""
    return (t + delta) & _MASK


def diff(a, b):
    """a - b as a signed number of ms, correct across the wrap (|a - b| < 2**29)."""
    return ((a - b + _HALF) & _MASK) - _HALF


def due(now, t):
    """True once now has reached t."""
    return ((now - t + _HALF) & _MASK) >= _HALF
