"""Tiny helpers for firmware tests that must run under MicroPython and CPython.

pytest is not available inside the MicroPython VM, so firmware tests are plain
functions named test_* that use assert and these helpers.
"""


def raises(exc_type, fn, *args, **kwargs):
    """Call fn(*args, **kwargs); it must raise exc_type. Returns the exception."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError("expected {} from {}".format(exc_type.__name__, fn))


def approx(a, b, tol):
    return abs(a - b) <= tol
