"""Checks of one value against a spec, worded for the person who wrote it.

Shared by the scenario validator on the host and the virtual board's plant port, so a bad
event gets the same answer from both. A spec is (kind, low, high): kind 'num', 'int',
'bool', 'str' (low/high bound its length) or a tuple of allowed texts.
"""


def type_problem(key, value, spec):
    """What is wrong with value for key, or None."""
    kind, lo, hi = spec
    if isinstance(kind, tuple):
        if not isinstance(value, str):
            return '{} must be one of {}, got {!r}'.format(key, ', '.join(kind), value)
        if value not in kind:
            return '{} = {!r} is not one of {}'.format(key, value, ', '.join(kind))
        return None
    if kind == 'bool':
        if not isinstance(value, bool):
            return '{} must be true or false, got {!r}'.format(key, value)
        return None
    if kind == 'str':
        if not isinstance(value, str):
            return '{} must be text, got {!r}'.format(key, value)
        if not lo <= len(value) <= hi:
            return '{} must be {} to {} characters long'.format(key, lo, hi)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return '{} must be a number, got {!r}'.format(key, value)
    if kind == 'int' and not isinstance(value, int):
        return '{} must be an integer, got {!r}'.format(key, value)
    if isinstance(value, float) and value - value != 0:   # inf and nan (TOML/JSON allow both)
        return '{} must be a finite number, got {!r}'.format(key, value)
    if value < lo or value > hi:
        return '{} = {} is out of range {} .. {}'.format(key, value, lo, hi)
    return None
