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


def test_age_across_the_wrap_and_beyond_belief():
    assert ticks.age(30, ticks.PERIOD - 20) == 50
    assert ticks.age(1000, 400) == 600
    assert ticks.age(ticks.PERIOD // 2, 0) == ticks.PERIOD // 2          # 2**29: still believed
    assert ticks.age(ticks.PERIOD // 2 + 1, 0) == ticks.NEVER          # beyond 2**29: not
    assert ticks.age(400, 1000) == ticks.NEVER                           # a stamp from the future
    assert ticks.NEVER > 1 << 29


def test_every_age_in_the_core_has_the_guard():
    # the controller and the cooling loop take their ages from core.ticks, so a stamp from
    # the future or from beyond 2**29 ms counts as never, as the meter and CAN ages do
    from core import controller, cooling
    for age in (controller._age, cooling._age):
        assert age(30, ticks.PERIOD - 20) == 50
        assert age(400, 1000) == ticks.NEVER
        assert age(ticks.PERIOD // 2 + 1, 0) == ticks.NEVER


def test_ticks_arithmetic_allocates_nothing():
    import micropython
    a, b = ticks.PERIOD - 5, 7
    micropython.heap_lock()
    try:
        for _ in range(100):
            d = ticks.diff(b, a)
            b = ticks.add(b, 1)
            ticks.due(b, a)
            ticks.age(b, a)
    finally:
        micropython.heap_unlock()
    assert d > 0
