"""Settings schema of v2g_vars.json (shared spec config.md, version 1).

validate() is the single gate for every settings change: the controller runs it
on boot and on config_set, host tools run the same module under CPython before
flashing. A change is taken whole or refused whole (V2G-400) with every
offending key named together with its allowed range.

Values are kept twice: the JSON values as given (for config_get and the file)
and integer milli-units for the control step (mA, dC, mHz, ms, per-mille SoC).
Pure module: only json and hashlib, no I/O.
"""
import json

from core import grid_profiles

try:
    import hashlib
except ImportError:  # pragma: no cover - every supported interpreter has it
    hashlib = None

VERSION = 1

# kinds
INT = 'int'      # JSON integer
NUM = 'num'      # JSON integer or decimal
BOOL = 'bool'
ENUM = 'enum'    # one of a list of strings
CHOICE = 'choice'  # one of a list of integers
OPTNUM = 'optnum'  # a number, or null for "the grid profile's own value"

# key: (kind, low-or-choices, high, default, unit, scale)
# scale: steps per unit of a decimal key (NUM, OPTNUM), the resolution the control step works
# in (mA, per-mille SoC, dC, ms, mHz, mV); 0 for the others. A value is taken only on a step,
# so what is written is its exact decimal text and reads back as the same value on a double
# or a single-precision board. In the rows, not a dict of its own: a dict made at import is
# RAM even when the module is frozen.
SCHEMA = {
    'version': (CHOICE, (1,), None, 1, '', 0),
    'MAX_CHARGE_AMPS': (NUM, 6, 80, 32, 'A', 1000),
    'MAX_DISCHARGE_AMPS': (NUM, 0, 80, 32, 'A', 1000),
    'MIN_SOC_THRESHOLD': (NUM, 0, 100, 20, '%', 10),
    'RESERVE_MARGIN': (NUM, 0, 100, 20, '%', 10),
    'V2G_AVAILABLE_MARGIN': (NUM, 0, 50, 10, '%', 10),
    'HEARTBEAT_TIMEOUT_S': (NUM, 1, 300, 10, 's', 1000),
    'PHASES': (CHOICE, (1, 3), None, 1, '', 0),
    'NOMINAL_VOLTAGE_V': (NUM, 100, 480, 240, 'V', 1000),
    'GRID_PROFILE': (ENUM, ('IEEE1547_CAT_I_60HZ', 'IEEE1547_CAT_II_60HZ',
                            'IEEE1547_CAT_III_60HZ', 'EN50549_50HZ'), None,
                     'IEEE1547_CAT_II_60HZ', '', 0),
    'FREQ_DROOP_ENABLED': (BOOL, None, None, True, '', 0),
    'FREQ_DEADBAND_HZ': (NUM, 0.017, 1.0, 0.036, 'Hz', 1000),
    'FREQ_DROOP_PCT': (NUM, 2, 12, 5, '%', 1000),
    'FREQ_RESPONSE_S': (NUM, 0.2, 10, 0.5, 's', 1000),
    'EVSE_TEMP_DERATE_C': (NUM, 30, 90, 65, 'C', 10),
    'EVSE_TEMP_LIMIT_C': (NUM, 35, 100, 75, 'C', 10),
    'BATTERY_TEMP_DERATE_C': (NUM, 20, 60, 45, 'C', 10),
    'BATTERY_TEMP_LIMIT_C': (NUM, 25, 70, 55, 'C', 10),
    'THERMAL_HYSTERESIS_C': (NUM, 1, 20, 5, 'C', 10),
    'VENTILATION_AVAILABLE': (BOOL, None, None, False, '', 0),
    'METER_MODEL': (ENUM, ('SDM630', 'SDM120'), None, 'SDM630', '', 0),
    'METER_ADDRESS': (INT, 1, 247, 1, '', 0),
    # 38400: the fastest the meters take, and the slowest at which the meter task reads
    # voltage and frequency soon enough for EN 50549's 0.1 s stages (docs/settings.md)
    'METER_BAUD': (CHOICE, (2400, 4800, 9600, 19200, 38400), None, 38400, 'baud', 0),
    'METER_POLL_MS': (INT, 100, 10000, 500, 'ms', 0),
    'METER_STALE_S': (NUM, 1, 60, 3, 's', 1000),
    'CAN_BITRATE': (CHOICE, (125000, 250000, 500000, 1000000), None, 500000, 'bit/s', 0),
    'CAN_TIMEOUT_MS': (INT, 100, 10000, 1000, 'ms', 0),
    'HOST_LATENCY_WARN_MS': (INT, 10, 5000, 100, 'ms', 0),
    'COOLING_ON_AMPS': (NUM, 0, 80, 16, 'A', 1000),
    'COOLING_ON_TEMP_C': (NUM, 20, 90, 50, 'C', 10),
    'COOLING_FEEDBACK_S': (NUM, 1, 30, 5, 's', 1000),
    'COOLING_UNCOOLED_AMPS': (NUM, 0, 80, 16, 'A', 1000),
    # Additions to the spec's table: the grid profile's enter-service delay and ramp, for
    # commissioning and tests. null keeps the standard's value (IEEE 1547: 300 s and 300 s).
    'GRID_ENTER_SERVICE_DELAY_S': (OPTNUM, 0, 600, None, 's', 1000),
    'GRID_RAMP_S': (OPTNUM, 0, 1000, None, 's', 1000),
}

KEYS = tuple(sorted(SCHEMA))


def scale(key, default=None):
    """Steps per unit of a decimal setting; default for any other key."""
    row = SCHEMA.get(key)
    return row[5] if row is not None and row[5] else default


def _epsilon():
    e = 1.0
    while 1.0 + e / 2 != 1.0:
        e /= 2
    return e


# 2**-52 with doubles, 2**-23 on a single-precision board: a value this close (relative) to a
# step is that step as far as this interpreter can tell; the margin covers parse and product
# rounding
_STEP_TOL = _epsilon() * 16

# board keys that are not settings
BOARD_DISCHARGE_SEPARATE = 'discharge_rated_separately'
BOARD_COOLING = 'cooling'      # False: the board has no cooling loop (its board file says so)


NOTE_NO_COOLING = ('COOLING_ON_AMPS, COOLING_ON_TEMP_C, COOLING_FEEDBACK_S, COOLING_UNCOOLED_AMPS: '
                   'this board has no cooling loop (its board file says so): the settings are '
                   'kept and have no effect')


class ConfigError(ValueError):
    """Refusal of a settings change (V2G-400). .errors: list of (key, reason)."""

    code = 'V2G-400'

    def __init__(self, errors):
        self.errors = errors
        super().__init__(message(errors))

    def keys(self):
        return [k for k, _ in self.errors]


def message(errors):
    return 'V2G-400 invalid configuration: ' + '; '.join(
        '{}: {}'.format(key_text(k), why) for k, why in errors)


def key_text(k):
    """A key as it may be printed: plain when it is short printable ASCII, else quoted with
    escapes (a NUL or an escape sequence in a key never reaches a terminal raw)."""
    if isinstance(k, str) and len(k) <= _SHOW_MAX:
        for c in k:
            if not ' ' <= c <= '~':
                break
        else:
            return k
    return show(k)


_SHOW_MAX = 40          # characters of a refused value quoted in a message
_BIG_INT = 10 ** 15     # larger integers are not quoted (CPython refuses very long int text)


def finite(v):
    """False for inf, -inf and NaN (int() and formatting of those raise)."""
    return not isinstance(v, float) or (v == v and v - v == 0)


def show(v):
    """A refused value as short text for a message; never raises."""
    if isinstance(v, int) and not isinstance(v, bool) and (v > _BIG_INT or v < -_BIG_INT):
        return 'a too large integer'
    if isinstance(v, (list, tuple, dict)):
        return 'a ' + _tname(v)
    t = repr(v)
    if len(t) > _SHOW_MAX:
        t = t[:_SHOW_MAX] + '...'
    return t


def _fmt(v):
    if not finite(v):
        return str(v)
    if isinstance(v, float) and (v > _BIG_INT or v < -_BIG_INT):
        return show(v)   # 1e308 as such, not as its 309 digits
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    if isinstance(v, int) and (v > _BIG_INT or v < -_BIG_INT):
        return 'a too large integer'
    return str(v)


def _range_text(kind, lo, hi, unit):
    u = (' ' + unit) if unit else ''
    if kind == BOOL:
        return 'true or false'
    if kind == OPTNUM:
        return 'null or {} to {}{}'.format(_fmt(lo), _fmt(hi), u)
    if kind in (ENUM, CHOICE):
        return 'one of ' + ', '.join(str(c) for c in lo)
    return '{} to {}{}'.format(_fmt(lo), _fmt(hi), u)


def _bounds(key, board):
    kind, lo, hi, default, unit, _ = SCHEMA[key]
    if board and key in board and kind in (INT, NUM, OPTNUM):
        blo, bhi = board[key]
        if blo > lo:
            lo = blo
        if bhi < hi:
            hi = bhi
    elif board and key in board and kind in (ENUM, CHOICE):
        allowed = board[key]
        lo = tuple(c for c in lo if c in allowed)
    return kind, lo, hi, default, unit


def _check_one(key, value, board):
    """None if value is acceptable for key, else the reason naming the range."""
    if key not in SCHEMA:
        return 'unknown key'
    kind, lo, hi, default, unit = _bounds(key, board)
    rng = _range_text(kind, lo, hi, unit)
    if kind == BOOL:
        if value is True or value is False:
            return None
        return 'wrong type {}: allowed {}'.format(_tname(value), rng)
    if value is True or value is False:
        return 'wrong type bool: allowed {}'.format(rng)
    if kind == OPTNUM and value is None:
        return None
    if not finite(value):
        return 'value {} is not a finite number: allowed {}'.format(value, rng)
    if kind == ENUM:
        if not isinstance(value, str):
            return 'wrong type {}: allowed {}'.format(_tname(value), rng)
        if value not in lo:
            return 'value {} not allowed: {}'.format(show(value), rng)
        return None
    if kind in (INT, CHOICE):
        if isinstance(value, float) and value == int(value):
            value = int(value)
        if not isinstance(value, int):
            return 'wrong type {}: allowed integer {}'.format(_tname(value), rng)
        if kind == CHOICE:
            if value not in lo:
                return 'value {} not allowed: {}'.format(show(value), rng)
            return None
    elif not isinstance(value, (int, float)) or value != value:  # NaN refused
        return 'wrong type {}: allowed number {}'.format(_tname(value), rng)
    if value < lo or value > hi:
        return 'value {} out of range: allowed {}'.format(_fmt(value), rng)
    sc = scale(key)
    if sc and isinstance(value, float) and not steps(value, sc)[1]:
        return 'value {} is finer than the {}{} step of this setting'.format(
            show(value), dec_text(1, sc), (' ' + unit) if unit else '')
    return None


def _tname(v):
    if v is None:
        return 'null'
    return type(v).__name__


def defaults(board=None):
    """Default settings, pulled inside a board's narrowed ranges."""
    vals = {}
    for key in KEYS:
        kind, lo, hi, default, unit = _bounds(key, board)
        if kind in (INT, NUM) or (kind == OPTNUM and default is not None):
            if default > hi:
                default = hi
            if default < lo:
                default = lo
        elif kind in (ENUM, CHOICE) and default not in lo and lo:
            default = lo[0]
        vals[key] = default
    if not _separate(board) and vals['MAX_DISCHARGE_AMPS'] > vals['MAX_CHARGE_AMPS']:
        vals['MAX_DISCHARGE_AMPS'] = vals['MAX_CHARGE_AMPS']
    return vals


def _separate(board):
    return bool(board) and bool(board.get(BOARD_DISCHARGE_SEPARATE, False))


def check(changes, current=None, board=None):
    """(Config, []) when acceptable, else (None, [(key, reason), ...])."""
    if board is None and current is not None:
        board = current.board
    if not isinstance(changes, dict):
        return None, [('config', 'must be a map of KEY: value, got {}'.format(_tname(changes)))]
    errors = []
    names = []
    for key in changes:
        if isinstance(key, str):
            names.append(key)
        else:
            # sorted() cannot order mixed key types: name the non-text ones first
            errors.append((show(key), 'key must be text'))
    for key in sorted(names):
        why = _check_one(key, changes[key], board)
        if why is not None:
            errors.append((key, why))
    if errors:
        return None, errors
    vals = dict(current.values) if current is not None else defaults(board)
    for key in changes:
        v = changes[key]
        if SCHEMA[key][0] in (INT, CHOICE) and isinstance(v, float):
            v = int(v)
        elif scale(key) and isinstance(v, float):
            v = on_step(steps(v, scale(key))[0], scale(key))   # 0.30000000000000004 is 0.3
        vals[key] = v
    _cross(vals, board, changes, errors)
    if errors:
        return None, errors
    return Config(vals, board), []


def _cross(vals, board, changes, errors):
    pairs = (('EVSE_TEMP_DERATE_C', 'EVSE_TEMP_LIMIT_C'),
             ('BATTERY_TEMP_DERATE_C', 'BATTERY_TEMP_LIMIT_C'))
    for lo_key, hi_key in pairs:
        if not vals[lo_key] < vals[hi_key]:
            why = 'must be below {} ({} >= {})'.format(hi_key, _fmt(vals[lo_key]), _fmt(vals[hi_key]))
            errors.append((lo_key, why))
            errors.append((hi_key, 'must be above {} ({})'.format(lo_key, _fmt(vals[lo_key]))))
    if not _separate(board) and vals['MAX_DISCHARGE_AMPS'] > vals['MAX_CHARGE_AMPS']:
        errors.append(('MAX_DISCHARGE_AMPS', 'must be at most MAX_CHARGE_AMPS ({} > {}) on this board'.format(
            _fmt(vals['MAX_DISCHARGE_AMPS']), _fmt(vals['MAX_CHARGE_AMPS']))))
        errors.append(('MAX_CHARGE_AMPS', 'must be at least MAX_DISCHARGE_AMPS ({})'.format(
            _fmt(vals['MAX_DISCHARGE_AMPS']))))


def validate(changes, current=None, board=None):
    """A new Config with changes applied over current (or the defaults).

    Raises ConfigError naming every offending key; nothing is modified then.
    """
    cfg, errors = check(changes, current, board)
    if errors:
        raise ConfigError(errors)
    return cfg


def _text_of(raw):
    if isinstance(raw, (bytes, bytearray)):
        try:
            return bytes(raw).decode()
        except UnicodeError:
            raise ConfigError([('config', 'not UTF-8 text')]) from None
    if not isinstance(raw, str):
        raise ConfigError([('config', 'must be JSON text, got {}'.format(_tname(raw)))])
    return raw


def parse(text):
    """The JSON value of settings text; ConfigError naming where it is broken, or every key
    given twice in the object (json keeps the last one silently; a file that sets a key twice
    is refused, not half-read)."""
    text = _text_of(text)
    try:
        data = json.loads(text)
    except ValueError as e:
        line = getattr(e, 'lineno', None)    # CPython says where; MicroPython does not
        where = ' at line {} column {}'.format(line, e.colno) if line else ''
        why = getattr(e, 'msg', None) or str(e)
        raise ConfigError([('config', 'not valid JSON{}: {}'.format(where, key_text(why)))]) from None
    except RuntimeError:   # nesting deeper than the parser's stack (RecursionError on CPython)
        raise ConfigError([('config', 'not valid JSON: nested too deeply')]) from None
    if isinstance(data, dict):
        seen = {}
        errors = []
        for key, _, at in members(text):
            if key in seen:
                if seen[key] == 1:
                    errors.append((key, 'given more than once (again at line {})'.format(
                        text[:at].count('\n') + 1)))
                seen[key] += 1
            else:
                seen[key] = 1
        if errors:
            raise ConfigError(errors)
    return data


def load_json(text, board=None):
    """Config from the text of v2g_vars.json (missing keys take defaults)."""
    return validate(parse(text), None, board)


def members(text):
    """[(key, value text, index)] of the top-level object in text, in order, duplicates
    included. Tolerant: on text that is not JSON it returns the members it could delimit (a
    member cut off by the end of the text is left out) and never raises."""
    out = []
    i = 0
    n = len(text)
    while i < n and text[i] in ' \t\r\n':
        i += 1
    if i >= n or text[i] != '{':
        return out
    depth = 0
    key = None
    start = -1
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            if j >= n:
                break
            if depth == 1 and start < 0:
                try:
                    key = json.loads(text[i:j + 1])
                except ValueError:
                    key = None
            i = j + 1
            continue
        if c == '{' or c == '[':
            depth += 1
        elif c == '}' or c == ']':
            depth -= 1
            if depth == 0:
                if start >= 0 and key is not None:
                    out.append((key, text[start:i].strip(), start))
                break
        elif depth == 1 and c == ':' and start < 0:
            start = i + 1
        elif depth == 1 and c == ',':
            if start >= 0 and key is not None:
                out.append((key, text[start:i].strip(), start))
            key, start = None, -1
        i += 1
    return out


def steps(v, scale):
    """(n, exact): v as a whole number n of steps of 1/scale, and whether v is that step within
    this interpreter's float precision (74.9999999 is not a 0.1 step on a double, 0.036 is)."""
    if not isinstance(v, float):
        return v * scale, True
    neg = v < 0
    if neg:
        v = -v
    whole = int(v)
    frac = (v - whole) * scale     # v - whole is exact; only the fraction is multiplied
    k = int(frac + 0.5)
    off = frac - k
    if off < 0:
        off = -off
    n = whole * scale + k
    exact = off <= (whole * scale + frac) * _STEP_TOL
    return (-n if neg else n), exact


def dec_text(n, scale):
    """The exact decimal text of n steps of 1/scale (scale a power of ten): 749, 10 -> '74.9'."""
    sign = '-' if n < 0 else ''
    if n < 0:
        n = -n
    whole, frac = n // scale, n % scale
    if not frac:
        return sign + str(whole)
    digits = len(str(scale)) - 1
    t = str(frac)
    t = '0' * (digits - len(t)) + t
    return sign + str(whole) + '.' + t.rstrip('0')


def on_step(n, scale):
    """The JSON value of n steps: an integer when whole, else the float its decimal text reads
    as on this interpreter (the same float the file gives back at the next boot)."""
    if n % scale == 0:
        return n // scale
    return float(dec_text(n, scale))


def _milli(values, key):
    """A decimal setting in its control units (mA, dC, ms, ...): its whole number of steps."""
    v = values[key]
    return None if v is None else steps(v, scale(key))[0]


class Config:
    """A validated settings set. Treat as immutable: changes go through validate()."""

    def __init__(self, values, board=None):
        self.values = values
        self.board = board
        v = values
        self.max_charge_ma = _milli(v, 'MAX_CHARGE_AMPS')
        self.max_discharge_ma = _milli(v, 'MAX_DISCHARGE_AMPS')
        self.min_soc_pm = _milli(v, 'MIN_SOC_THRESHOLD')
        self.reserve_pm = _milli(v, 'RESERVE_MARGIN')
        self.floor_pm = self.min_soc_pm if self.min_soc_pm > self.reserve_pm else self.reserve_pm
        self.available_margin_pm = _milli(v, 'V2G_AVAILABLE_MARGIN')
        self.heartbeat_timeout_ms = _milli(v, 'HEARTBEAT_TIMEOUT_S')
        self.phases = v['PHASES']
        self.nominal_mv = _milli(v, 'NOMINAL_VOLTAGE_V')
        self.grid_profile = v['GRID_PROFILE']
        # the profile's own table (made for this and let go: no dict kept at import)
        self.nominal_mhz = grid_profiles.profile(v['GRID_PROFILE'])['nominal_mhz']
        self.droop_enabled = v['FREQ_DROOP_ENABLED']
        self.deadband_mhz = _milli(v, 'FREQ_DEADBAND_HZ')
        self.droop_mpct = _milli(v, 'FREQ_DROOP_PCT')   # 0.001 % units
        self.response_ms = _milli(v, 'FREQ_RESPONSE_S')
        self.evse_derate_dc = _milli(v, 'EVSE_TEMP_DERATE_C')
        self.evse_limit_dc = _milli(v, 'EVSE_TEMP_LIMIT_C')
        self.batt_derate_dc = _milli(v, 'BATTERY_TEMP_DERATE_C')
        self.batt_limit_dc = _milli(v, 'BATTERY_TEMP_LIMIT_C')
        self.hysteresis_dc = _milli(v, 'THERMAL_HYSTERESIS_C')
        self.ventilation = v['VENTILATION_AVAILABLE']
        self.meter_model = v['METER_MODEL']
        self.meter_address = v['METER_ADDRESS']
        self.meter_baud = v['METER_BAUD']
        self.meter_poll_ms = v['METER_POLL_MS']
        self.meter_stale_ms = _milli(v, 'METER_STALE_S')
        self.can_bitrate = v['CAN_BITRATE']
        self.can_timeout_ms = v['CAN_TIMEOUT_MS']
        self.latency_warn_ms = v['HOST_LATENCY_WARN_MS']
        self.grid_enter_service_ms = _milli(v, 'GRID_ENTER_SERVICE_DELAY_S')
        self.grid_ramp_ms = _milli(v, 'GRID_RAMP_S')
        self.cooling = not board or board.get(BOARD_COOLING, True) is not False
        self.cooling_on_ma = _milli(v, 'COOLING_ON_AMPS')
        self.cooling_on_dc = _milli(v, 'COOLING_ON_TEMP_C')
        self.cooling_feedback_ms = _milli(v, 'COOLING_FEEDBACK_S')
        self.cooling_uncooled_ma = _milli(v, 'COOLING_UNCOOLED_AMPS')

    def notes(self, step_ms=50):
        """Warnings, as text, about settings that are taken but do less than they read: grid
        stages the meter's sampling (METER_MODEL, METER_BAUD) cannot meet from the grid step,
        fast stages decided on one reading, a snapshot slower than METER_POLL_MS, a droop or
        deadband outside the profile's range (applied clamped). [] when none. Not refusals:
        docs/settings.md."""
        from core.grid import config_notes   # here: config itself stays free of the grid code
        notes = config_notes(self, step_ms)
        if not self.cooling:
            notes.append(NOTE_NO_COOLING)
        return notes

    def get(self, key):
        return self.values[key]

    def __getitem__(self, key):
        return self.values[key]

    def to_json(self):
        """The settings as a plain dict of JSON values (a copy)."""
        return dict(self.values)

    def dumps(self):
        """Canonical JSON text (sorted keys, no spaces): the file and the hash input."""
        return canonical(self.values)

    def config_hash(self):
        return config_hash(self.values)

    def diff(self, other):
        """Keys whose value differs from other (a Config)."""
        return [k for k in KEYS if self.values[k] != other.values[k]]


def _num_text(key, v):
    # identical text on CPython (doubles) and single-precision boards: a decimal key is written
    # as its whole number of steps, so the text is exact and parses back to the same step
    sc = scale(key)
    if sc:
        return dec_text(steps(v, sc)[0], sc)
    if isinstance(v, float):
        if v == int(v):
            return str(int(v))
        return repr(v)   # not a setting's value (never written by the controller); still JSON
    return str(v)


def canonical(values):
    parts = []
    for k in sorted(values):
        v = values[k]
        if v is None:
            continue   # an unset optional key: same text (and hash) as a file without it
        if v is True:
            t = 'true'
        elif v is False:
            t = 'false'
        elif isinstance(v, str):
            t = json.dumps(v)
        else:
            t = _num_text(k, v)
        parts.append(json.dumps(k) + ':' + t)
    return '{' + ','.join(parts) + '}'


def config_hash(values):
    """First 16 hex digits of sha256 over the canonical JSON of the settings."""
    h = hashlib.sha256(canonical(values).encode())
    d = h.digest()
    return ''.join('%02x' % b for b in d[:8])
