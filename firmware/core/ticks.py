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
# The age of a stamp that is not believable: never set, from the future, or so old the
# clock may have come round. Larger than any timeout, and still a small int.
NEVER = const((1 << 30) - 1)


def add(t, delta):
    """t + delta on the wrapping clock."""
    return (t + delta) & _MASK


def diff(a, b):
    """a - b as a signed number of ms, correct across the wrap (|a - b| < 2**29)."""
    return ((a - b + _HALF) & _MASK) - _HALF


def age(now, then):
    """ms from then to now (then <= now), or NEVER beyond 2**29: a stamp that far
    back cannot be told from one in the future, nor from one a whole wrap ago."""
    d = (now - then) & _MASK
    if d > _HALF:
        return NEVER
    return d


def due(now, t):
    """True once now has reached t."""
    return ((now - t + _HALF) & _MASK) >= _HALF
