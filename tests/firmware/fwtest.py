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


def scratch(name):
    """A scratch folder path under /tmp, one per interpreter (both have /tmp; the VM's is
    in memory). Under CPython one per process too, removed when it ends: test runs side by
    side (parallel workers, other checkouts) must not wipe each other's files."""
    import sys
    path = '/tmp/v2g_{}_test_{}'.format(name, sys.implementation.name)
    if sys.implementation.name != 'cpython':
        return path
    import atexit
    import os
    import shutil
    path += '_{}'.format(os.getpid())
    atexit.register(shutil.rmtree, path, True)
    return path


def wipe(path):
    """Empty the folder at path (creating it if missing)."""
    import os
    try:
        names = os.listdir(path)
    except OSError:
        os.mkdir(path)
        names = []
    for n in names:
        p = path + '/' + n
        try:
            os.remove(p)
        except OSError:
            wipe(p)
            os.rmdir(p)


def in_dir(path):
    """Decorator: run the test with path as the current folder (firmware code writes its
    files relative to it, as on a board), then go back."""
    import os

    def wrap(fn):
        def wrapped():
            here = os.getcwd()
            try:
                os.mkdir(path)
            except OSError:
                pass
            os.chdir(path)
            try:
                fn()
            finally:
                os.chdir(here)
        return wrapped
    return wrap


class FixedGrid:
    """Stands in for core.grid.GridProtection in controller tests: the grid slot the
    controller reads each step (caps in mA, droop offset: + = more charge, the active
    grid code and whether it trips), set by the test. Set it on a Controller's `grid`."""

    def __init__(self, charge_ma, discharge_ma, droop_ma=0, trip_code=0):
        self.allow_charge_ma = charge_ma
        self.allow_discharge_ma = discharge_ma
        self.droop_ma = droop_ma
        self.trip_code = trip_code

    def step(self, now_ms, mv, mhz, ok):
        pass

    def pending(self):
        return False
