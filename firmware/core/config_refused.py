"""The settings to run on when the settings file is refused at boot (docs/settings.md, "A file
refused at boot"). Imported only then: a station whose file reads never loads it.
"""
import json

from core.config import (ConfigError, scale, _bounds, _fmt, _separate, _text_of, check, defaults,
                         finite, members, on_step, steps, validate)

# Safety limits a refused settings file may still tighten (docs/settings.md, "A file refused
# at boot"): the higher of file and default counts for these ...
STRICTER_HIGHER = ('MIN_SOC_THRESHOLD', 'RESERVE_MARGIN', 'THERMAL_HYSTERESIS_C')
# ... and the lower for these
STRICTER_LOWER = ('MAX_CHARGE_AMPS', 'MAX_DISCHARGE_AMPS', 'EVSE_TEMP_DERATE_C', 'EVSE_TEMP_LIMIT_C',
                  'BATTERY_TEMP_DERATE_C', 'BATTERY_TEMP_LIMIT_C', 'COOLING_FEEDBACK_S',
                  'COOLING_UNCOOLED_AMPS')


def refused_file(raw, board=None):
    """The settings to run on when the settings file is refused at boot: (Config, note), the
    note saying what of the file still counts ('' when nothing).

    The file is not used, but a safety limit never ends up looser than the file asked: for each
    of STRICTER_HIGHER / STRICTER_LOWER the stricter of the default and every value the file
    gives for it that is a number in range counts (rounded to the stricter step). A file that
    does not read as a JSON object cannot say what the installer wanted, so discharge is also
    off (MAX_DISCHARGE_AMPS 0) until the file is fixed or replaced."""
    try:
        text = _text_of(raw)
    except ConfigError:
        text = ''
    try:
        readable = isinstance(json.loads(text), dict)
    except Exception:   # noqa: BLE001 - ValueError, or RuntimeError for deep nesting
        readable = False
    base = defaults(board)
    vals = dict(base)
    try:
        found = members(text)
    except Exception:   # noqa: BLE001 - the member scan must never stop a boot
        found = []
    for key in STRICTER_HIGHER + STRICTER_LOWER:
        higher = key in STRICTER_HIGHER
        kind, lo, hi, default, unit = _bounds(key, board)
        for k, vtext, _ in found:
            if k != key:
                continue
            try:
                v = json.loads(vtext)
            except Exception:   # noqa: BLE001 - one unreadable value: the others still count
                continue
            if v is True or v is False or not isinstance(v, (int, float)) or not finite(v) \
                    or v < lo or v > hi:
                continue
            v = _stricter_step(v, scale(key), higher)
            if (v > vals[key]) if higher else (v < vals[key]):
                vals[key] = v
    if not readable:
        vals['MAX_DISCHARGE_AMPS'] = 0
    # the pairs stay consistent the strict way: a derate point below its limit ...
    for lo_key, hi_key in (('EVSE_TEMP_DERATE_C', 'EVSE_TEMP_LIMIT_C'),
                           ('BATTERY_TEMP_DERATE_C', 'BATTERY_TEMP_LIMIT_C')):
        if not vals[lo_key] < vals[hi_key]:
            vals[lo_key] = _bounds(lo_key, board)[1]
    # ... and no more discharge than charge
    if not _separate(board) and vals['MAX_DISCHARGE_AMPS'] > vals['MAX_CHARGE_AMPS']:
        vals['MAX_DISCHARGE_AMPS'] = vals['MAX_CHARGE_AMPS']
    cfg, errors = check(vals, None, board)
    if cfg is None:   # not reached with in-range values; still: never discharge on a guess
        vals = dict(base)
        vals['MAX_DISCHARGE_AMPS'] = 0
        cfg = validate(vals, None, board)
    kept = ['{} {}'.format(k, _fmt(vals[k])) for k in STRICTER_HIGHER + STRICTER_LOWER
            if vals[k] != base[k]]
    note = ''
    if kept:
        note = 'stricter than the defaults, in force: ' + ', '.join(kept)
    if not readable:
        note += ('; ' if note else '') + 'discharge off until the file reads as a JSON object'
    return cfg, note


def _stricter_step(v, scale, up):
    """v on a step of 1/scale, rounded towards the stricter side (up for a floor)."""
    n, exact = steps(v, scale)
    if not exact:
        x = v * scale
        if up and n < x:
            n += 1
        elif not up and n > x:
            n -= 1
    return on_step(n, scale)
