"""The status LED: one pattern for what the station is doing (docs/status-led.md).

Pure: select() maps the controller's mode, its active error codes and whether an update is
in progress to a pattern; level() gives that pattern's brightness at a given millisecond.
The HAL drives the LED with them (an on/off LED is lit while the level is at least
_ON_LEVEL); telemetry and the simulator's timeline carry the pattern's name. Nothing here
allocates.

Priority, highest first: fault (red), update in progress (cyan), host link trouble
(flashing amber: heartbeats lost, V2G-101, or round trip too long, V2G-110), then the mode.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import errors as E

IDLE = const(0)          # solid green: ready, no vehicle
_CONNECTED = const(1)     # green, slow blink: vehicle connected, no energy flowing
CHARGING = const(2)      # green, breathing
DISCHARGING = const(3)   # blue, breathing
CHARGE_ONLY = const(4)   # solid amber: charge-only (the host's fallback or its command)
FAULT = const(5)         # red, fast blink
UPDATE = const(6)        # cyan, blink
LINK = const(7)          # amber flashes: host link loss or high latency
NAMES = ('idle', 'connected', 'charging', 'discharging', 'charge_only', 'fault', 'update', 'link')

_GREEN = const(0)
_BLUE = const(1)
_AMBER = const(2)
RED = const(3)
_CYAN = const(4)
COLORS = ('green', 'blue', 'amber', 'red', 'cyan')

_SOLID = const(0)
_BLINK = const(1)          # on for ON_MS of every PERIOD_MS
_BREATHE = const(2)        # brightness up and down over PERIOD_MS
SHAPES = ('solid', 'blink', 'breathe')

_ON_LEVEL = const(500)     # per-mille brightness from which an on/off LED is lit

# Per pattern (idle, connected, charging, discharging, charge_only, fault, update, link):
# colour, shape, period and on-time (blink), the times in 10 ms. bytes literals: a constant
# stays in flash when frozen (bytes((...)) would be built in RAM at import), and indexing
# one never allocates (docs/status-led.md).
#   COLOR        green green green blue amber red cyan amber    (_GREEN.._CYAN: 0..4)
#   SHAPE        solid blink breathe breathe solid blink blink blink   (0..2)
#   PERIOD_10MS  100 200 200 200 100 25 100 50
#   ON_10MS      100 100 0 0 100 13 50 15
COLOR = b'\x00\x00\x00\x01\x02\x03\x04\x02'
SHAPE = b'\x00\x01\x02\x02\x00\x01\x01\x01'
PERIOD_10MS = b'\x64\xc8\xc8\xc8\x64\x19\x64\x32'
ON_10MS = b'\x64\x64\x00\x00\x64\x0d\x32\x0f'

_LINK_CODES = E.E101 | E.E110


def select(mode, errors, update_busy):
    """Pattern for the controller's mode (Outputs.mode), its error mask and the update state."""
    if mode == 'fault':
        return FAULT
    if update_busy:
        return UPDATE
    if errors & _LINK_CODES:
        return LINK
    if mode == 'charge_only':
        return CHARGE_ONLY
    if mode == 'charging':
        return CHARGING
    if mode == 'discharging':
        return DISCHARGING
    if mode == 'idle':
        return IDLE
    return _CONNECTED          # connected, paused


def level(pattern, now_ms):
    """Brightness of pattern at now_ms, per-mille (0 off .. 1000 full)."""
    shape = SHAPE[pattern]
    if shape == _SOLID:
        return 1000
    period = PERIOD_10MS[pattern] * 10
    ph = now_ms % period
    if shape == _BLINK:
        return 1000 if ph < ON_10MS[pattern] * 10 else 0
    half = period // 2
    if ph < half:
        return ph * 1000 // half
    return (period - ph) * 1000 // half


def lit(pattern, now_ms):
    """On or off, for an LED without dimming."""
    return level(pattern, now_ms) >= _ON_LEVEL
