"""CPython stand-in for MicroPython's `micropython` module.

Only used when firmware code runs under CPython (tests, `v2g sim --vm cpython`);
it is never copied to a board.
"""


def const(value):
    return value


def heap_lock():
    return 0


def heap_unlock():
    return 0


def mem_info(*_args):
    pass


def native(fn):
    return fn


viper = native
