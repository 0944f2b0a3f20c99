"""Error codes of the station (shared spec errors.md, version 2).

Each code is one bit of an int mask so the control step can carry the set of
active codes without allocating. Bit numbers are fixed: telemetry and logs
decode a mask with CODES.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

E009 = const(1 << 0)   # thermal limit (EVSE or battery)
E010 = const(1 << 1)   # control pilot fault (E, F, diode, unknown level)
E011 = const(1 << 2)   # contactor welded or fails to close
E012 = const(1 << 3)   # ventilation asked (state D) and not available
E101 = const(1 << 4)   # host heartbeat lost
E110 = const(1 << 5)   # high host latency / command past deadline
E120 = const(1 << 6)   # meter stale
E130 = const(1 << 7)   # VCU/BMS CAN frames missing
E140 = const(1 << 8)   # handshake timeout
E301 = const(1 << 9)   # V2G unavailable (SoC below floor + margin)
E400 = const(1 << 10)  # invalid command or configuration
E401 = const(1 << 11)  # unauthorized
E503 = const(1 << 12)  # grid over-voltage
E504 = const(1 << 13)  # grid under-voltage
E505 = const(1 << 14)  # grid over-frequency
E506 = const(1 << 15)  # grid under-frequency
E507 = const(1 << 16)  # waiting to (re-)enter service
E601 = const(1 << 17)  # update rejected: signature/manifest/board/digest
E602 = const(1 << 18)  # update rejected: rollback
E603 = const(1 << 19)  # trial boot failed, reverted
E013 = const(1 << 20)  # cooling fault: commanded, no feedback
E020 = const(1 << 21)  # stored state damaged (a file read at boot)
E021 = const(1 << 22)  # storage full or a write failed
E604 = const(1 << 23)  # the confirmed firmware failed to start: fell back
E150 = const(1 << 24)  # high-level communication (ISO 15118) failed or timed out

# index = bit number
CODES = (
    'V2G-009', 'V2G-010', 'V2G-011', 'V2G-012', 'V2G-101', 'V2G-110', 'V2G-120',
    'V2G-130', 'V2G-140', 'V2G-301', 'V2G-400', 'V2G-401', 'V2G-503', 'V2G-504',
    'V2G-505', 'V2G-506', 'V2G-507', 'V2G-601', 'V2G-602', 'V2G-603',
    'V2G-013', 'V2G-020', 'V2G-021', 'V2G-604', 'V2G-150',
)

TEXT = (
    'thermal limit',
    'control pilot fault',
    'contactor fault',
    'ventilation not available',
    'host heartbeat lost',
    'high latency',
    'meter stale',
    'VCU/BMS CAN frames missing',
    'handshake timeout',
    'V2G unavailable',
    'invalid command or configuration',
    'unauthorized',
    'grid over-voltage',
    'grid under-voltage',
    'grid over-frequency',
    'grid under-frequency',
    'waiting to enter service',
    'update rejected',
    'update rejected: rollback',
    'trial boot failed',
    'cooling fault',
    'stored state damaged',
    'storage full or write failed',
    'confirmed firmware failed to start',
    'high-level communication failed',
)

# 24 bits: the width of the CAN frame's Errors signal; V2G-150 (bit 24) is not on CAN, it is in
# telemetry and the event log (the gateway that runs the ISO 15118 session knows it anyway)
ALL = const((1 << 24) - 1)


def code(bit):
    """'V2G-xxx' for a single-bit mask; ValueError for anything else."""
    for i in range(len(CODES)):
        if bit == (1 << i):
            return CODES[i]
    raise ValueError('not a single error bit: {}'.format(bit))


def bit(code_text):
    """Single-bit mask for 'V2G-xxx' (or 'xxx'); ValueError when unknown."""
    if not code_text.startswith('V2G-'):
        code_text = 'V2G-' + code_text
    for i in range(len(CODES)):
        if CODES[i] == code_text:
            return 1 << i
    raise ValueError('unknown error code: {}'.format(code_text))


def text(code_text):
    """Short meaning of a code."""
    return TEXT[_index(bit(code_text))]


def _index(b):
    i = 0
    while b > 1:
        b >>= 1
        i += 1
    return i


def active(mask):
    """List of 'V2G-xxx' codes set in mask, lowest bit first."""
    out = []
    for i in range(len(CODES)):
        if mask & (1 << i):
            out.append(CODES[i])
    return out


def mask_of(codes):
    """Mask from an iterable of codes (inverse of active())."""
    m = 0
    for c in codes:
        m |= bit(c)
    return m
