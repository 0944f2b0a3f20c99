"""CAN codec for the 0x600-series VCU/BMS frames (GENERATED, do not edit).

Source: firmware/can/v2g.dbc; generator: host_tools/gen_can.py. Pure: ints only,
byte arithmetic, no allocation once the objects exist.
"""

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import ticks

VCU_POWER_REQUEST_ID = const(0x600)
BMS_STATUS_ID = const(0x601)
BMS_LIMITS_ID = const(0x602)
BMS_INFO_ID = const(0x603)
EVSE_STATUS_ID = const(0x610)
EVSE_LIMITS_ID = const(0x611)

VCU_POWER_REQUEST_CYCLE_MS = const(100)
BMS_STATUS_CYCLE_MS = const(100)
_BMS_LIMITS_CYCLE_MS = const(100)
BMS_INFO_CYCLE_MS = const(1000)
_EVSE_STATUS_CYCLE_MS = const(100)
_EVSE_LIMITS_CYCLE_MS = const(100)

REQ_MODE_IDLE = const(0)
REQ_MODE_CHARGE = const(1)
REQ_MODE_DISCHARGE = const(2)
REQ_MODE_STOP = const(3)
_REQ_MODE_NAMES = const((
    "idle",
    "charge",
    "discharge",
    "stop",
))

_CP_STATE_A = const(0)
_CP_STATE_B = const(1)
CP_STATE_C = const(2)
_CP_STATE_D = const(3)
_CP_STATE_E = const(4)
CP_STATE_F = const(5)
CP_STATE_NAMES = (
    "A",
    "B",
    "C",
    "D",
    "E",
    "F",
)

_MODE_IDLE = const(0)
_MODE_CONNECTED = const(1)
_MODE_CHARGING = const(2)
_MODE_DISCHARGING = const(3)
_MODE_PAUSED = const(4)
MODE_CHARGE_ONLY = const(5)
MODE_FAULT = const(6)
MODE_NAMES = (
    "idle",
    "connected",
    "charging",
    "discharging",
    "paused",
    "charge_only",
    "fault",
)

_LIMIT_CHARGE_SRC_NONE = const(0)
LIMIT_CHARGE_SRC_STATION = const(1)
_LIMIT_CHARGE_SRC_CABLE = const(2)
LIMIT_CHARGE_SRC_BMS = const(3)
_LIMIT_CHARGE_SRC_THERMAL = const(4)
_LIMIT_CHARGE_SRC_GRID = const(5)
_LIMIT_CHARGE_SRC_CSMS = const(6)
_LIMIT_CHARGE_SRC_SETPOINT = const(7)
_LIMIT_CHARGE_SRC_HEARTBEAT = const(8)
_LIMIT_CHARGE_SRC_METER = const(9)
_LIMIT_CHARGE_SRC_CAN = const(10)
_LIMIT_CHARGE_SRC_FLOOR = const(11)
_LIMIT_CHARGE_SRC_CHARGE_ONLY = const(12)
_LIMIT_CHARGE_SRC_FAULT = const(13)
_LIMIT_CHARGE_SRC_PILOT = const(14)
_LIMIT_CHARGE_SRC_COOLING = const(15)
LIMIT_CHARGE_SRC_NAMES = (
    "none",
    "station",
    "cable",
    "bms",
    "thermal",
    "grid",
    "csms",
    "setpoint",
    "heartbeat",
    "meter",
    "can",
    "floor",
    "charge_only",
    "fault",
    "pilot",
    "cooling",
)

_LIMIT_DISCHARGE_SRC_NONE = const(0)
_LIMIT_DISCHARGE_SRC_STATION = const(1)
_LIMIT_DISCHARGE_SRC_CABLE = const(2)
_LIMIT_DISCHARGE_SRC_BMS = const(3)
_LIMIT_DISCHARGE_SRC_THERMAL = const(4)
_LIMIT_DISCHARGE_SRC_GRID = const(5)
LIMIT_DISCHARGE_SRC_CSMS = const(6)
_LIMIT_DISCHARGE_SRC_SETPOINT = const(7)
_LIMIT_DISCHARGE_SRC_HEARTBEAT = const(8)
_LIMIT_DISCHARGE_SRC_METER = const(9)
_LIMIT_DISCHARGE_SRC_CAN = const(10)
_LIMIT_DISCHARGE_SRC_FLOOR = const(11)
_LIMIT_DISCHARGE_SRC_CHARGE_ONLY = const(12)
_LIMIT_DISCHARGE_SRC_FAULT = const(13)
_LIMIT_DISCHARGE_SRC_PILOT = const(14)
_LIMIT_DISCHARGE_SRC_COOLING = const(15)
_LIMIT_DISCHARGE_SRC_NAMES = const((
    "none",
    "station",
    "cable",
    "bms",
    "thermal",
    "grid",
    "csms",
    "setpoint",
    "heartbeat",
    "meter",
    "can",
    "floor",
    "charge_only",
    "fault",
    "pilot",
    "cooling",
))


def checksum(d, can_id):
    """Byte 7: 0xFF XOR low byte of (sum of bytes 0..6 + id low byte + id high byte)."""
    s = (can_id & 0xFF) + (can_id >> 8)
    for i in range(7):
        s += d[i]
    return (s & 0xFF) ^ 0xFF



class VcuPowerRequest:
    """0x600 VCU_PowerRequest, DLC 8, every 100 ms."""

    def __init__(self):
        self.req_current_ma = 0
        self.req_mode = 0
        self.contactor_closed = 0
        self.counter = 0


def unpack_vcu_power_request(d, o):
    """Decode d[0:8] into o. False (o unchanged) if a value is outside the DBC range."""
    r0 = d[0] | (d[1] << 8)
    if r0 & 0x8000:
        r0 -= 0x10000
    r1 = (d[2] & 0xF)
    r2 = ((d[2] >> 4) & 0x1)
    r3 = (d[6] & 0xF)
    o.req_current_ma = r0 * 100
    o.req_mode = r1
    o.contactor_closed = r2
    o.counter = r3
    return True


def pack_vcu_power_request(o, d):
    """Encode o into d[0:8], rounding to the DBC resolution and saturating at
    its range; returns how many values were saturated."""
    for i in range(8):
        d[i] = 0
    n = 0
    r = (o.req_current_ma + 50) // 100
    if r < -32768:
        r = -32768
        n += 1
    elif r > 32767:
        r = 32767
        n += 1
    r &= 0xFFFF
    d[0] |= (r & 0xFF)
    d[1] |= ((r >> 8) & 0xFF)
    r = o.req_mode
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[2] |= (r & 0xF)
    r = o.contactor_closed
    if r < 0:
        r = 0
        n += 1
    elif r > 1:
        r = 1
        n += 1
    d[2] |= ((r & 0x1) << 4)
    r = o.counter
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[6] |= (r & 0xF)
    d[7] = checksum(d, 0x600)
    return n


class BmsStatus:
    """0x601 BMS_Status, DLC 8, every 100 ms."""

    def __init__(self):
        self.soc_pm = 0
        self.counter = 0
        self.pack_voltage_mv = 0
        self.pack_current_ma = 0
        self.temp_max_dc = 0


def unpack_bms_status(d, o):
    """Decode d[0:8] into o. False (o unchanged) if a value is outside the DBC range."""
    r0 = d[0] | ((d[1] & 0x3) << 8)
    r1 = (d[1] >> 4)
    r2 = d[2] | (d[3] << 8)
    r3 = d[4] | (d[5] << 8)
    if r3 & 0x8000:
        r3 -= 0x10000
    r4 = d[6]
    if r0 > 1000 or r2 > 10000:
        return False
    o.soc_pm = r0
    o.counter = r1
    o.pack_voltage_mv = r2 * 100
    o.pack_current_ma = r3 * 100
    o.temp_max_dc = r4 * 10 - 400
    return True


def pack_bms_status(o, d):
    """Encode o into d[0:8], rounding to the DBC resolution and saturating at
    its range; returns how many values were saturated."""
    for i in range(8):
        d[i] = 0
    n = 0
    r = o.soc_pm
    if r < 0:
        r = 0
        n += 1
    elif r > 1000:
        r = 1000
        n += 1
    d[0] |= (r & 0xFF)
    d[1] |= ((r >> 8) & 0x3)
    r = o.counter
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[1] |= ((r & 0xF) << 4)
    r = (o.pack_voltage_mv + 50) // 100
    if r < 0:
        r = 0
        n += 1
    elif r > 10000:
        r = 10000
        n += 1
    d[2] |= (r & 0xFF)
    d[3] |= ((r >> 8) & 0xFF)
    r = (o.pack_current_ma + 50) // 100
    if r < -32768:
        r = -32768
        n += 1
    elif r > 32767:
        r = 32767
        n += 1
    r &= 0xFFFF
    d[4] |= (r & 0xFF)
    d[5] |= ((r >> 8) & 0xFF)
    r = (o.temp_max_dc + 400 + 5) // 10
    if r < 0:
        r = 0
        n += 1
    elif r > 255:
        r = 255
        n += 1
    d[6] |= (r & 0xFF)
    d[7] = checksum(d, 0x601)
    return n


class BmsLimits:
    """0x602 BMS_Limits, DLC 8, every 100 ms."""

    def __init__(self):
        self.max_charge_current_ma = 0
        self.max_discharge_current_ma = 0
        self.fault_bits = 0
        self.temp_min_dc = 0
        self.counter = 0


def unpack_bms_limits(d, o):
    """Decode d[0:8] into o. False (o unchanged) if a value is outside the DBC range."""
    r0 = d[0] | (d[1] << 8)
    r1 = d[2] | (d[3] << 8)
    r2 = d[4]
    r3 = d[5]
    r4 = (d[6] & 0xF)
    o.max_charge_current_ma = r0 * 100
    o.max_discharge_current_ma = r1 * 100
    o.fault_bits = r2
    o.temp_min_dc = r3 * 10 - 400
    o.counter = r4
    return True


def pack_bms_limits(o, d):
    """Encode o into d[0:8], rounding to the DBC resolution and saturating at
    its range; returns how many values were saturated."""
    for i in range(8):
        d[i] = 0
    n = 0
    r = (o.max_charge_current_ma + 50) // 100
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[0] |= (r & 0xFF)
    d[1] |= ((r >> 8) & 0xFF)
    r = (o.max_discharge_current_ma + 50) // 100
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[2] |= (r & 0xFF)
    d[3] |= ((r >> 8) & 0xFF)
    r = o.fault_bits
    if r < 0:
        r = 0
        n += 1
    elif r > 255:
        r = 255
        n += 1
    d[4] |= (r & 0xFF)
    r = (o.temp_min_dc + 400 + 5) // 10
    if r < 0:
        r = 0
        n += 1
    elif r > 255:
        r = 255
        n += 1
    d[5] |= (r & 0xFF)
    r = o.counter
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[6] |= (r & 0xF)
    d[7] = checksum(d, 0x602)
    return n


class BmsInfo:
    """0x603 BMS_Info, DLC 8, every 1000 ms."""

    def __init__(self):
        self.capacity_wh = 0
        self.cell_volt_min_mv = 0
        self.cell_volt_max_mv = 0
        self.soh_pm = 0


def unpack_bms_info(d, o):
    """Decode d[0:8] into o. False (o unchanged) if a value is outside the DBC range."""
    r0 = d[0] | (d[1] << 8)
    r1 = d[2] | (d[3] << 8)
    r2 = d[4] | (d[5] << 8)
    r3 = d[6]
    o.capacity_wh = r0 * 10
    o.cell_volt_min_mv = r1
    o.cell_volt_max_mv = r2
    o.soh_pm = r3 * 5
    return True


def pack_bms_info(o, d):
    """Encode o into d[0:8], rounding to the DBC resolution and saturating at
    its range; returns how many values were saturated."""
    for i in range(8):
        d[i] = 0
    n = 0
    r = (o.capacity_wh + 5) // 10
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[0] |= (r & 0xFF)
    d[1] |= ((r >> 8) & 0xFF)
    r = o.cell_volt_min_mv
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[2] |= (r & 0xFF)
    d[3] |= ((r >> 8) & 0xFF)
    r = o.cell_volt_max_mv
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[4] |= (r & 0xFF)
    d[5] |= ((r >> 8) & 0xFF)
    r = (o.soh_pm + 2) // 5
    if r < 0:
        r = 0
        n += 1
    elif r > 255:
        r = 255
        n += 1
    d[6] |= (r & 0xFF)
    return n


class EvseStatus:
    """0x610 EVSE_Status, DLC 8, every 100 ms."""

    def __init__(self):
        self.cp_state = 0
        self.mode = 0
        self.contactor = 0
        self.counter = 0
        self.pwm_duty_pm = 0
        self.errors = 0


def unpack_evse_status(d, o):
    """Decode d[0:8] into o. False (o unchanged) if a value is outside the DBC range."""
    r0 = (d[0] & 0xF)
    r1 = (d[0] >> 4)
    r2 = (d[1] & 0x1)
    r3 = (d[1] >> 4)
    r4 = d[2] | ((d[3] & 0x3) << 8)
    r5 = d[4] | (d[5] << 8) | (d[6] << 16)
    if r4 > 1000:
        return False
    o.cp_state = r0
    o.mode = r1
    o.contactor = r2
    o.counter = r3
    o.pwm_duty_pm = r4
    o.errors = r5
    return True


def pack_evse_status(o, d):
    """Encode o into d[0:8], rounding to the DBC resolution and saturating at
    its range; returns how many values were saturated."""
    for i in range(8):
        d[i] = 0
    n = 0
    r = o.cp_state
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[0] |= (r & 0xF)
    r = o.mode
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[0] |= ((r & 0xF) << 4)
    r = o.contactor
    if r < 0:
        r = 0
        n += 1
    elif r > 1:
        r = 1
        n += 1
    d[1] |= (r & 0x1)
    r = o.counter
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[1] |= ((r & 0xF) << 4)
    r = o.pwm_duty_pm
    if r < 0:
        r = 0
        n += 1
    elif r > 1000:
        r = 1000
        n += 1
    d[2] |= (r & 0xFF)
    d[3] |= ((r >> 8) & 0x3)
    r = o.errors
    if r < 0:
        r = 0
        n += 1
    elif r > 16777215:
        r = 16777215
        n += 1
    d[4] |= (r & 0xFF)
    d[5] |= ((r >> 8) & 0xFF)
    d[6] |= ((r >> 16) & 0xFF)
    d[7] = checksum(d, 0x610)
    return n


class EvseLimits:
    """0x611 EVSE_Limits, DLC 8, every 100 ms."""

    def __init__(self):
        self.limit_charge_ma = 0
        self.limit_discharge_ma = 0
        self.limit_charge_src = 0
        self.limit_discharge_src = 0
        self.meter_current_ma = 0
        self.counter = 0


def unpack_evse_limits(d, o):
    """Decode d[0:8] into o. False (o unchanged) if a value is outside the DBC range."""
    r0 = d[0] | (d[1] << 8)
    r1 = d[2] | (d[3] << 8)
    r2 = (d[4] & 0xF)
    r3 = (d[4] >> 4)
    r4 = d[5] | (d[6] << 8)
    if r4 & 0x8000:
        r4 -= 0x10000
    r5 = (d[7] & 0xF)
    o.limit_charge_ma = r0 * 100
    o.limit_discharge_ma = r1 * 100
    o.limit_charge_src = r2
    o.limit_discharge_src = r3
    o.meter_current_ma = r4 * 100
    o.counter = r5
    return True


def pack_evse_limits(o, d):
    """Encode o into d[0:8], rounding to the DBC resolution and saturating at
    its range; returns how many values were saturated."""
    for i in range(8):
        d[i] = 0
    n = 0
    r = (o.limit_charge_ma + 50) // 100
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[0] |= (r & 0xFF)
    d[1] |= ((r >> 8) & 0xFF)
    r = (o.limit_discharge_ma + 50) // 100
    if r < 0:
        r = 0
        n += 1
    elif r > 65535:
        r = 65535
        n += 1
    d[2] |= (r & 0xFF)
    d[3] |= ((r >> 8) & 0xFF)
    r = o.limit_charge_src
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[4] |= (r & 0xF)
    r = o.limit_discharge_src
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[4] |= ((r & 0xF) << 4)
    r = (o.meter_current_ma + 50) // 100
    if r < -32768:
        r = -32768
        n += 1
    elif r > 32767:
        r = 32767
        n += 1
    r &= 0xFFFF
    d[5] |= (r & 0xFF)
    d[6] |= ((r >> 8) & 0xFF)
    r = o.counter
    if r < 0:
        r = 0
        n += 1
    elif r > 15:
        r = 15
        n += 1
    d[7] |= (r & 0xF)
    return n


class CanStats:
    def __init__(self):
        self.rx_ok = 0
        self.unknown_id = 0
        self.bad_dlc = 0
        self.bad_checksum = 0
        self.bad_range = 0
        self.counter_repeat = 0
        self.counter_skip = 0
        self.tx = 0
        self.saturated = 0


class CanRx:
    """Frames the vehicle sends. feed() checks and decodes into the objects below;
    a rejected frame is counted and changes nothing. last_ms[i] is when message i
    (index in RX_IDS) was last accepted, -1 before the first."""

    RX_IDS = (BMS_STATUS_ID, BMS_LIMITS_ID, BMS_INFO_ID,)

    def __init__(self, stats=None):
        self.stats = stats if stats is not None else CanStats()
        self.bms_status = BmsStatus()
        self.bms_limits = BmsLimits()
        self.bms_info = BmsInfo()
        self.last_ms = [-1] * 3
        self.last_counter = [-1] * 3

    def feed(self, can_id, d, n, now_ms):
        """Returns the accepted id, or 0 when the frame was rejected."""
        st = self.stats
        if can_id == BMS_STATUS_ID:
            if n != 8:
                st.bad_dlc += 1
                return 0
            if d[7] != checksum(d, BMS_STATUS_ID):
                st.bad_checksum += 1
                return 0
            c = (d[1] >> 4)
            last = self.last_counter[0]
            if c == last:
                st.counter_repeat += 1  # a stuck sender repeats its frame
                return 0
            if not unpack_bms_status(d, self.bms_status):
                st.bad_range += 1
                return 0
            if last >= 0 and c != (last + 1) & 15:
                st.counter_skip += 1
            self.last_counter[0] = c
            self.last_ms[0] = now_ms
            st.rx_ok += 1
            return can_id
        elif can_id == BMS_LIMITS_ID:
            if n != 8:
                st.bad_dlc += 1
                return 0
            if d[7] != checksum(d, BMS_LIMITS_ID):
                st.bad_checksum += 1
                return 0
            c = (d[6] & 0xF)
            last = self.last_counter[1]
            if c == last:
                st.counter_repeat += 1  # a stuck sender repeats its frame
                return 0
            if not unpack_bms_limits(d, self.bms_limits):
                st.bad_range += 1
                return 0
            if last >= 0 and c != (last + 1) & 15:
                st.counter_skip += 1
            self.last_counter[1] = c
            self.last_ms[1] = now_ms
            st.rx_ok += 1
            return can_id
        elif can_id == BMS_INFO_ID:
            if n != 8:
                st.bad_dlc += 1
                return 0
            if not unpack_bms_info(d, self.bms_info):
                st.bad_range += 1
                return 0
            self.last_ms[2] = now_ms
            st.rx_ok += 1
            return can_id
        st.unknown_id += 1
        return 0

    def age_ms(self, i, now_ms):
        """ms since RX_IDS[i] was last accepted; very large if never.

        Ticks wrap at 2**30 (time.ticks_ms), so the age is taken modulo 2**30. An age
        beyond 2**29 is not believable (a stamp from the future, or silence long enough
        to come round again): the message then counts as never received, for good,
        so a BMS silent for days cannot look fresh after the wrap."""
        t = self.last_ms[i]
        if t < 0:
            return ticks.NEVER
        d = ticks.age(now_ms, t)
        if d == ticks.NEVER:
            self.last_ms[i] = -1
        return d


class CanTx:
    """Frames the controller sends: fill the object, then frame_<name>(buf) packs it
    with the next rolling counter and returns the DLC (the id is <NAME>_ID)."""

    def __init__(self, stats=None):
        self.stats = stats if stats is not None else CanStats()
        self.vcu_power_request = VcuPowerRequest()
        self.evse_status = EvseStatus()
        self.evse_limits = EvseLimits()

    def frame_vcu_power_request(self, d):
        o = self.vcu_power_request
        c = o.counter
        self.stats.saturated += pack_vcu_power_request(o, d)
        o.counter = (c + 1) & 15
        self.stats.tx += 1
        return 8

    def frame_evse_status(self, d):
        o = self.evse_status
        c = o.counter
        self.stats.saturated += pack_evse_status(o, d)
        o.counter = (c + 1) & 15
        self.stats.tx += 1
        return 8

    def frame_evse_limits(self, d):
        o = self.evse_limits
        c = o.counter
        self.stats.saturated += pack_evse_limits(o, d)
        o.counter = (c + 1) & 15
        self.stats.tx += 1
        return 8
