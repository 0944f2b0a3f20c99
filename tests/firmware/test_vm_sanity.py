"""The runner itself: these hold on both interpreters, and one tells them apart."""
import sys


def test_integer_math_is_exact():
    assert (1 << 40) + 1 - (1 << 40) == 1
    assert -7 // 2 == -4


def test_implementation_is_known():
    assert sys.implementation.name in ("micropython", "cpython")


def test_micropython_module_imports():
    from micropython import const
    assert const(5) == 5
