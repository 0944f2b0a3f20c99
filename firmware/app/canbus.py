"""The CAN task: BMS frames in, the controller's frames out, through the HAL's CAN port.

Called from the station tick: `receive()` before the control step (fills the BMS
Inputs), `transmit()` after it (0x600 VCU_PowerRequest, 0x610 EVSE_Status, 0x611
EVSE_Limits every 100 ms). The generated codec (core/can_msgs.py) checks every frame:
wrong DLC, bad checksum, stuck counter, out-of-range values and unknown ids are counted
and change nothing. The HAL's port:

    can.open(bitrate)
    can.send(can_id, buf, dlc)   # False when the controller's transmit queue is full
    can.recv(buf)                # dlc of the next received frame (data in buf), -1 if none;
                                 # its id in can.rx_id, can.rx_ext True for a 29-bit id
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import can_msgs as M
from core import ticks

_NEVER = ticks.NEVER
_MAX_RX_PER_STEP = const(32)         # frames drained per step; the rest wait for the next one


_STEP_MA = const(100)   # the DBC's 0.1 A resolution of ReqCurrent and the limit signals


def _toward_zero(ma):
    """What the vehicle is asked or allowed, cut to the wire's resolution toward zero: the
    codec rounds to nearest, which could ask up to 50 mA more than the controller decided."""
    if ma >= 0:
        return ma - ma % _STEP_MA
    return -((-ma) - (-ma) % _STEP_MA)


class CanTask:
    def __init__(self, port, cfg):
        self.port = port
        self.stats = M.CanStats()
        self.rx = M.CanRx(self.stats)
        self.tx = M.CanTx(self.stats)
        self.buf = bytearray(8)
        self.txbuf = bytearray(8)
        self.cfg = cfg
        self.next_tx_ms = None
        self.rx_frames = 0
        self.ext_frames = 0       # 29-bit frames: not ours, counted apart from unknown 11-bit ids
        self.tx_full = 0          # frames the port refused (transmit queue full, bus off)
        self.bms_faults = 0       # accepted BMS_Limits frames with fault bits set
        self.port.open(cfg.can_bitrate)

    def receive(self, now_ms, inputs, cfg):
        if cfg is not self.cfg:
            if cfg.can_bitrate != self.cfg.can_bitrate:
                self.port.open(cfg.can_bitrate)
            self.cfg = cfg
        port = self.port
        rx = self.rx
        for _ in range(_MAX_RX_PER_STEP):
            n = port.recv(self.buf)
            if n < 0:
                break
            self.rx_frames += 1
            if port.rx_ext:
                self.ext_frames += 1
                continue
            if rx.feed(port.rx_id, self.buf, n, now_ms) == M.BMS_LIMITS_ID and rx.bms_limits.fault_bits:
                self.bms_faults += 1
        self.fill(inputs, now_ms)

    def fill(self, inputs, now_ms):
        rx = self.rx
        # Both periodic frames must be fresh: status (SoC, temperature) and limits. A BMS
        # that keeps sending its status while its limits stopped is not trusted either.
        a = rx.age_ms(0, now_ms)
        b = rx.age_ms(1, now_ms)
        age = a if a > b else b
        inputs.bms_age_ms = age if age < _NEVER else _NEVER
        st = rx.bms_status
        lim = rx.bms_limits
        inputs.bms_soc_pm = st.soc_pm
        inputs.bms_temp_dc = st.temp_max_dc
        if lim.fault_bits:
            # the BMS reports a fault (over-temperature, isolation, contactor...): no transfer
            inputs.bms_max_charge_ma = 0
            inputs.bms_max_discharge_ma = 0
        else:
            inputs.bms_max_charge_ma = lim.max_charge_current_ma
            inputs.bms_max_discharge_ma = lim.max_discharge_current_ma
        inputs.bms_capacity_wh = rx.bms_info.capacity_wh if rx.age_ms(2, now_ms) < _NEVER else 0

    def transmit(self, now_ms, out, inputs):
        if self.next_tx_ms is not None and not ticks.due(now_ms, self.next_tx_ms):
            return
        # every 100 ms (the DBC's cycle) on the step grid; a late step does not burst
        self.next_tx_ms = ticks.add(
            now_ms if self.next_tx_ms is None or ticks.diff(now_ms, self.next_tx_ms) > 100
            else self.next_tx_ms, M.VCU_POWER_REQUEST_CYCLE_MS)
        tx = self.tx
        d = self.txbuf
        o = tx.vcu_power_request
        r = out.request_ma
        o.req_current_ma = _toward_zero(r)
        if out.mode_i == M.MODE_FAULT:
            o.req_mode = M.REQ_MODE_STOP
        elif r > 0:
            o.req_mode = M.REQ_MODE_CHARGE
        elif r < 0:
            o.req_mode = M.REQ_MODE_DISCHARGE
        else:
            o.req_mode = M.REQ_MODE_IDLE
        o.contactor_closed = 1 if inputs.contactor_closed else 0
        self._send(M.VCU_POWER_REQUEST_ID, tx.frame_vcu_power_request(d))
        s = tx.evse_status
        # The controller's own numbers go out as they are: the DBC's CpState and Mode values
        # are its pilot letters and modes, its limit sources are core/limits.py's plus one
        # (0 = none); tests/host/test_can_dbc.py holds the two to each other.
        s.cp_state = out.cp_i
        s.mode = out.mode_i
        s.contactor = 1 if out.contactor else 0
        s.pwm_duty_pm = out.pwm_pm
        s.errors = out.errors & 0xFFFFFF
        self._send(M.EVSE_STATUS_ID, tx.frame_evse_status(d))
        el = tx.evse_limits
        el.limit_charge_ma = _toward_zero(out.limit_charge_ma)
        el.limit_discharge_ma = _toward_zero(out.limit_discharge_ma)
        el.limit_charge_src = M.LIMIT_CHARGE_SRC_STATION + out.charge_src_i
        el.limit_discharge_src = M.LIMIT_CHARGE_SRC_STATION + out.discharge_src_i
        el.meter_current_ma = inputs.meter_ma
        self._send(M.EVSE_LIMITS_ID, tx.frame_evse_limits(d))

    def _send(self, can_id, dlc):
        if not self.port.send(can_id, self.txbuf, dlc):
            self.tx_full += 1

    def report(self, now_ms):
        """Counters for diagnostics; zero counters are left out (a diag answer holds 1 kB)."""
        s = self.stats
        out = {}
        for k, v in (('rx', self.rx_frames), ('rx_ok', s.rx_ok), ('tx', s.tx), ('tx_refused', self.tx_full),
                     ('bad_dlc', s.bad_dlc), ('unknown_id', s.unknown_id + self.ext_frames),
                     ('bad_checksum', s.bad_checksum), ('bad_range', s.bad_range),
                     ('counter_stuck', s.counter_repeat), ('counter_skip', s.counter_skip),
                     ('saturated', s.saturated), ('bms_faults', self.bms_faults),
                     ('bms_fault_bits', self.rx.bms_limits.fault_bits)):
            if v:
                out[k] = v
        age = self.rx.age_ms(0, now_ms)
        out['bms_age_ms'] = age if age < _NEVER else None
        return out
