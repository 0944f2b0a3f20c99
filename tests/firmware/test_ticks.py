"""Wrapping tick arithmetic, on both interpreters."""
from core import ticks


def test_diff_and_add_across_the_wrap():
    near_end = ticks.PERIOD - 20
    later = ticks.add(near_end, 50)
    assert later == 30
    assert ticks.diff(later, near_end) == 50
    assert ticks.diff(near_end, later) == -50
    assert ticks.diff(1000, 400) == 600


def test_due_across_the_wrap():
    deadline = ticks.add(ticks.PERIOD - 10, 50)     # 40 after the wrap
    assert not ticks.due(ticks.PERIOD - 10, deadline)
    assert not ticks.due(39, deadline)
    assert ticks.due(40, deadline) and ticks.due(41, deadline)


def test_ticks_arithmetic_allocates_nothing():
    import micropython
    a, b = ticks.PERIOD - 5, 7
    micropython.heap_lock()
    try:
        for _ in range(100):
            d = ticks.diff(b, a)
            b = ticks.add(b, 1)
            ticks.due(b, a)
    finally:
        micropython.heap_unlock()
    assert d > 0
