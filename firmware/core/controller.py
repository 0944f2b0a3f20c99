"""The control step: IEC 61851 pilot state machine, contactor, limits, fallbacks.

One step every CONTROL_PERIOD_MS with inputs the shell sampled from the HAL;
the step returns the same Outputs object every time. The step allocates
nothing once running (ints, bools and constant strings only); an event message
is built only at the moment a code is raised or cleared, which is rare.

Safety rules enforced here (shared spec errors.md):
- energy flows only in state C, or D with VENTILATION_AVAILABLE, with a positive
  limit in the direction asked; any change away from C/D acts in the same step.
- a pilot fault (E, F, diode missing, a level that fits no state) opens the
  contactor at once and drives state F; recovery only through A or B.
- a welded or non-closing contactor latches V2G-011 until an operator clears it.
- without host heartbeat: charge-only, discharge forbidden until the host is
  back AND a fresh command arrived.
- no discharge with a stale meter, missing BMS frames, or SoC at the floor.
- cooling commanded and silent for COOLING_FEEDBACK_S (V2G-013): discharging above
  COOLING_UNCOOLED_AMPS opens the contactor (hard fault), otherwise both directions are
  derated to it; latched until the loop works again (core/cooling.py).
Every failure path names its safe state (_SAFE_* below) in the event message.
"""
import json

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import config as _config
from core import decfrac
from core import errors as E
from core import limits as L
from core import pilot as P
from core import setpoint as S
from core.cooling import Cooling, EV_CLEARED, EV_DERATED, EV_TRIPPED
from core.eventlog import EventLog
from core.journal import Journal
from core.thermal import Derate
from core.ticks import age as _age   # beyond 2**29 ms an age is not believable: NEVER
from core.ticks import NEVER as _NEVER

CONTROL_PERIOD_MS = const(50)

# named safe states (quoted in event messages)
_SAFE_OPEN = const('contactor open, discharge forbidden')
_SAFE_PILOT_F = const('contactor open, pilot state F (steady -12 V), discharge forbidden')
_SAFE_LOCKOUT = const('contactor open, pilot steady +12 V, new sessions refused until an operator clears V2G-011')
_SAFE_NO_TRANSFER = const('contactor open, no energy transfer')
_SAFE_CHARGE_ONLY = const('charge-only: discharge forbidden, charging continues at the pilot limit')
_SAFE_NO_DISCHARGE = const('discharge forbidden, charging continues at the pilot limit')
_SAFE_DERATED = const('current derated, stopped at the limit')
_SAFE_COOLING_TRIP = const('contactor open, session ended, no transfer until the cooling loop works again')
_SAFE_COOLING_DERATE = const('both directions derated to COOLING_UNCOOLED_AMPS until the cooling loop works again')
_SAFE_BASIC_CHARGING = const('back to basic charging (nominal pilot duty), charge only, until the vehicle is unplugged')

_PILOT_DEBOUNCE_SAMPLES = const(3)   # 150 ms before a change towards energy counts
DIODE_SAMPLES = const(2)            # consecutive low-side readings without the diode
_FAULT_HOLD_MS = const(1000)         # state F held after a pilot fault before probing
_PROBE_MS = const(500)               # steady +12 V to see whether the EV is back in A/B
_PROBE_SAMPLES = const(3)
_CONTACTOR_SETTLE_MS = const(500)    # feedback must follow the command within this
_WELD_CURRENT_MA = const(2000)       # current with the contactor open that means welded
_SOFT_OPEN_MA = const(1000)          # a normal stop opens once the current is below this
_SOFT_OPEN_MS = const(1000)          # ... or after this long
_RAMP_MA_PER_S = const(10000)        # setpoint-driven current increases at most 10 A/s (no steps)
_DROOP_WAKE_MA = const(1000)         # a droop response this large wakes an EV holding at target
_DEFAULT_CABLE_MA = const(13000)     # PP unknown: smallest IEC 62196 cable rating
_MAX_DT_MS = const(1000)
_LIMIT_MAX_A = const(1000)

# pilot fault kinds
_PF_NONE = const(0)
_PF_LEVEL = const(1)     # E, F or unknown level
_PF_DIODE = const(2)     # diode missing: recovery needs state A
_PH_HOLD = const(0)
_PH_PROBE = const(1)

MODES = ('idle', 'connected', 'charging', 'discharging', 'paused', 'charge_only', 'fault')
_M_IDLE = const(0)
_M_CONNECTED = const(1)
_M_CHARGING = const(2)
_M_DISCHARGING = const(3)
_M_PAUSED = const(4)
_M_CHARGE_ONLY = const(5)
_M_FAULT = const(6)
# Event-log texts for state changes, constants: the step logs them without allocating, and
# they stay in flash (frozen or ROMFS) where texts built at import took 0.6 kB of heap.
# A state change has no error code (None); its entry's `on` is True ("happened").
_MODE_LOG = ('mode idle', 'mode connected', 'mode charging', 'mode discharging', 'mode paused',
             'mode charge_only', 'mode fault')   # 'mode ' + MODES[i]
_PILOT_LOG = ('pilot state A', 'pilot state B', 'pilot state C', 'pilot state D', 'pilot state E',
              'pilot state F', 'pilot state F')   # UNKNOWN is reported as F
OPS = ('soc_target', 'limit', 'start', 'stop', 'charge_only', 'clear_fault',
       'config_get', 'config_set', 'status', 'hlc')
_READ_OPS = ('config_get', 'status')
# Not journaled and not stored: `hlc` is repeated every second by the gateway while an ISO 15118
# session runs (a keep-alive), is idempotent, and a reset ends the session anyway.
_VOLATILE_OPS = ('hlc',)
# The gateway repeats `hlc` every second; without one for this long the high-level session
# counts as failed (the SECC died or hangs): V2G-150, nominal duty, charge only.
HLC_TIMEOUT_MS = const(5000)
_HLC_REASON_MAX = const(120)
_NO_EVENTS = ()
_FRESH_OPS = ('soc_target', 'limit', 'start', 'charge_only')


def _clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


def _dec(v, div, unit):
    # integer milli-units as text with one decimal: 16500 mA -> '16.5 A'
    neg = v < 0
    if neg:
        v = -v
    return '{}{}.{}{}'.format('-' if neg else '', v // div, (v % div) * 10 // div, unit)


def _a(ma):
    return _dec(ma, 1000, ' A')


def _s(ms):
    return _dec(ms, 1000, ' s')


def _c(dc):
    return _dec(dc, 10, ' C')


def _pct(pm):
    return _dec(pm, 10, ' %')


class Inputs:
    """Plant readings, preallocated by the shell and mutated in place."""

    def __init__(self):
        self.cp_high_mv = 12000
        self.cp_low_mv = -12000
        self.pp_limit_a = 0
        self.contactor_closed = False
        self.meter_ok = False
        self.meter_age_ms = 1 << 29
        self.meter_ma = 0
        self.meter_mv = 0
        self.meter_mhz = 0
        self.evse_temp_dc = 250
        self.bms_age_ms = 1 << 29
        self.bms_soc_pm = 0
        self.bms_temp_dc = 250
        self.bms_max_charge_ma = 0
        self.bms_max_discharge_ma = 0
        self.bms_capacity_wh = 0
        # free-running count of cooling feedback: tachometer pulses, or steps with the flow
        # switch closed; only its changes matter (core/cooling.py)
        self.cooling_count = 0


class Outputs:
    """Commands and status of one step; the same object every step."""

    def __init__(self):
        self.pwm_pm = P.PWM_OFF
        self.contactor = False
        self.request_ma = 0
        self.limit_charge_ma = 0
        self.limit_discharge_ma = 0
        self.limit_charge_src = 'station'
        self.limit_discharge_src = 'station'
        self.mode = 'idle'
        self.cp_state = 'A'
        # the same as numbers, for the HAL and the CAN frames: the controller's own indices
        # (MODES, pilot LETTERS with UNKNOWN as F, limits.SOURCES); the names above are for
        # telemetry and status only
        self.mode_i = 0
        self.cp_i = 0
        self.charge_src_i = L.STATION
        self.discharge_src_i = L.STATION
        self.errors = 0
        # additions beyond the fixed interface (status / telemetry)
        self.soc_pm = -1                # -1 = unknown (no BMS)
        self.target_pm = -1             # -1 = no SoC target
        self.floor_pm = 0
        self.v2g_available = False
        self.discharge_capacity_wh = 0
        self.direction = 0              # setpoint: 1 charge, -1 discharge, 0 hold
        self.cooling = False            # pump / fan command
        self.cooling_state = 'none'     # core.cooling.STATE_NAMES


class Controller:
    def __init__(self, cfg=None, grid=None):
        if cfg is None:
            cfg = _config.validate({})
        self.cfg = cfg
        self.grid = grid
        self.out = Outputs()
        self.limits = L.Limits()
        self.pilot = P.PilotFilter(_PILOT_DEBOUNCE_SAMPLES)
        self.evse_thermal = Derate(cfg.evse_derate_dc, cfg.evse_limit_dc, cfg.hysteresis_dc)
        self.batt_thermal = Derate(cfg.batt_derate_dc, cfg.batt_limit_dc, cfg.hysteresis_dc)
        self.setpoint = S.Setpoint(cfg.floor_pm, cfg.available_margin_pm)
        self.cooling = Cooling(cfg.cooling, cfg.cooling_on_ma, cfg.cooling_on_dc, cfg.cooling_feedback_ms,
                               cfg.cooling_uncooled_ma)
        self.journal = Journal()
        self.log = EventLog()
        self._events = []
        self.errors = 0
        self.cfg_dirty = False
        self.state_dirty = False       # something state_dump() keeps has changed
        # time
        self._started = False
        self._t_last = 0
        # heartbeat
        self._hb_last = 0
        self.hb_lost = False
        self.hb_timeouts = 0           # heartbeat losses since boot (diagnostics)
        self.fallback = False          # charge-only until heartbeat back + fresh command
        self.cmd_charge_only = False   # charge-only asked by the host
        self.stopped = False           # session stopped by the host
        # ISO 15118 high-level communication, run by the gateway's SECC (docs/secc.md)
        self.hlc = False               # a session is being set up or runs: pilot at 5 %
        self._hlc_last = 0             # time of the last `hlc` keep-alive
        self.hlc_soc_pm = -1           # SoC the vehicle reported over HLC, -1 unknown
        self.hlc_failed = False        # failed or timed out on this plug-in (V2G-150)
        self.damaged = []              # stored files found damaged (V2G-020) until an operator clears
        # pilot fault
        self._pf = _PF_NONE
        self._pf_phase = _PH_HOLD
        self._pf_since = 0
        self._probe_count = 0
        self._diode_bad = 0
        self._diode_good = 0           # consecutive readings with the diode while PWM runs
        # contactor
        self._cmd_since = 0
        self._soft_since = -1
        self.weld = False
        self._feedback = False
        # host limits (CSMS)
        self.csms_charge_ma = L.NO_LIMIT
        self.csms_discharge_ma = L.NO_LIMIT
        # grid slot (filled by the grid module each step)
        self.grid_charge_ma = L.NO_LIMIT
        self.grid_discharge_ma = L.NO_LIMIT
        self.grid_droop_ma = 0
        self.grid_errors = 0
        self.grid_trip = False
        # request ramp
        self._req = 0
        self.rtt_ms = 0
        self._bms_seen = False
        self._droop_flow = False       # energy flows only for the grid's frequency response
        self._boot_ms = 0
        self._plug_ms = 0
        self._mode_i = -1              # last mode / pilot state written to the event log
        self._st_log = -1

    # ------------------------------------------------------------ events
    def _raise(self, now, bit, msg):
        self.errors |= bit
        self._emit(now, E.code(bit), True, msg)

    def _clear(self, now, bit, msg):
        self.errors &= ~bit
        self._emit(now, E.code(bit), False, msg)

    def _emit(self, now, code, on, msg):
        self._events.append((now, code, on, msg))
        self.log.append(now, code, on, msg)

    def pop_events(self):
        """Events since the last call, (t_ms, 'V2G-xxx', raised, msg), oldest first.

        The shell calls this every tick: with nothing new it returns a shared empty
        tuple and allocates nothing; a list is built only when events happened."""
        ev = self._events
        g = self.grid
        if g is not None and g.pending():
            for e in g.pop_events():
                ev.append(e)
                self.log.append(e[0], e[1], e[2], e[3])
        if not ev:
            return _NO_EVENTS
        self._events = []
        return ev

    # ------------------------------------------------------------ host side
    def heartbeat(self, now_ms):
        self._hb_last = now_ms
        # V2G-101 stays active until a fresh command also arrived (see command())
        self.hb_lost = False

    def report_rtt(self, now_ms, rtt_ms):
        """Host link round trip measured by the host (V2G-110 above HOST_LATENCY_WARN_MS)."""
        self.rtt_ms = rtt_ms
        warn = self.cfg.latency_warn_ms
        if rtt_ms > warn and not (self.errors & E.E110):
            self._raise(now_ms, E.E110, 'host link round trip {} ms above HOST_LATENCY_WARN_MS {} ms'.format(
                rtt_ms, warn))
        elif rtt_ms <= warn and (self.errors & E.E110):
            self._clear(now_ms, E.E110, 'host link round trip {} ms back within {} ms'.format(rtt_ms, warn))

    def apply_config(self, cfg):
        old = self.cfg
        self.cfg = cfg
        self.evse_thermal.configure(cfg.evse_derate_dc, cfg.evse_limit_dc, cfg.hysteresis_dc)
        self.batt_thermal.configure(cfg.batt_derate_dc, cfg.batt_limit_dc, cfg.hysteresis_dc)
        self.setpoint.configure(cfg.floor_pm, cfg.available_margin_pm)
        self.cooling.configure(cfg.cooling, cfg.cooling_on_ma, cfg.cooling_on_dc, cfg.cooling_feedback_ms,
                               cfg.cooling_uncooled_ma)
        if self.grid is not None and old is not cfg and hasattr(self.grid, 'reconfigure'):
            try:
                if old.values['GRID_PROFILE'] != cfg.values['GRID_PROFILE']:
                    # another grid code: start over, waiting to enter service (the safe side)
                    self.grid = type(self.grid).from_config(cfg, step_ms=self.grid.step_ms)
                else:
                    # ratings, droop or delays: trips and the enter-service state carry on
                    self.grid.reconfigure(cfg, step_ms=self.grid.step_ms)
            except ValueError:
                pass   # config.validate() already bounds every value the grid module checks

    # ------------------------------------------------------------ the step
    def step(self, now_ms, inp):
        o = self.out
        cfg = self.cfg
        lim = self.limits
        if not self._started:
            self._started = True
            self._t_last = now_ms
            self._hb_last = now_ms      # grace: the host gets a full timeout after boot
            self._cmd_since = now_ms
            self._boot_ms = now_ms
            self._plug_ms = now_ms
        dt = _age(now_ms, self._t_last)
        if dt > _MAX_DT_MS:
            dt = _MAX_DT_MS
        self._t_last = now_ms
        self._feedback = inp.contactor_closed

        # ---- pilot level and faults
        raw = P.level(inp.cp_high_mv)
        prev_pwm = o.pwm_pm
        if self._pf != _PF_NONE:
            st = self._pilot_fault_step(now_ms, raw, inp)
        else:
            st = self.pilot.update(raw)
            pwm_on = prev_pwm > 0 and prev_pwm < P.PWM_OFF
            ev_side = (st == P.B or st == P.C or st == P.D) and (raw == P.B or raw == P.C or raw == P.D)
            diode = P.diode_ok(inp.cp_low_mv)
            if pwm_on and ev_side and raw == st and not diode:
                self._diode_bad += 1
            else:
                self._diode_bad = 0
            # the diode can only be seen while PWM runs: the contactor waits for
            # DIODE_SAMPLES good readings in a row (from A straight to C too)
            if pwm_on and ev_side and diode:
                if self._diode_good < DIODE_SAMPLES:
                    self._diode_good += 1
            else:
                self._diode_good = 0
            if st == P.E or st == P.F or st == P.UNKNOWN:
                self._pilot_fault(now_ms, _PF_LEVEL, inp)
            elif self._diode_bad >= DIODE_SAMPLES:
                self._pilot_fault(now_ms, _PF_DIODE, inp)
        pfault = self._pf != _PF_NONE
        connected = st == P.B or st == P.C or st == P.D

        # ---- contactor supervision (against the command of the last step)
        self._check_contactor(now_ms, inp)

        # ---- heartbeat
        hb_age = _age(now_ms, self._hb_last)
        if not self.hb_lost and hb_age > cfg.heartbeat_timeout_ms:
            self.hb_lost = True
            self.hb_timeouts += 1
            self.fallback = True
            # The CSMS's charge limit came through that host and nothing can renew or end it
            # now: it is dropped, so charging goes on at the pilot limit as V2G-101 says (a
            # stale 0 A from a discharge profile would stop charging for good). Its discharge
            # limit is kept: it can only be stricter, and discharge is forbidden anyway.
            self.csms_charge_ma = L.NO_LIMIT
            self.state_dirty = True
            self._raise(now_ms, E.E101, 'no host heartbeat for {} (HEARTBEAT_TIMEOUT_S {}): {}'.format(
                _s(hb_age), _s(cfg.heartbeat_timeout_ms), _SAFE_CHARGE_ONLY))

        # ---- high-level communication (ISO 15118): the SECC's keep-alive, unplugging ends it
        if self.hlc:
            if st == P.A:
                self.hlc = False
                self.hlc_soc_pm = -1
            elif _age(now_ms, self._hlc_last) > HLC_TIMEOUT_MS:
                self._hlc_fail(now_ms, 'no keep-alive from the SECC for {} (HLC timeout {})'.format(
                    _s(_age(now_ms, self._hlc_last)), _s(HLC_TIMEOUT_MS)))
        if self.hlc_failed and st == P.A:
            self.hlc_failed = False
            self._clear(now_ms, E.E150, 'vehicle unplugged: high-level communication may start again')

        # ---- meter and BMS freshness
        # Without a fresh reading there is no discharge at once; the error code itself waits
        # until the meter (since boot) or the BMS (since plug-in) has had its full timeout,
        # so the first poll after a boot is not reported as a fault.
        meter_stale = inp.meter_age_ms > cfg.meter_stale_ms
        if meter_stale and _age(now_ms, self._boot_ms) > cfg.meter_stale_ms:
            if not (self.errors & E.E120):
                self._raise(now_ms, E.E120, 'no valid meter reading for {} (METER_STALE_S {}): {}'.format(
                    _s(inp.meter_age_ms), _s(cfg.meter_stale_ms), _SAFE_NO_DISCHARGE))
        elif not meter_stale and self.errors & E.E120:
            self._clear(now_ms, E.E120, 'meter readings back ({} ms old)'.format(inp.meter_age_ms))
        bms_fresh = inp.bms_age_ms <= cfg.can_timeout_ms
        if bms_fresh:
            self._bms_seen = True
        if not connected:
            self._plug_ms = now_ms
        bms_missing = connected and not bms_fresh
        if bms_missing and _age(now_ms, self._plug_ms) > cfg.can_timeout_ms:
            if not (self.errors & E.E130):
                self._raise(now_ms, E.E130, 'no BMS frame for {} (CAN_TIMEOUT_MS {}): {}'.format(
                    _s(inp.bms_age_ms), cfg.can_timeout_ms, _SAFE_NO_DISCHARGE))
        elif not bms_missing and self.errors & E.E130:
            self._clear(now_ms, E.E130, 'BMS frames back' if bms_fresh else 'vehicle disconnected')

        # ---- grid module (optional)
        g = self.grid
        if g is not None:
            g.step(now_ms, inp.meter_mv, inp.meter_mhz, inp.meter_ok and not meter_stale)
            self.grid_charge_ma = g.allow_charge_ma
            self.grid_discharge_ma = g.allow_discharge_ma
            self.grid_droop_ma = g.droop_ma
            self.grid_errors = g.trip_code
            self.grid_trip = g.trip_code != 0

        # ---- thermal
        self._thermal(now_ms, inp, bms_fresh)

        # ---- cooling loop: the current decides derate or hard fault (the last request when
        # the meter is stale); the request starts the pump before the current has ramped up
        cl = self.cooling
        cev = cl.step(now_ms, o.request_ma if meter_stale else inp.meter_ma, o.request_ma,
                      inp.evse_temp_dc, inp.cooling_count)
        if cev:
            self._cooling_event(now_ms, cev)

        # ---- setpoint direction
        # The BMS frame on CAN wins over the SoC the vehicle reports over HLC: it is the
        # battery's own reading, ten times a second; HLC's fills in only without it.
        soc_known = bms_fresh
        soc = inp.bms_soc_pm
        if not bms_fresh and self.hlc and self.hlc_soc_pm >= 0:
            soc_known = True
            soc = self.hlc_soc_pm
        sp = self.setpoint
        if sp.departure_set and _age(now_ms, sp.departure_at) != _NEVER:
            # the driver's departure has passed: dropped now, before the wrapping tick clock
            # could make it look ahead again (inline: a call here costs the start-up heap)
            sp.departure_set = False
        charge_only = self.fallback or self.cmd_charge_only or self.hlc_failed
        direction = sp.update(soc_known, soc, charge_only)
        unavailable = soc_known and connected and sp.wants_discharge and not sp.available
        if unavailable:
            if not (self.errors & E.E301):
                self._raise(now_ms, E.E301, 'V2G unavailable: SoC {} at or below floor {} + margin {}: {}'.format(
                    _pct(soc), _pct(sp.floor_pm), _pct(sp.margin_pm), _SAFE_NO_DISCHARGE))
        elif self.errors & E.E301:
            self._clear(now_ms, E.E301, 'V2G available again (SoC {})'.format(_pct(soc)) if sp.available
                        else 'no discharge asked')

        # ---- ventilation
        vent_fault = st == P.D and not cfg.ventilation
        if vent_fault:
            if not (self.errors & E.E012):
                self._raise(now_ms, E.E012, 'EV asks for ventilation (state D) and VENTILATION_AVAILABLE is false: '
                            + _SAFE_NO_TRANSFER)
        elif self.errors & E.E012:
            self._clear(now_ms, E.E012, 'EV left state D')

        # ---- limits
        # Each source's slot is written here directly, not through Limits.set_*(): some 16
        # method calls a step were a large share of the step's cost in the VM.
        ch = lim.charge
        dis = lim.discharge
        no_limit = L.NO_LIMIT
        ch[L.STATION] = cfg.max_charge_ma
        dis[L.STATION] = cfg.max_discharge_ma
        pp = inp.pp_limit_a
        cable = pp * 1000 if pp > 0 else _DEFAULT_CABLE_MA
        ch[L.CABLE] = cable
        dis[L.CABLE] = cable
        if bms_fresh:
            ch[L.BMS] = inp.bms_max_charge_ma
            dis[L.BMS] = inp.bms_max_discharge_ma
            dis[L.CAN] = no_limit
        else:
            ch[L.BMS] = no_limit
            dis[L.BMS] = no_limit
            dis[L.CAN] = 0
        et = self.evse_thermal
        bt = self.batt_thermal
        tc = no_limit
        td = no_limit
        if et.factor < 1000:
            tc = et.apply(cfg.max_charge_ma)
            td = et.apply(cfg.max_discharge_ma)
        if bt.factor < 1000:
            x = bt.apply(cfg.max_discharge_ma)
            if x < td:
                td = x
        ch[L.THERMAL] = tc
        dis[L.THERMAL] = td
        ch[L.GRID] = self.grid_charge_ma
        dis[L.GRID] = self.grid_discharge_ma
        ch[L.CSMS] = self.csms_charge_ma
        dis[L.CSMS] = self.csms_discharge_ma
        stop_ma = 0 if self.stopped else no_limit
        ch[L.SETPOINT] = stop_ma
        dis[L.SETPOINT] = stop_ma
        dis[L.HEARTBEAT] = 0 if self.fallback else no_limit
        dis[L.METER] = 0 if meter_stale else no_limit
        dis[L.FLOOR] = 0 if (soc_known and (soc <= sp.floor_pm or not sp.available)) else no_limit
        dis[L.CHARGE_ONLY] = 0 if (self.cmd_charge_only or self.hlc_failed) else no_limit
        ch[L.COOLING] = cl.limit_ma
        dis[L.COOLING] = cl.limit_ma
        faulted = pfault or self.weld or vent_fault or cl.tripped
        fault_ma = 0 if (faulted or self.grid_trip) else no_limit
        ch[L.FAULT] = fault_ma
        dis[L.FAULT] = fault_ma
        lim.resolve()
        if lim.charge_ma < P.MIN_OFFER_MA:
            # the pilot cannot offer less than 6 A: no offer, still named after the source that
            # asked for less (the grid's enter-service ramp, say), which is what is holding it
            lim.no_offer()
        lc = lim.charge_ma
        ld = lim.discharge_ma

        # ---- contactor
        power_state = st == P.C or (st == P.D and cfg.ventilation)
        # An EV holding at its SoC target still answers the grid: a frequency deviation big
        # enough wakes it as a source (under-frequency) or a sink (over-frequency), within
        # every limit, including the floor, and back to holding once the grid recovers.
        droop = self.grid_droop_ma
        # charge-only (host fallback, charge_only command, or target mode 'charge'): the
        # droop may lower charging to zero but never turns the flow into discharge
        no_reverse = charge_only or sp.mode == S.MODE_CHARGE
        if direction == S.HOLD and not charge_only:
            if droop <= -_DROOP_WAKE_MA and ld > 0 and not no_reverse:
                direction = S.DISCHARGE
                self._droop_flow = True
            elif droop >= _DROOP_WAKE_MA and lc > 0:
                direction = S.CHARGE
                self._droop_flow = True
            else:
                self._droop_flow = False
        else:
            self._droop_flow = False
        want = (not faulted and power_state and not self.stopped
                and ((direction == S.CHARGE and lc > 0) or (direction == S.DISCHARGE and ld > 0)))
        # closing needs the diode seen with PWM running; once closed, a missing
        # diode is a pilot fault (above), which opens at once
        if want and (self._diode_good >= DIODE_SAMPLES or o.contactor):
            close = True
            self._soft_since = -1
        elif faulted or not power_state or self.grid_trip:
            close = False      # hard: open in this step
            self._soft_since = -1
        elif o.contactor:
            # normal stop: the request is 0 now; open once the current has gone
            if self._soft_since < 0:
                self._soft_since = now_ms
            close = not ((-_SOFT_OPEN_MA < inp.meter_ma < _SOFT_OPEN_MA)
                         or _age(now_ms, self._soft_since) >= _SOFT_OPEN_MS)
            if not close:
                self._soft_since = -1
        else:
            close = False
        if close != o.contactor:
            self._cmd_since = now_ms
        o.contactor = close

        # ---- current request
        # Two parts. The setpoint part (toward lc / -ld) ramps up at _RAMP_MA_PER_S and is cut
        # down at once; a change of direction goes through zero. The grid's frequency
        # response (droop) is added without that ramp: the grid module already shapes it to
        # reach 90 % within FREQ_RESPONSE_S, and a second ramp would hold a reduction that
        # crosses zero, a reversal or a wake from holding for seconds.
        base = 0
        grid_part = 0
        if want and close and inp.contactor_closed:
            grid_part = droop
            if self._droop_flow:
                base = 0                 # only what the grid asks, from holding
            elif direction == S.CHARGE:
                base = lc
            else:
                base = -ld
        cur = self._req
        if (cur > 0 and base < 0) or (cur < 0 and base > 0):
            cur = 0
        elif (cur >= 0 and base <= cur and base >= 0) or (cur <= 0 and base >= cur and base <= 0):
            cur = base
        else:
            stepma = _RAMP_MA_PER_S * dt // 1000
            if base > cur:
                cur = cur + stepma if cur + stepma < base else base
            else:
                cur = cur - stepma if cur - stepma > base else base
        self._req = _clamp(cur, -ld, lc) if close else 0
        # grid_part is 0 unless the contactor is closed, so an open contactor still asks for 0
        cur = _clamp(self._req + grid_part, -ld, lc)
        if no_reverse and cur < 0:
            cur = 0
        o.request_ma = cur

        # ---- pilot duty
        # 5 % means "digital communication": shown only while the controller itself directs
        # the EV over CAN (a discharge, holding at the SoC target, or a droop response woken
        # from holding). Charging follows the PWM offer, and an offer below 6 A is no offer:
        # steady +12 V (PWM_OFF), never 5 %, which an IEC 61851 / ISO 15118 vehicle would
        # read as an invitation to negotiate.
        if pfault:
            o.pwm_pm = P.PWM_STATE_F if self._pf_phase == _PH_HOLD else P.PWM_OFF
        elif self.weld or st == P.A or self.stopped:
            o.pwm_pm = P.PWM_OFF
        elif self.hlc:
            o.pwm_pm = P.PWM_DIGITAL   # ISO 15118: the SECC negotiates, within these limits
        elif self.hlc_failed:
            # basic charging (IEC 61851-1 Annex A): the nominal offer, never 5 % again
            o.pwm_pm = P.duty_for_ma(lc) if direction == S.CHARGE else P.PWM_OFF
        elif direction == S.CHARGE and not self._droop_flow:
            o.pwm_pm = P.duty_for_ma(lc)   # PWM_OFF below MIN_OFFER_MA
        else:
            o.pwm_pm = P.PWM_DIGITAL   # discharge/hold: the current is asked over CAN

        # ---- status
        if faulted:
            mi = _M_FAULT
        elif st == P.A:
            mi = _M_IDLE
        elif charge_only:
            mi = _M_CHARGE_ONLY
        elif st == P.B:
            mi = _M_CONNECTED
        elif want:
            mi = _M_CHARGING if direction == S.CHARGE else _M_DISCHARGING
        else:
            mi = _M_PAUSED
        o.mode = MODES[mi]
        o.mode_i = mi
        o.cp_state = P.LETTERS[st] if st != P.UNKNOWN else 'F'
        # every state change goes to the event log (constant texts: nothing allocated); the
        # state of the first step after boot is the starting point, not a change
        sl = st if st != P.UNKNOWN else P.F
        o.cp_i = sl
        if sl != self._st_log:
            if self._st_log >= 0:
                self.log.append(now_ms, None, True, _PILOT_LOG[sl])
            self._st_log = sl
        if mi != self._mode_i:
            if self._mode_i >= 0:
                self.log.append(now_ms, None, True, _MODE_LOG[mi])
            self._mode_i = mi
        o.limit_charge_ma = lc
        o.limit_discharge_ma = ld
        o.limit_charge_src = L.SOURCES[lim.charge_src]
        o.limit_discharge_src = L.SOURCES[lim.discharge_src]
        o.charge_src_i = lim.charge_src
        o.discharge_src_i = lim.discharge_src
        o.errors = self.errors | self.grid_errors
        o.soc_pm = soc if soc_known else -1
        o.target_pm = sp.target_pm
        o.floor_pm = sp.floor_pm
        o.v2g_available = sp.available and soc_known
        o.discharge_capacity_wh = sp.capacity_wh(soc, inp.bms_capacity_wh) if soc_known else 0
        o.direction = direction
        o.cooling = cl.cmd
        o.cooling_state = cl.name()
        return o

    # ------------------------------------------------------------ step parts
    def _pilot_fault(self, now, kind, inp):
        self._pf = kind
        self._pf_phase = _PH_HOLD
        self._pf_since = now
        self._probe_count = 0
        self._diode_bad = 0
        self._diode_good = 0
        if not (self.errors & E.E010):
            if kind == _PF_DIODE:
                why = 'diode missing: pilot low side {} mV while PWM runs (needs <= {} mV)'.format(
                    inp.cp_low_mv, P.DIODE_LOW_MAX_MV)
            else:
                lvl = P.level(inp.cp_high_mv)
                why = 'pilot at {} mV ({})'.format(
                    inp.cp_high_mv, 'fits no state' if lvl == P.UNKNOWN else 'state ' + P.LETTERS[lvl])
            self._raise(now, E.E010, why + ': ' + _SAFE_PILOT_F)

    def _pilot_fault_step(self, now, raw, inp):
        """Hold state F, then probe with steady +12 V until the EV shows A or B."""
        if self._pf_phase == _PH_HOLD:
            if _age(now, self._pf_since) >= _FAULT_HOLD_MS:
                self._pf_phase = _PH_PROBE
                self._pf_since = now
                self._probe_count = 0
            return P.F if raw == P.UNKNOWN else raw
        # probing: our output is steady +12 V, so the level is the EV's own
        ok = raw == P.A or (raw == P.B and self._pf == _PF_LEVEL)
        if ok:
            self._probe_count += 1
            if self._probe_count >= _PROBE_SAMPLES:
                self._pf = _PF_NONE
                self._diode_bad = 0
                self._diode_good = 0
                self.pilot.reset(raw)
                self._clear(now, E.E010, 'pilot back in state {} ({} mV): fault cleared'.format(
                    P.LETTERS[raw], inp.cp_high_mv))
                return raw
        else:
            self._probe_count = 0
            if _age(now, self._pf_since) >= _PROBE_MS:
                self._pf_phase = _PH_HOLD
                self._pf_since = now
        return P.F if raw == P.UNKNOWN else raw

    def _check_contactor(self, now, inp):
        # Weld evidence is the auxiliary contact and the measured current; not voltage: the
        # meter sits on the grid side of the contactor and reads the grid either way.
        cmd = self.out.contactor
        if self.weld or _age(now, self._cmd_since) < _CONTACTOR_SETTLE_MS:
            return
        if cmd:
            if not inp.contactor_closed:
                self.weld = True
                self.state_dirty = True
                self._raise(now, E.E011, 'contactor fails to close: no feedback {} after the command: {}'.format(
                    _s(_age(now, self._cmd_since)), _SAFE_LOCKOUT))
        else:
            fresh = inp.meter_ok and inp.meter_age_ms <= self.cfg.meter_stale_ms
            if inp.contactor_closed or (fresh and (inp.meter_ma > _WELD_CURRENT_MA or inp.meter_ma < -_WELD_CURRENT_MA)):
                self.weld = True
                self.state_dirty = True
                self._raise(now, E.E011, 'contactor welded: {} {} after the open command (feedback {}): {}'.format(
                    _a(inp.meter_ma), _s(_age(now, self._cmd_since)),
                    'closed' if inp.contactor_closed else 'open', _SAFE_LOCKOUT))

    def _thermal(self, now, inp, bms_fresh):
        cfg = self.cfg
        et = self.evse_thermal
        was = et.tripped
        et.update(inp.evse_temp_dc)
        bt = self.batt_thermal
        bwas = bt.tripped
        if bms_fresh:
            bt.update(inp.bms_temp_dc)
        if et.tripped != was:
            if et.tripped:
                self._emit_thermal(now, True, 'EVSE temperature {} at or above EVSE_TEMP_LIMIT_C {}: {}'.format(
                    _c(inp.evse_temp_dc), _c(cfg.evse_limit_dc), _SAFE_OPEN))
            else:
                self._emit_thermal(now, False, 'EVSE temperature {} below limit {} - hysteresis {}: resume'.format(
                    _c(inp.evse_temp_dc), _c(cfg.evse_limit_dc), _c(cfg.hysteresis_dc)))
        if bt.tripped != bwas:
            if bt.tripped:
                self._emit_thermal(now, True, 'battery temperature {} at or above BATTERY_TEMP_LIMIT_C {}: {}'.format(
                    _c(inp.bms_temp_dc), _c(cfg.batt_limit_dc), _SAFE_NO_DISCHARGE))
            else:
                self._emit_thermal(now, False, 'battery temperature {} below limit {} - hysteresis {}: resume'.format(
                    _c(inp.bms_temp_dc), _c(cfg.batt_limit_dc), _c(cfg.hysteresis_dc)))

    def _cooling_event(self, now, ev):
        cl = self.cooling
        cfg = self.cfg
        if ev == EV_CLEARED:
            self._clear(now, E.E013, 'cooling feedback back for {} (COOLING_FEEDBACK_S): loop works, limits '
                        'restored'.format(_s(cfg.cooling_feedback_ms)))
            return
        why = 'cooling commanded and no feedback for {} (COOLING_FEEDBACK_S {})'.format(
            _s(cl.silent_ms), _s(cfg.cooling_feedback_ms))
        if ev == EV_TRIPPED:
            self._raise(now, E.E013, '{} while discharging {} above COOLING_UNCOOLED_AMPS {}: {}'.format(
                why, _a(-cl.fault_ma), _a(cfg.cooling_uncooled_ma), _SAFE_COOLING_TRIP))
        elif ev == EV_DERATED:
            self._raise(now, E.E013, '{} at {}: {} ({})'.format(
                why, _a(cl.fault_ma), _SAFE_COOLING_DERATE, _a(cfg.cooling_uncooled_ma)))

    def _emit_thermal(self, now, on, msg):
        # one code for both sensors: raised while either is tripped
        tripped = self.evse_thermal.tripped or self.batt_thermal.tripped
        if tripped:
            self.errors |= E.E009
        else:
            self.errors &= ~E.E009
        self._emit(now, 'V2G-009', on, msg)

    def storage_fault(self, now_ms, failed, msg):
        """V2G-021 from the shell: raised once when a write to flash fails, cleared when
        writes work again. What could not be stored stays in force in RAM."""
        if failed and not (self.errors & E.E021):
            self._raise(now_ms, E.E021, msg)
        elif not failed and self.errors & E.E021:
            self._clear(now_ms, E.E021, msg)

    # ------------------------------------------------------------ commands
    def log_refusal(self, now_ms, op, code, msg):
        """A refused command in the event log: its code, the command's name and why."""
        self.log.append(now_ms, code, True, 'refused {}: {}'.format(_name(op), msg))

    def command(self, now_ms, txn, op, args):
        """Apply a host command once per txn; returns (ok, code, msg, data)."""
        if not isinstance(txn, str) or not txn or len(txn) > 64:
            res = (False, 'V2G-400', 'txn: must be text of 1 to 64 characters', {})
            self.log_refusal(now_ms, op, res[1], res[2])
            return res
        prev = self.journal.get(txn)
        if prev is not None:
            return prev
        if args is None:
            args = {}
        if not isinstance(args, dict):
            res = _refuse('args: must be a map, got {}'.format(type(args).__name__))
        elif op not in OPS:
            res = _refuse('op: unknown operation {} (allowed: {})'.format(_show(op), ', '.join(OPS)))
        else:
            res = getattr(self, '_op_' + op)(now_ms, args)
        if op not in _READ_OPS and op not in _VOLATILE_OPS:
            self.journal.put(txn, res)
            if res[0]:
                self.state_dirty = True
        if not res[0] and op not in _READ_OPS:
            # a refused read (a typo in config get) changed nothing: no audit line
            self.log_refusal(now_ms, op, res[1], res[2])
        if res[0] and op in _FRESH_OPS and self.fallback and not self.hb_lost:
            self.fallback = False
            self._clear(now_ms, E.E101, 'host heartbeat back and fresh command {}: discharge allowed again'
                        .format(op))
        return res

    def _op_soc_target(self, now, args):
        bad = _unknown_args(args, ('soc_pct', 'mode', 'departure_s'))
        if bad:
            return bad
        dep = args.get('departure_s')
        bad = _departure_problem(dep)
        if bad:
            return _refuse(bad)
        if 'soc_pct' not in args:
            return _refuse('soc_pct: missing (0 to 100 %)')
        v = args['soc_pct']
        t = _steps_arg(v, 10)     # per-mille
        if t is None or t < 0 or t > 1000 or (_is_num(v) and (v < 0 or v > 100)):
            return _refuse('soc_pct: {} is not a number from 0 to 100'.format(_show(v)))
        mode_name = args.get('mode', 'auto')
        if mode_name is None:
            mode_name = 'auto'
        mode = S.mode_index(mode_name) if isinstance(mode_name, str) else -1
        if mode < 0:
            return _refuse('mode: {} not one of {}'.format(_show(mode_name), ', '.join(S.MODE_NAMES)))
        sp = self.setpoint
        o = self.out
        soc = o.soc_pm
        if soc >= 0 and sp.would_discharge(soc, t, mode) and not self.cmd_charge_only:
            sp.update_available(soc)
            if not sp.available:
                return (False, 'V2G-301', 'V2G unavailable: SoC {} below floor {} + margin {}; target {} refused'
                        .format(_pct(soc), _pct(sp.floor_pm), _pct(sp.margin_pm), _pct(t)), {})
        sp.set_target(t, mode)
        # a target without a departure clears the one before: the driver's latest word holds
        sp.set_departure(now, dep)
        msg = 'target {} ({})'.format(_pct(t), S.MODE_NAMES[mode])
        if t < sp.floor_pm:
            msg += '; discharge stops at the floor {}'.format(_pct(sp.floor_pm))
        if dep is not None:
            msg += '; departure in {} s'.format(dep)
        # integers in per-mille: no float crosses the link (a single-precision board's 62.5 is
        # exact, but its floor 20.1 would not be)
        return (True, None, msg, {'target_pm': t, 'mode': S.MODE_NAMES[mode], 'floor_pm': sp.floor_pm,
                                  'departure_s': dep})

    def _op_limit(self, now, args):
        bad = _unknown_args(args, ('charge_a', 'discharge_a'))
        if bad:
            return bad
        if not args:
            return _refuse('charge_a, discharge_a: give at least one (amps, or null to clear)')
        vals = []
        for key in ('charge_a', 'discharge_a'):
            if key not in args:
                vals.append(-1)
                continue
            v = args[key]
            ma = None if v is None else _steps_arg(v, 1000)
            if v is None:
                vals.append(L.NO_LIMIT)
            elif ma is None or ma < 0 or ma > _LIMIT_MAX_A * 1000 or (_is_num(v) and v > _LIMIT_MAX_A):
                return _refuse('{}: {} is not a number from 0 to {} A or null'.format(key, _show(v), _LIMIT_MAX_A))
            else:
                vals.append(ma)
        if vals[0] >= 0:
            self.csms_charge_ma = vals[0]
        if vals[1] >= 0:
            self.csms_discharge_ma = vals[1]
        return (True, None, 'CSMS limit charge {} discharge {}'.format(
            _limit_text(self.csms_charge_ma), _limit_text(self.csms_discharge_ma)),
            {'charge_ma': _limit_ma(self.csms_charge_ma), 'discharge_ma': _limit_ma(self.csms_discharge_ma)})

    def _op_start(self, now, args):
        bad = _unknown_args(args, ())
        if bad:
            return bad
        if self.weld:
            return (False, 'V2G-011', 'contactor fault latched: an operator must clear it (clear_fault)', {})
        self.stopped = False
        return (True, None, 'session enabled', {})

    def _op_stop(self, now, args):
        bad = _unknown_args(args, ())
        if bad:
            return bad
        self.stopped = True
        return (True, None, 'session stopped: ' + _SAFE_NO_TRANSFER, {})

    def _op_charge_only(self, now, args):
        bad = _unknown_args(args, ('on',))
        if bad:
            return bad
        on = args.get('on')
        if on is not True and on is not False:
            return _refuse('on: must be true or false, got {}'.format(_show(on)))
        self.cmd_charge_only = on
        return (True, None, 'charge-only ' + ('on' if on else 'off'), {'on': on})

    def _op_hlc(self, now, args):
        # The gateway's SECC: on = a session is wanted or runs (pilot 5 %), repeated every
        # second as a keep-alive, with the SoC the vehicle reported; off = it ended, `failed`
        # saying why when it did not end normally.
        bad = _unknown_args(args, ('on', 'soc_pct', 'failed'))
        if bad:
            return bad
        on = args.get('on')
        if on is not True and on is not False:
            return _refuse('on: must be true or false, got {}'.format(_show(on)))
        soc = args.get('soc_pct')
        if soc is not None and (not _is_num(soc) or soc < 0 or soc > 100):
            return _refuse('soc_pct: {} is not a number from 0 to 100 or null'.format(_show(soc)))
        failed = args.get('failed')
        if failed is not None and (not isinstance(failed, str) or not failed or len(failed) > _HLC_REASON_MAX):
            return _refuse('failed: must be text of 1 to {} characters, got {}'.format(_HLC_REASON_MAX, _show(failed)))
        if on and failed is not None:
            return _refuse('failed: only with on false')
        if on:
            if self.hlc_failed:
                return (False, 'V2G-150', 'high-level communication failed on this plug-in: ' + _SAFE_BASIC_CHARGING, {})
            if not (self.pilot.state == P.B or self.pilot.state == P.C or self.pilot.state == P.D):
                return _refuse('on: no vehicle plugged in (pilot {})'.format(self.out.cp_state))
            self.hlc = True
            self._hlc_last = now
            self.hlc_soc_pm = -1 if soc is None else int(soc * 10 + 0.5)
            return (True, None, 'high-level communication on', {'on': True, 'timeout_ms': HLC_TIMEOUT_MS})
        was = self.hlc
        self.hlc = False
        self.hlc_soc_pm = -1
        if failed is not None and not self.hlc_failed:
            self._hlc_fail(now, failed)
        return (True, None, 'high-level communication off' + ('' if was else ' (was off)'), {'on': False})

    def _hlc_fail(self, now, why):
        self.hlc = False
        self.hlc_soc_pm = -1
        self.hlc_failed = True
        self._raise(now, E.E150, '{}: {}'.format(why, _SAFE_BASIC_CHARGING))

    def _op_clear_fault(self, now, args):
        # the operator's acknowledgement of what latches: the contactor fault and the report
        # of damaged stored state (V2G-020)
        bad = _unknown_args(args, ())
        if bad:
            return bad
        if self.weld and self._feedback:
            return (False, 'V2G-011', 'contactor feedback still closed: fault kept ({})'.format(_SAFE_LOCKOUT), {})
        msg = 'no contactor fault latched'
        if self.weld:
            self.weld = False
            self._cmd_since = now
            self._clear(now, E.E011, 'contactor fault cleared by operator')
            msg = 'contactor fault cleared'
        if self.damaged:
            names = ', '.join(self.damaged)
            self.damaged = []
            self._clear(now, E.E020, 'stored state damage acknowledged by operator: ' + names)
            msg += '; damaged stored state acknowledged ({})'.format(names)
        return (True, None, msg, {})

    def _op_config_get(self, now, args):
        bad = _unknown_args(args, ('keys',))
        if bad:
            return bad
        keys = args.get('keys')
        vals = self.cfg.values
        if keys is None:
            data = {}
            for k in vals:
                data[k] = _link_value(k, vals[k])
        else:
            if not isinstance(keys, list):
                return _refuse('keys: must be a list of setting names')
            for k in keys:
                # checked before the lookup: a list or map as a key cannot be hashed
                if not isinstance(k, str):
                    return _refuse('keys: {} is not a setting name (must be text)'.format(_show(k)))
            unknown = [k for k in keys if k not in vals]
            if unknown:
                return _refuse('keys: unknown setting(s) {}'.format(', '.join(_name(k) for k in unknown)))
            data = {}
            for k in keys:
                data[k] = _link_value(k, vals[k])
        return (True, None, 'config {}'.format(self.cfg.config_hash()),
                {'values': data, 'cfg_hash': self.cfg.config_hash()})

    def _op_config_set(self, now, args):
        if isinstance(args, dict):
            args, bad = _config_changes(args)
        else:
            bad = []
        new, errs = _config.check(args, self.cfg)
        errs = bad + errs   # every bad key named at once
        if errs:
            return (False, 'V2G-400', _config.message(errs),
                    {'errors': dict((k, why) for k, why in errs)})
        changed = new.diff(self.cfg)
        if changed:
            self.apply_config(new)
            self.cfg_dirty = True
        # notes: settings taken that do less than they read (a slow meter poll for the grid
        # profile, a clamped droop); the one who set them should hear it now
        return (True, None, 'config applied: {}'.format(', '.join(changed) if changed else 'no change'),
                {'changed': changed, 'cfg_hash': self.cfg.config_hash(), 'notes': self.cfg.notes()})

    def _op_status(self, now, args):
        bad = _unknown_args(args, ())
        if bad:
            return bad
        return (True, None, self.out.mode, self.status())

    # ------------------------------------------------------------ persistence
    def state_dump(self):
        """Bytes of what must survive a reset: the contactor fault latch, the charge-only
        fallback, the host's target, limits, stop and charge-only choices."""
        sp = self.setpoint
        self.state_dirty = False
        return json.dumps({
            'v': 1, 'weld': self.weld, 'fallback': self.fallback, 'charge_only': self.cmd_charge_only,
            'stopped': self.stopped, 'target_pm': sp.target_pm, 'mode': sp.mode,
            'csms_charge_ma': self.csms_charge_ma, 'csms_discharge_ma': self.csms_discharge_ma,
            'damaged': self.damaged,
        }).encode()

    def state_load(self, now_ms, blob):
        """Restore state_dump() bytes at boot; ValueError on bad data (nothing changes)."""
        if isinstance(blob, (bytes, bytearray, memoryview)):
            blob = bytes(blob).decode()
        d = json.loads(blob)
        if not isinstance(d, dict) or d.get('v') != 1:
            raise ValueError('controller state: not version 1')
        for k in ('weld', 'fallback', 'charge_only', 'stopped'):
            if d.get(k) not in (True, False):
                raise ValueError('controller state: {} must be true or false'.format(k))
        for k in ('target_pm', 'mode', 'csms_charge_ma', 'csms_discharge_ma'):
            if not isinstance(d.get(k), int) or isinstance(d.get(k), bool):
                raise ValueError('controller state: {} must be an integer'.format(k))
        if not (-1 <= d['target_pm'] <= 1000) or not (0 <= d['mode'] < len(S.MODE_NAMES)):
            raise ValueError('controller state: target out of range')
        damaged = d.get('damaged', [])     # absent in files written before it was kept
        if not isinstance(damaged, list) or [n for n in damaged if not isinstance(n, str)]:
            raise ValueError('controller state: damaged must be a list of file names')
        if d['target_pm'] < 0:
            self.setpoint.clear_target()
        else:
            self.setpoint.set_target(d['target_pm'], d['mode'])
        self.cmd_charge_only = d['charge_only']
        self.stopped = d['stopped']
        self.csms_charge_ma = max(0, min(d['csms_charge_ma'], L.NO_LIMIT))
        self.csms_discharge_ma = max(0, min(d['csms_discharge_ma'], L.NO_LIMIT))
        if d['fallback']:
            self.csms_charge_ma = L.NO_LIMIT   # as at the heartbeat loss (state of older firmware)
        if d['fallback'] and not self.fallback:
            self.fallback = True
            self.hb_lost = True     # the host must prove it is back after the reset too
            self._raise(now_ms, E.E101, 'host heartbeat was lost before the reset: ' + _SAFE_CHARGE_ONLY)
        if d['weld'] and not self.weld:
            self.weld = True
            self._raise(now_ms, E.E011, 'contactor fault latched before the reset: ' + _SAFE_LOCKOUT)
        for name in damaged:
            if name not in self.damaged:
                self.damaged.append(name)
        if damaged:
            self.errors |= E.E020
            self._emit(now_ms, 'V2G-020', True, 'stored state found damaged before the reset, not yet '
                       'acknowledged (clear_fault): ' + ', '.join(damaged))
        self.state_dirty = False

    def report_damage(self, now_ms, name, msg):
        """A stored file found damaged at boot (V2G-020): reported and kept in the state until
        an operator clears it."""
        if name not in self.damaged:
            self.damaged.append(name)
        self.state_dirty = True
        self._raise(now_ms, E.E020, msg)

    def assume_conservative(self, now_ms, why):
        """The stored latch and fallback are lost: assume both were set, the state a reset
        with a welded contactor and no host would have left."""
        if not self.weld:
            self.weld = True
            self._raise(now_ms, E.E011, 'contactor fault assumed, {}: {}'.format(why, _SAFE_LOCKOUT))
        if not self.fallback:
            self.fallback = True
            self.hb_lost = True
            self._raise(now_ms, E.E101, 'host heartbeat loss assumed, {}: {}'.format(why, _SAFE_CHARGE_ONLY))
        self.state_dirty = True

    def status(self):
        o = self.out
        return {
            'mode': o.mode, 'cp_state': o.cp_state, 'pwm_pm': o.pwm_pm, 'contactor': o.contactor,
            'request_ma': o.request_ma, 'limit_charge_ma': o.limit_charge_ma,
            'limit_discharge_ma': o.limit_discharge_ma, 'limit_charge_src': o.limit_charge_src,
            'limit_discharge_src': o.limit_discharge_src, 'errors': E.active(o.errors),
            'soc_pm': o.soc_pm, 'target_pm': o.target_pm, 'floor_pm': o.floor_pm,
            'v2g_available': o.v2g_available, 'discharge_capacity_wh': o.discharge_capacity_wh,
            'heartbeat_lost': self.hb_lost,
            'charge_only': self.fallback or self.cmd_charge_only or self.hlc_failed,
            'hlc': self.hlc, 'hlc_failed': self.hlc_failed,
            'stopped': self.stopped, 'contactor_fault': self.weld, 'cfg_hash': self.cfg.config_hash(),
            'cooling': o.cooling_state,
            # seconds to the driver's departure (null: none, or passed), as of the last step
            'departure_s': self.setpoint.departure_left_s(self._t_last),
        }


def _refuse(msg):
    return (False, 'V2G-400', msg, {})


def _departure_problem(v):
    """Why departure_s (whole seconds from now, the host's conversion of the driver's time)
    cannot be taken; None when it can, or is absent."""
    if v is None:
        return None
    if not isinstance(v, int) or v is True or v is False:
        return 'departure_s: {} is not a whole number of seconds from now'.format(_show(v))
    if v < 1:
        return 'departure_s: {} s: the departure has passed (it must be at least 1 s ahead)'.format(v)
    if v > S.DEPARTURE_MAX_S:
        return 'departure_s: {} s is more than 6 days ({} s) ahead'.format(v, S.DEPARTURE_MAX_S)
    return None


def _unknown_args(args, allowed):
    extra = [k for k in args if k not in allowed]
    if extra:
        return _refuse('{}: unknown argument (allowed: {})'.format(
            ', '.join(_name(k) for k in extra), ', '.join(allowed) if allowed else 'none'))
    return None


def _show(v):
    if decfrac.is_fraction(v):
        return decfrac.text(v)
    return _config.show(v)


def _name(k):
    # a text key as itself (shortened), anything else quoted with its type
    if isinstance(k, str) and len(k) <= 40:
        return k
    return _show(k)


def _is_num(v):
    # finite numbers only: NaN and inf would break int() and the comparisons after it
    return ((isinstance(v, int) or isinstance(v, float)) and v is not True and v is not False
            and _config.finite(v))


def _limit_text(ma):
    return 'none' if ma >= L.NO_LIMIT else _a(ma)


def _limit_ma(ma):
    return None if ma >= L.NO_LIMIT else ma


def _steps_arg(v, scale):
    """A number from the host in whole steps of 1/scale, rounded: an int, a decimal fraction
    (how the host sends a decimal, core/decfrac.py) or a float (an older host); None when v
    is none of these."""
    if decfrac.is_fraction(v):
        got = decfrac.steps(v, scale)
        return None if got is None else got[0]
    if not _is_num(v):
        return None
    if isinstance(v, int):
        return v * scale
    if v > 1e12 or v < -1e12:
        return None       # out of every range here; int() of it could overflow
    if v < 0:
        return -int(-v * scale + 0.5)
    return int(v * scale + 0.5)


def _link_value(key, v):
    """A setting as config_get sends it: a decimal key as its exact steps (an int when
    whole, else a decimal fraction), never a float."""
    scale = _config.scale(key)
    if scale is None or v is None or v is True or v is False or not isinstance(v, (int, float)):
        return v
    return decfrac.of_steps(_config.steps(v, scale)[0], scale)


def _config_changes(args):
    """config_set's values as validate() takes them: a decimal fraction becomes the value of
    its exact number of steps; [(key, why)] for one finer than the setting's step."""
    out = {}
    errs = []
    for k in args:
        v = args[k]
        if decfrac.is_fraction(v):
            scale = _config.scale(k, 1) if isinstance(k, str) else 1
            got = decfrac.steps(v, scale)
            if got is None:
                errs.append((k, 'not a number: {}'.format(_show(v))))
                continue
            if not got[1]:
                unit = _config.SCHEMA[k][4] if k in _config.SCHEMA else ''
                errs.append((k, 'value {} is finer than the {}{} step of this setting'.format(
                    decfrac.text(v), _config.dec_text(1, scale), (' ' + unit) if unit else '')))
                continue
            v = _config.on_step(got[0], scale)
        out[k] = v
    return out, errs
