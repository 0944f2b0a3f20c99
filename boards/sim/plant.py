"""Plant model of the simulated station: EV, battery, meter, grid, pilot wiring, contactor.

The plant answers the controller the way the hardware would. It is pure (time comes in
as `now_ms`), runs under MicroPython and CPython, and keeps its state in integers in
milli-units (mA, mV, mHz, 0.1 degC, mWh) so a long run neither drifts nor differs
between the two interpreters.

    plant = Plant(ev={...}, grid={...}, config={...})   # [ev], [grid], [config] of a scenario
    plant.apply_event('plug', {})                       # the scenario vocabulary, without t_s
    plant.fill_inputs(inputs, now_ms)                   # what the controller's sensors read
    plant.step(now_ms, dt_ms, outputs)                  # physics for dt_ms under the outputs

Vehicle model: the EV draws current only with the contactor closed and S2 closed (state
C, or D with ventilation asked). It follows the lower of the pilot PWM limit (IEC 61851-1
duty cycle) and the controller's CAN request, never more than its own or its BMS's
allowance, through a first-order lag (EV_TAU_MS). Discharge needs a V2G-capable EV, a
negative CAN request and a CAN link that works. With CAN lost the EV neither hears
requests nor discharges; it charges at the pilot limit as a plain IEC 61851 vehicle.
The battery is lossless: the energy through the meter is the energy in the battery.

Cooling loop: the pump runs while the controller commands it (Outputs.cooling); coolant
flows PUMP_SPINUP_MS after it starts, and the flow switch closes while it flows. The
controller's feedback count (Inputs.cooling_count) counts the steps with the switch closed,
as a board with a flow switch does. The power stage's temperature is the temperature the
working loop holds it at (`evse_temp` sets it; 25 C by default) plus a rise: without flow
the stage heats towards UNCOOLED_RISE_MDC_AT_16A x (I / 16 A)^2 with the coolant's time
constant TAU_STILL_MS (minutes); with flow the rise decays to 0 within TAU_FLOW_MS. So
16 A uncooled settles 15 C above, 32 A uncooled heads for 60 C above (from 25 C past the
default 65 C derate point in about 4.5 minutes), and a working loop keeps the stage where
`evse_temp` put it.
Faults (`cooling_fault`): `pump` (the pump does not run: no flow, no feedback),
`flow_switch` (coolant flows, the switch stays open), `flicker` (coolant flows, the switch
drops out for `open_s`, 2 s by default, then closes for FLICKER_CLOSED_MS, over and over).
"""

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import config as config_mod
from core import grid_profiles

EV_TAU_MS = const(300)         # EV current controller time constant
EV_SETTLE_MA = const(100)      # within this of its target the EV current counts as settled
CONTACTOR_MS = const(30)       # contactor closing/opening time, feedback follows after it
BMS_PERIOD_MS = const(100)     # BMS status frame period on CAN
NEVER = const(1 << 29)         # "age" reported before the first valid reading
MWH_PER_WH = const(1000)
MJ_PER_MWH = const(3600)       # 1 mWh = 3.6 J = 3600 mJ

# Pilot levels, mV
CP_A = const(12000)
CP_B = const(9000)
CP_C = const(6000)
CP_D = const(3000)
CP_NEG = const(-12000)

CP_FAULT_KINDS = ('short', 'diode', 'open')
METER_FAULT_KINDS = ('timeout', 'crc', 'exception')
CONTACTOR_FAULT_KINDS = ('welded', 'stuck_open')
COOLING_FAULT_KINDS = ('pump', 'flow_switch', 'flicker')

PUMP_SPINUP_MS = const(1000)      # from the pump's start to flow at the switch
FLICKER_OPEN_MS = const(2000)     # a flickering switch: open this long (open_s overrides) ...
FLICKER_CLOSED_MS = const(300)    # ... then closed this long
UNCOOLED_RISE_MDC_AT_16A = const(15000)   # stage rise without flow at 16 A, 0.001 C (_cooling)
TAU_STILL_MS = const(240000)      # coolant standing: the stage heats and cools over minutes
TAU_FLOW_MS = const(60000)        # coolant flowing carries the rise away faster
_COUNT_MASK = const(0x3FFFFFFF)



def scaled(x, scale):
    """A number in base units (int or float) as an int in 1/scale units, rounded half away from 0."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError('expected a number, got {!r}'.format(x))
    if isinstance(x, int):
        return x * scale
    v = x * scale
    return int(v + 0.5) if v >= 0 else -int(-v + 0.5)


def pwm_limit_ma(pwm_pm):
    """Current offered by a pilot duty cycle (IEC 61851-1 Annex A), mA; -1 = digital (5 %)."""
    if 30 <= pwm_pm <= 70:
        return -1                       # 5 % nominal: current set over digital communication
    if 80 <= pwm_pm < 100:
        return 6000                     # 8-10 % reads as 6 A
    if 100 <= pwm_pm <= 850:
        return pwm_pm * 60              # 0.6 A per %
    if 850 < pwm_pm <= 960:
        return (pwm_pm - 640) * 250     # (d - 64) * 2.5 A
    if 960 < pwm_pm <= 970:
        return 80000
    return 0                            # no PWM, steady level or out of the allowed bands


def _check(args, keys):
    for k in args:
        if k not in keys:
            raise ValueError('unknown key {!r} (allowed: {})'.format(k, ', '.join(keys) or 'none'))


def _need(args, key):
    if key not in args:
        raise ValueError('missing key {!r}'.format(key))
    return args[key]


def _kind(args, kinds):
    k = _need(args, 'kind')
    if k not in kinds:
        raise ValueError('kind {!r} is not one of {}'.format(k, ', '.join(kinds)))
    return k


def _num(args, key, lo, hi, scale):
    v = _need(args, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError('{} must be a number, got {!r}'.format(key, v))
    if v < lo or v > hi:
        raise ValueError('{} = {} is out of range {} .. {}'.format(key, v, lo, hi))
    return scaled(v, scale)


# Ranges shared with the scenario validator (host_tools/scenario.py).
RANGES = {
    'voltage_v': (50, 600),
    'frequency_hz': (40, 70),
    'over_s': (0.05, 86400),
    'c': (-40, 150),
}

# The cooling events' keys, with the same words as the scenario validator
# (host_tools/scenario.py EVENTS holds an equal copy; a host test keeps them equal).
COOLING_EVENTS = {
    'cooling_fault': (('kind',), ('open_s',), {'kind': (COOLING_FAULT_KINDS, None, None),
                                               'open_s': ('num', 0.1, 60)}),
    'cooling_restore': ((), (), {}),
}


def cooling_event_problem(do, args):
    """What is wrong with a cooling event's keys, as the scenario validator words it; None if fine."""
    from core.checks import type_problem
    required, optional, specs = COOLING_EVENTS[do]
    for key in args:
        if key not in required and key not in optional:
            return 'unknown key {!r} (allowed: {})'.format(key, ', '.join(required + optional) or 'none')
    for key in required:
        if key not in args:
            return 'missing key {!r}'.format(key)
    for key in args:
        problem = type_problem(key, args[key], specs[key])
        if problem:
            return problem
    if 'open_s' in args and args.get('kind') != 'flicker':
        return 'open_s applies to kind = flicker only'
    return None


# Events the plant itself acts on; the rest (setpoint, limit, heartbeat, reboot, config)
# concern the host and the controller and are handled by the scenario driver.
PLANT_EVENTS = ('plug', 'unplug', 'ev_ready', 'ev_pause', 'ev_ventilation', 'cp_fault', 'cp_restore',
                'grid', 'grid_ramp', 'battery_temp', 'evse_temp', 'meter_fault', 'meter_restore',
                'can_loss', 'can_restore', 'contactor_fault', 'contactor_restore', 'cooling_fault',
                'cooling_restore')


# What a plant snapshot keeps (Plant.snapshot): the EV, its battery, the grid, the station's
# temperatures and the faults and settings the plant port set; everything a controller reset
# leaves physically as it was.
SNAPSHOT_VERSION = const(1)
KEPT = ('capacity_wh', 'energy_mwh', 'energy_mj', 'ev_max_charge_ma', 'ev_max_discharge_ma',
        'v2g_capable', 'battery_temp_dc', 'cable_a', 'grid_mv', 'grid_mhz', 'evse_temp_dc',
        'grid_from_events', 'held_dc', 'rise_mdc', 'rise_rem', 'cooling_fault', 'flicker_open_ms', 'meter_poll_ms',
        'plugged', 's2', 'vent', 'cp_fault', 'meter_fault', 'can_lost', 'contactor_fault',
        'import_mwh', 'import_mj', 'export_mwh', 'export_mj')


class _Ramp:
    """A linear change of one grid quantity, in integer milli-units."""

    def __init__(self):
        self.active = False
        self.start = 0
        self.target = 0
        self.t0 = 0
        self.dur = 1

    def set(self, start, target, t0, dur):
        self.active = True
        self.start = start
        self.target = target
        self.t0 = t0
        self.dur = dur if dur > 0 else 1

    def value(self, now_ms):
        el = now_ms - self.t0
        if el >= self.dur:
            self.active = False
            return self.target
        if el <= 0:
            return self.start
        # keep the product small: per-mille of the ramp done, then interpolate
        done_pm = el * 1000 // self.dur if el < 1000000 else el // (self.dur // 1000 + 1)
        return self.start + (self.target - self.start) * done_pm // 1000


class Plant:
    def __init__(self, ev=None, grid=None, config=None):
        ev = ev or {}
        grid = grid or {}
        config = config or {}
        # --- vehicle and battery ---
        self.capacity_wh = scaled(ev.get('capacity_kwh', 60.0), 1000)
        if self.capacity_wh <= 0:
            raise ValueError('capacity_kwh must be above 0')
        soc_pm = scaled(ev.get('soc_pct', 50.0), 10)
        if soc_pm < 0 or soc_pm > 1000:
            raise ValueError('soc_pct must be 0 .. 100')
        # stored energy in mWh plus a remainder in mJ: integer bookkeeping, no drift
        self.energy_mwh = self.capacity_wh * soc_pm  # Wh * pm = mWh
        self.energy_mj = 0
        self.ev_max_charge_ma = scaled(ev.get('max_charge_a', 32), 1000)
        self.ev_max_discharge_ma = scaled(ev.get('max_discharge_a', 32), 1000)
        self.v2g_capable = bool(ev.get('v2g_capable', True))
        if not self.v2g_capable:
            self.ev_max_discharge_ma = 0
        self.battery_temp_dc = scaled(ev.get('battery_temp_c', 25.0), 10)
        self.cable_a = int(ev.get('cable_a', 32))
        # --- grid ---
        # the grid the settings expect, from the settings' own schema and profile table
        nominal_v = config.get('NOMINAL_VOLTAGE_V', config_mod.SCHEMA['NOMINAL_VOLTAGE_V'][3])
        profile = grid_profiles.profile(config.get('GRID_PROFILE', config_mod.SCHEMA['GRID_PROFILE'][3]))
        if profile is None:
            raise ValueError('GRID_PROFILE must be one of ' + ', '.join(grid_profiles.NAMES))
        self.grid_mv = scaled(grid.get('voltage_v', nominal_v), 1000)
        self.grid_mhz = scaled(grid['frequency_hz'], 1000) if 'frequency_hz' in grid else profile['nominal_mhz']
        self.v_ramp = _Ramp()
        self.f_ramp = _Ramp()
        # a grid or grid_ramp event set the grid: it then stays as set across resets; until
        # then the virtual board's grid follows the settings' nominal (boards/sim/hal.py)
        self.grid_from_events = 'voltage_v' in grid or 'frequency_hz' in grid
        # --- station ---
        self.evse_temp_dc = scaled(ev.get('evse_temp_c', 25.0), 10) if 'evse_temp_c' in ev else 250
        self.held_dc = self.evse_temp_dc   # what the working cooling loop holds the stage at
        self.rise_mdc = 0                  # the stage above it, 0.001 C
        self.rise_rem = 0                  # remainder of the integration (no drift)
        self.pump_cmd = False
        self.pump_ran = False              # the pump was running at the last step
        self.pump_on_ms = 0                # when the pump started running
        self.cooling_fault = None          # None or one of COOLING_FAULT_KINDS
        self.cooling_fault_ms = 0
        self.flicker_open_ms = FLICKER_OPEN_MS
        self.meter_poll_ms = int(config.get('METER_POLL_MS', 500))
        # --- dynamic state ---
        self.plugged = False
        self.s2 = False               # EV ready (S2 closed)
        self.vent = False             # EV asks for ventilation (state D)
        self.cp_fault = None          # None, 'short', 'diode', 'open'
        self.meter_fault = None       # None, 'timeout', 'crc', 'exception'
        self.can_lost = False
        self.contactor_fault = None   # None, 'welded', 'stuck_open'
        self.contactor_cmd = False
        self.contactor_closed = False
        self.contactor_change_ms = 0
        self.ev_ma = 0                # current at the meter: + into the EV
        self.pwm_pm = 1000
        self.request_ma = 0
        self.last_request_ma = 0
        # meter registers and last valid reading
        self.import_mwh = 0
        self.import_mj = 0
        self.export_mwh = 0
        self.export_mj = 0
        self.meter_read_ms = -NEVER   # time of the last valid poll
        self.meter_next_ms = 0
        self.meter_ma = 0
        self.meter_mv = self.grid_mv
        self.meter_mhz = self.grid_mhz
        self.meter_valid = False
        self.bms_frame_ms = -NEVER
        self.bms_next_ms = 0
        self.now_ms = 0

    # ---------------------------------------------------------------- events
    def apply_event(self, do, args, now_ms=None):
        """Apply one scenario event (keys as in [[at]], without t_s). ValueError names the problem."""
        if now_ms is None:
            now_ms = self.now_ms
        if not isinstance(args, dict):
            raise ValueError('event arguments must be a table')
        if do in ('plug', 'unplug', 'ev_ready', 'ev_pause', 'ev_ventilation', 'cp_restore',
                  'can_loss', 'can_restore', 'contactor_restore'):
            _check(args, ())
            if do == 'plug':
                self.plugged = True
                self.s2 = False
                self.vent = False
            elif do == 'unplug':
                self.plugged = False
                self.s2 = False
                self.vent = False
            elif do == 'ev_ready':
                self.s2 = True
                self.vent = False
            elif do == 'ev_pause':
                self.s2 = False
                self.vent = False
            elif do == 'ev_ventilation':
                self.s2 = True
                self.vent = True
            elif do == 'cp_restore':
                self.cp_fault = None
            elif do == 'can_loss':
                self.can_lost = True
            elif do == 'can_restore':
                self.can_lost = False
            else:
                self.contactor_fault = None
        elif do == 'cp_fault':
            _check(args, ('kind',))
            self.cp_fault = _kind(args, CP_FAULT_KINDS)
        elif do == 'meter_fault':
            _check(args, ('kind',))
            self.meter_fault = _kind(args, METER_FAULT_KINDS)
        elif do == 'meter_restore':
            # the kind is optional here: restoring clears whatever fault is active
            _check(args, ('kind',))
            if 'kind' in args:
                _kind(args, METER_FAULT_KINDS)
            self.meter_fault = None
        elif do == 'contactor_fault':
            _check(args, ('kind',))
            self.contactor_fault = _kind(args, CONTACTOR_FAULT_KINDS)
            if self.contactor_fault == 'welded':
                self.contactor_closed = True
        elif do == 'grid':
            _check(args, ('voltage_v', 'frequency_hz'))
            if not args:
                raise ValueError('grid needs voltage_v and/or frequency_hz')
            if 'voltage_v' in args:
                lo, hi = RANGES['voltage_v']
                self.grid_mv = _num(args, 'voltage_v', lo, hi, 1000)
                self.v_ramp.active = False
            if 'frequency_hz' in args:
                lo, hi = RANGES['frequency_hz']
                self.grid_mhz = _num(args, 'frequency_hz', lo, hi, 1000)
                self.f_ramp.active = False
            self.grid_from_events = True
        elif do == 'grid_ramp':
            _check(args, ('voltage_v', 'frequency_hz', 'over_s'))
            lo, hi = RANGES['over_s']
            dur = _num(args, 'over_s', lo, hi, 1000)
            if 'voltage_v' not in args and 'frequency_hz' not in args:
                raise ValueError('grid_ramp needs voltage_v or frequency_hz')
            if 'voltage_v' in args:
                lo, hi = RANGES['voltage_v']
                self.v_ramp.set(self.grid_mv, _num(args, 'voltage_v', lo, hi, 1000), now_ms, dur)
            if 'frequency_hz' in args:
                lo, hi = RANGES['frequency_hz']
                self.f_ramp.set(self.grid_mhz, _num(args, 'frequency_hz', lo, hi, 1000), now_ms, dur)
            self.grid_from_events = True
        elif do == 'battery_temp':
            _check(args, ('c',))
            lo, hi = RANGES['c']
            self.battery_temp_dc = _num(args, 'c', lo, hi, 10)
        elif do == 'evse_temp':
            _check(args, ('c',))
            lo, hi = RANGES['c']
            self.held_dc = _num(args, 'c', lo, hi, 10)
            self.evse_temp_dc = self.held_dc + self.rise_mdc // 100
        elif do in COOLING_EVENTS:
            problem = cooling_event_problem(do, args)
            if problem:
                raise ValueError(problem)
            if do == 'cooling_restore':
                self.cooling_fault = None
            else:
                self.cooling_fault = args['kind']
                self.cooling_fault_ms = now_ms
                self.flicker_open_ms = scaled(args.get('open_s', FLICKER_OPEN_MS / 1000), 1000)
                if self.cooling_fault == 'pump':
                    self.pump_ran = False      # it stops now: no flow from here on
        else:
            raise ValueError('unknown plant event {!r}'.format(do))

    # ---------------------------------------------------------------- derived state
    def soc_pm(self):
        """State of charge, 0.1 % (per-mille), rounded down."""
        return self.energy_mwh // self.capacity_wh

    def bms_charge_ma(self):
        """BMS charge allowance: full up to 90 % SoC, tapering linearly to 0 at 100 %."""
        return self._charge_allow(self.energy_mwh // self.capacity_wh)

    def _charge_allow(self, soc):
        if soc >= 1000:
            return 0
        if soc <= 900:
            return self.ev_max_charge_ma
        return self.ev_max_charge_ma * (1000 - soc) // 100

    def bms_discharge_ma(self):
        """BMS discharge allowance: full above 10 % SoC, tapering to 0 at 2 %."""
        return self._discharge_allow(self.energy_mwh // self.capacity_wh)

    def _discharge_allow(self, soc):
        if not self.v2g_capable:
            return 0
        if soc <= 20:
            return 0
        if soc >= 100:
            return self.ev_max_discharge_ma
        return self.ev_max_discharge_ma * (soc - 20) // 80

    def cp_state(self):
        """The pilot state a good EVSE would read ('A'..'F'), for display."""
        hi = self.cp_high_mv()
        if hi <= -10000:
            return 'F'
        if hi >= 10500:
            return 'A'
        if hi >= 7500:
            return 'B'
        if hi >= 4500:
            return 'C'
        if hi >= 1500:
            return 'D'
        return 'E'

    def cp_high_mv(self):
        if self.pwm_pm <= 0:
            return CP_NEG          # the EVSE holds -12 V (state F)
        if self.cp_fault == 'short':
            return 0
        if self.cp_fault == 'open' or not self.plugged:
            return CP_A
        if self.vent:
            return CP_D
        if self.s2:
            return CP_C
        return CP_B

    def cp_low_mv(self):
        return self._cp_low(self.cp_high_mv())

    def _cp_low(self, hi):
        if hi == 0:
            return 0
        if self.plugged and self.cp_fault == 'diode' and hi > 0:
            return -hi              # no diode: the EV's resistors load the negative half too
        return CP_NEG

    def ev_target_ma(self):
        """Current the EV aims for under the present pilot, request and its own limits."""
        if not self.plugged or not self.s2 or self.cp_fault is not None:
            return 0
        offered = pwm_limit_ma(self.pwm_pm)
        if offered == 0:
            return 0
        req = self.request_ma
        if self.can_lost:
            # plain IEC 61851 vehicle: charge at the pilot limit, never export unsupervised
            req = offered if offered > 0 else 0
        if req > 0:
            t = req
            if offered > 0 and t > offered:
                t = offered
            lim = self._charge_allow(self.energy_mwh // self.capacity_wh)
            return t if t < lim else lim
        if req < 0:
            lim = self._discharge_allow(self.energy_mwh // self.capacity_wh)
            t = -req
            if offered > 0 and t > offered:
                t = offered
            return -(t if t < lim else lim)
        return 0

    # ---------------------------------------------------------------- physics
    def step(self, now_ms, dt_ms, outputs):
        """Advance the plant by dt_ms from now_ms under the controller's outputs."""
        self.pwm_pm = outputs.pwm_pm
        if not self.can_lost:
            self.request_ma = outputs.request_ma
        # the contactor (_contactor(), written out: this runs every control step)
        cmd = outputs.contactor
        if cmd != self.contactor_cmd:
            self.contactor_cmd = cmd
            self.contactor_change_ms = now_ms
        if self.contactor_fault is None:
            self.contactor_closed = cmd
        else:
            self._contactor(now_ms, cmd)
        end = now_ms + dt_ms
        if self.v_ramp.active:
            self.grid_mv = self.v_ramp.value(end)
        if self.f_ramp.active:
            self.grid_mhz = self.f_ramp.value(end)
        # EV current: first-order lag towards the target, zero with the contacts apart
        if not self.contactor_closed:
            self.ev_ma = 0
        else:
            target = self.ev_target_ma()
            diff = target - self.ev_ma
            mag = diff if diff > 0 else -diff
            d = mag * dt_ms // EV_TAU_MS
            if mag <= EV_SETTLE_MA or d >= mag:
                self.ev_ma = target     # settled: the EV's regulator holds its setpoint
            elif diff > 0:
                self.ev_ma += d
            else:
                self.ev_ma -= d
        if self.ev_ma:
            self._energy(dt_ms)
        self._cooling(now_ms, dt_ms, getattr(outputs, 'cooling', False))
        self.now_ms = end

    # ---------------------------------------------------------------- cooling loop
    def pump_running(self):
        return self.pump_cmd and self.cooling_fault != 'pump'

    def flowing(self, now_ms):
        # the pump as it ran at the last step (a restored pump starts at the next one)
        return self.pump_ran and now_ms - self.pump_on_ms >= PUMP_SPINUP_MS

    def flow_switch(self, now_ms):
        """The flow switch: closed while coolant flows, unless it is faulted."""
        if not self.flowing(now_ms) or self.cooling_fault == 'flow_switch':
            return False
        if self.cooling_fault == 'flicker':
            cycle = self.flicker_open_ms + FLICKER_CLOSED_MS
            return (now_ms - self.cooling_fault_ms) % cycle >= self.flicker_open_ms
        return True

    def _cooling(self, now_ms, dt_ms, cmd):
        self.pump_cmd = cmd
        running = cmd and self.cooling_fault != 'pump'      # pump_running()
        if running and not self.pump_ran:
            self.pump_on_ms = now_ms       # started, or restored after a pump fault: spins up
        self.pump_ran = running
        if running and now_ms - self.pump_on_ms >= PUMP_SPINUP_MS:   # flowing(now_ms)
            target = 0
            tau = TAU_FLOW_MS
        else:
            ma = self.ev_ma
            da = ma // 100 if ma >= 0 else -ma // 100   # 0.1 A
            # UNCOOLED_RISE_MDC_AT_16A * (da / 160)^2, reduced (15000 / 25600 = 75 / 128) so
            # that 80 A stays a small int
            target = da * da * 75 // 128
            tau = TAU_STILL_MS
        # first order, integrated exactly in integers: the remainder carries to the next step
        rise = self.rise_mdc
        num = (target - rise) * dt_ms + self.rise_rem
        d = num // tau
        self.rise_rem = num - d * tau
        rise += d
        self.rise_mdc = rise
        self.evse_temp_dc = self.held_dc + rise // 100

    def _contactor(self, now_ms, cmd):
        if cmd != self.contactor_cmd:
            self.contactor_cmd = cmd
            self.contactor_change_ms = now_ms
        if self.contactor_fault == 'welded':
            self.contactor_closed = True
        elif self.contactor_fault == 'stuck_open':
            self.contactor_closed = False
        else:
            # the contacts move within CONTACTOR_MS of the command, inside one control step,
            # so the auxiliary contact reports the new position at the next sample
            self.contactor_closed = cmd

    def _energy(self, dt_ms):
        # every step with current: the sums in locals, each attribute read and written once
        ma = self.ev_ma
        if ma == 0:
            return
        # power in mW without large intermediates: (0.1 V) * mA / 10
        p_mw = (self.grid_mv // 100) * (ma if ma > 0 else -ma) // 10
        mj = (p_mw // 1000) * dt_ms + ((p_mw % 1000) * dt_ms) // 1000  # W*ms + mW*ms/1000 = mJ
        e = self.energy_mj
        if ma > 0:
            e += mj
            m = self.import_mj + mj
            if m >= MJ_PER_MWH:
                self.import_mwh += m // MJ_PER_MWH
                m %= MJ_PER_MWH
            self.import_mj = m
        else:
            e -= mj
            m = self.export_mj + mj
            if m >= MJ_PER_MWH:
                self.export_mwh += m // MJ_PER_MWH
                m %= MJ_PER_MWH
            self.export_mj = m
        mwh = self.energy_mwh
        if e >= MJ_PER_MWH or e <= -MJ_PER_MWH:
            q = e // MJ_PER_MWH if e > 0 else -((-e) // MJ_PER_MWH)
            mwh += q
            e -= q * MJ_PER_MWH
        self.energy_mj = e
        full = self.capacity_wh * MWH_PER_WH
        if mwh > full:
            mwh = full
        elif mwh < 0:
            mwh = 0
        self.energy_mwh = mwh

    # ---------------------------------------------------------------- sensors
    def fill_inputs(self, inp, now_ms):
        """Write what the controller's sensors read at now_ms into its Inputs object."""
        hi = self.cp_high_mv()
        inp.cp_high_mv = hi
        inp.cp_low_mv = self._cp_low(hi)
        plugged = self.plugged
        inp.pp_limit_a = self.cable_a if plugged else 0
        inp.contactor_closed = self.contactor_closed
        # meter: polled every meter_poll_ms; a faulted poll leaves the last reading to age
        if now_ms >= self.meter_next_ms:
            self.meter_next_ms = now_ms + self.meter_poll_ms
            if self.meter_fault is None:
                self.meter_read_ms = now_ms
                self.meter_ma = self.ev_ma
                self.meter_mv = self.grid_mv
                self.meter_mhz = self.grid_mhz
                self.meter_valid = True
            else:
                self.meter_valid = False
        inp.meter_ok = self.meter_valid
        age = now_ms - self.meter_read_ms
        inp.meter_age_ms = age if age <= NEVER else NEVER
        inp.meter_ma = self.meter_ma
        inp.meter_mv = self.meter_mv
        inp.meter_mhz = self.meter_mhz
        inp.evse_temp_dc = self.evse_temp_dc
        if self.pump_ran and self.flow_switch(now_ms):   # no flow without the pump (flowing())
            inp.cooling_count = (inp.cooling_count + 1) & _COUNT_MASK
        # BMS status frames every BMS_PERIOD_MS while the bus works and an EV is connected
        if not plugged:
            self.bms_frame_ms = -NEVER
        elif not self.can_lost and now_ms >= self.bms_next_ms:
            self.bms_next_ms = now_ms + BMS_PERIOD_MS
            self.bms_frame_ms = now_ms
        age = now_ms - self.bms_frame_ms
        inp.bms_age_ms = age if age <= NEVER else NEVER
        soc = self.energy_mwh // self.capacity_wh
        inp.bms_soc_pm = soc
        inp.bms_temp_dc = self.battery_temp_dc
        inp.bms_max_charge_ma = self._charge_allow(soc)
        inp.bms_max_discharge_ma = self._discharge_allow(soc)
        inp.bms_capacity_wh = self.capacity_wh

    # ---------------------------------------------------------------- across a controller reset
    def snapshot(self):
        """The plant's own state as plain values, for the board to keep while the controller
        resets (hal.py keep_plant): times are kept relative to the plant's clock, since the
        next boot's clock starts elsewhere. The controller's outputs (pilot, request, contactor
        and pump commands) are not part of it: a reset drops them."""
        now = self.now_ms
        snap = {'v': SNAPSHOT_VERSION}
        for k in KEPT:
            snap[k] = getattr(self, k)
        snap['cooling_fault_age'] = now - self.cooling_fault_ms
        for name in ('v_ramp', 'f_ramp'):
            r = getattr(self, name)
            snap[name] = [r.start, r.target, now - r.t0, r.dur] if r.active else None
        return snap

    def restore(self, snap, now_ms):
        """Take a snapshot back at now_ms (the new boot's clock). ValueError names what is
        wrong with it; the plant is then unchanged."""
        if not isinstance(snap, dict) or snap.get('v') != SNAPSHOT_VERSION:
            raise ValueError('not a plant snapshot of version {}'.format(SNAPSHOT_VERSION))
        vals = {}
        for k in KEPT:
            if k not in snap:
                raise ValueError('plant snapshot without {!r}'.format(k))
            v, fresh = snap[k], getattr(self, k)
            if not (type(v) is type(fresh) or (fresh is None and (v is None or isinstance(v, str)))):
                raise ValueError('plant snapshot: {} = {!r}'.format(k, v))
            vals[k] = v
        ramps = {}
        for name in ('v_ramp', 'f_ramp'):
            r = snap.get(name)
            if r is not None and (not isinstance(r, list) or len(r) != 4):
                raise ValueError('plant snapshot: {} = {!r}'.format(name, r))
            ramps[name] = r
        age = snap.get('cooling_fault_age', 0)
        if not isinstance(age, int):
            raise ValueError('plant snapshot: cooling_fault_age = {!r}'.format(age))
        for k in vals:
            setattr(self, k, vals[k])
        for name in ramps:
            r = ramps[name]
            ramp = getattr(self, name)
            if r is None:
                ramp.active = False
            else:
                ramp.set(r[0], r[1], now_ms - r[2], r[3])
        self.cooling_fault_ms = now_ms - age
        # a welded contactor stays closed through the reset; any other opens with its drive
        self.contactor_closed = self.contactor_fault == 'welded'
        self.contactor_cmd = False
        self.ev_ma = 0
        # the meter and the BMS report afresh from the first step on
        self.meter_mv = self.grid_mv
        self.meter_mhz = self.grid_mhz
        self.now_ms = now_ms

    # ---------------------------------------------------------------- reporting
    def energy_in_mwh(self):
        return self.import_mwh

    def energy_out_mwh(self):
        return self.export_mwh
