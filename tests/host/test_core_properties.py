"""Property tests of the control core under CPython (hypothesis).

Random sequences of plant inputs, host commands (with repeated txns), heartbeat
gaps and time steps drive Controller.step; a small obedient plant closes the
loop (the contactor follows its command one step later, the vehicle draws the
request of the previous step). After every step the safety rules must hold.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import host_tools  # noqa: F401  (makes `core` the firmware's core package)
from core import config
from core import limits as L
from core import pilot as P
from core import setpoint as S
from core.controller import DIODE_SAMPLES, OPS, Controller, Inputs

EXAMPLES = 300
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _DroopOnly:
    """The grid slot with no caps and no trip, only a droop offset (mA, + = more charge):
    stands in for core.grid.GridProtection, which the controller steps each control step."""

    allow_charge_ma = L.NO_LIMIT
    allow_discharge_ma = L.NO_LIMIT
    trip_code = 0

    def __init__(self, droop_ma):
        self.droop_ma = droop_ma

    def step(self, now_ms, mv, mhz, ok):
        pass

    def pending(self):
        return False


LEVELS_MV = (12000, 9000, 6000, 6000, 6000, 3000, 0, -12000, 10500)
TXNS = ('t0', 't1', 't2', 't3', 't4', 't5')

plant_change = st.one_of(
    st.tuples(st.just('cp'), st.sampled_from(LEVELS_MV)),
    st.tuples(st.just('soc'), st.integers(-60, 60)),
    st.tuples(st.just('meter_age'), st.sampled_from((100, 100, 2900, 3100, 20000))),
    st.tuples(st.just('bms_age'), st.sampled_from((50, 50, 900, 1100, 50000))),
    st.tuples(st.just('evse_temp'), st.integers(200, 800)),
    st.tuples(st.just('batt_temp'), st.integers(100, 600)),
    st.tuples(st.just('pp'), st.sampled_from((0, 13, 20, 32, 63))),
    st.tuples(st.just('diode'), st.booleans()),
    st.tuples(st.just('bms_dis'), st.sampled_from((0, 10000, 32000, 50000))),
)
command = st.one_of(
    st.tuples(st.just('soc_target'), st.sampled_from(TXNS),
              st.fixed_dictionaries({'soc_pct': st.integers(0, 100)},
                                    optional={'mode': st.sampled_from(('auto', 'charge', 'discharge'))})),
    st.tuples(st.just('limit'), st.sampled_from(TXNS),
              st.fixed_dictionaries({'charge_a': st.one_of(st.none(), st.integers(0, 40)),
                                     'discharge_a': st.one_of(st.none(), st.integers(0, 40))})),
    st.tuples(st.just('charge_only'), st.sampled_from(TXNS), st.fixed_dictionaries({'on': st.booleans()})),
    st.tuples(st.just('stop'), st.sampled_from(TXNS), st.just({})),
    st.tuples(st.just('start'), st.sampled_from(TXNS), st.just({})),
    st.tuples(st.just('config_set'), st.sampled_from(TXNS),
              st.fixed_dictionaries({'MAX_DISCHARGE_AMPS': st.integers(0, 40)})),
)
action = st.one_of(
    st.tuples(st.just('run'), st.integers(1, 120)),
    st.tuples(st.just('plant'), plant_change),
    st.tuples(st.just('cmd'), command),
    st.tuples(st.just('hb'), st.booleans()),
    st.tuples(st.just('gap'), st.integers(51, 3000)),
)
scenario = st.tuples(
    st.one_of(st.integers(150, 550), st.integers(150, 1000)),   # starting SoC, per-mille (mostly near the floor)
    st.sampled_from((1, 2, 5)),                 # HEARTBEAT_TIMEOUT_S
    st.booleans(),                              # VENTILATION_AVAILABLE
    st.integers(0, 40),                         # MIN_SOC_THRESHOLD
    st.lists(action, min_size=5, max_size=60),
)
# grid droop slot, mA (+ = more charge), picked from the starting SoC so the draws above stay as they were
DROOPS = (0, 0, 0, -5000, -40000, -80000, 40000)

COUNTS = {'examples': 0, 'steps': 0, 'discharge_steps': 0, 'charge_steps': 0, 'repeated_txns': 0,
          'hb_lost_steps': 0, 'floor_steps': 0, 'at_floor_steps': 0, 'faults': 0, 'closes': 0,
          'no_reverse_droop_steps': 0}


def _snapshot(c):
    sp = c.setpoint
    return (sp.target_pm, sp.mode, c.csms_charge_ma, c.csms_discharge_ma, c.stopped, c.cmd_charge_only,
            c.fallback, c.cfg.config_hash(), c.weld)


class World:
    def __init__(self, soc, hb_s, vent, min_soc):
        cfg = config.validate({'HEARTBEAT_TIMEOUT_S': hb_s, 'VENTILATION_AVAILABLE': vent,
                               'MIN_SOC_THRESHOLD': min_soc, 'RESERVE_MARGIN': 20})
        self.c = Controller(cfg)
        i = Inputs()
        i.cp_high_mv = 6000
        i.pp_limit_a = 32
        i.meter_ok = True
        i.meter_age_ms = 100
        i.bms_age_ms = 50
        i.bms_soc_pm = soc
        i.bms_max_charge_ma = 32000
        i.bms_max_discharge_ma = 32000
        i.bms_capacity_wh = 60000
        i.evse_temp_dc = 300
        i.bms_temp_dc = 250
        self.i = i
        self.t = 0
        self.hb = True
        self.diode = True
        self.results = {}
        self.prev_req = 0
        self.prev_soc_low = False
        self.prev_pwm = P.PWM_OFF
        self.prev_contactor = False
        self.diode_seen = []       # per step: diode present while the last step's PWM ran
        self.droop = 0

    def step(self):
        c = self.c
        i = self.i
        self.t += 50
        if self.hb:
            c.heartbeat(self.t)
        hb_age = self.t - c._hb_last
        i.cp_low_mv = -12000 if self.diode else -2000
        self.diode_seen.append(self.diode and 0 < self.prev_pwm < P.PWM_OFF)
        del self.diode_seen[:-DIODE_SAMPLES]
        o = c.step(self.t, i)
        self.prev_pwm = o.pwm_pm
        self.check(o, hb_age)
        # plant: feedback follows the command, the vehicle draws last step's request,
        # the battery moves 0.1-0.2 % per step with the current (fast, so the floor and
        # targets are reached within an example)
        i.meter_ma = self.prev_req if i.contactor_closed else 0
        if i.meter_ma > 0 and i.bms_soc_pm < 1000:
            i.bms_soc_pm += 1
        elif i.meter_ma < 0 and i.bms_soc_pm > 1:
            i.bms_soc_pm -= 2
        i.contactor_closed = o.contactor
        self.prev_req = o.request_ma

    def check(self, o, hb_age):
        c = self.c
        i = self.i
        cfg = c.cfg
        COUNTS['steps'] += 1
        raw = P.level(i.cp_high_mv)
        soc_known = i.bms_age_ms <= cfg.can_timeout_ms
        floor = cfg.floor_pm
        # energy only in C (or D with ventilation): every other level opens in the same step
        if raw not in (P.C, P.D) or (raw == P.D and not cfg.ventilation):
            assert not o.contactor, (raw, o.mode)
        if not o.contactor:
            assert o.request_ma == 0
        # never beyond the discharge ceiling or the limit in force
        assert o.request_ma >= -cfg.max_discharge_ma
        assert o.request_ma >= -o.limit_discharge_ma
        assert o.request_ma <= o.limit_charge_ma
        if o.request_ma < 0:
            COUNTS['discharge_steps'] += 1
            assert soc_known, 'discharge without BMS data'
            assert i.bms_soc_pm > floor, (i.bms_soc_pm, floor)
            assert not (c.fallback or c.cmd_charge_only), 'discharge in charge-only'
            assert i.meter_age_ms <= cfg.meter_stale_ms, 'discharge with a stale meter'
            assert hb_age <= cfg.heartbeat_timeout_ms, 'discharge without heartbeat'
            assert not c.stopped
        elif o.request_ma > 0:
            COUNTS['charge_steps'] += 1
        if hb_age > cfg.heartbeat_timeout_ms:
            COUNTS['hb_lost_steps'] += 1
            assert o.request_ma >= 0 and o.errors & 0x10
        if o.mode == 'fault':
            COUNTS['faults'] += 1
        # the contactor closes only after DIODE_SAMPLES diode readings with PWM running
        if o.contactor and not self.prev_contactor:
            COUNTS['closes'] += 1
            assert len(self.diode_seen) == DIODE_SAMPLES and all(self.diode_seen), self.diode_seen
        self.prev_contactor = o.contactor
        # charge-only (fallback, command, or target mode 'charge'): droop never reverses the flow
        if c.fallback or c.cmd_charge_only or c.setpoint.mode == S.MODE_CHARGE:
            assert o.request_ma >= 0, (o.request_ma, c.grid_droop_ma)
            if self.droop < 0 and o.contactor:
                COUNTS['no_reverse_droop_steps'] += 1
        low = soc_known and i.bms_soc_pm <= floor
        if low:
            COUNTS['floor_steps'] += 1
            if i.bms_soc_pm == floor:
                COUNTS['at_floor_steps'] += 1
        # the vehicle follows one step late: at most one step of discharge current at the floor
        if low and self.prev_soc_low and i.contactor_closed:
            assert self.prev_req >= 0
        self.prev_soc_low = low

    def plant(self, what, v):
        i = self.i
        if what == 'cp':
            i.cp_high_mv = v
        elif what == 'soc':
            i.bms_soc_pm = min(1000, max(0, i.bms_soc_pm + v))
        elif what == 'meter_age':
            i.meter_age_ms = v
        elif what == 'bms_age':
            i.bms_age_ms = v
        elif what == 'evse_temp':
            i.evse_temp_dc = v
        elif what == 'batt_temp':
            i.bms_temp_dc = v
        elif what == 'pp':
            i.pp_limit_a = v
        elif what == 'diode':
            self.diode = v
        elif what == 'bms_dis':
            i.bms_max_discharge_ma = v
        elif what == 'droop':
            self.droop = v
            self.c.grid = _DroopOnly(v)

    def command(self, op, txn, args):
        c = self.c
        before = _snapshot(c)
        res = c.command(self.t, txn, op, dict(args))
        if txn in self.results:
            COUNTS['repeated_txns'] += 1
            assert res == self.results[txn]
            assert _snapshot(c) == before, 'a repeated txn changed state'
        else:
            self.results[txn] = res
            if not res[0]:
                assert _snapshot(c) == before, 'a refused command changed state'


@PROFILE
@given(scenario)
def _run(sc):
    soc, hb_s, vent, min_soc, actions = sc
    w = World(soc, hb_s, vent, min_soc)
    w.plant('droop', DROOPS[soc % len(DROOPS)])
    COUNTS['examples'] += 1
    # start with a discharge plan so the interesting paths are reached
    w.command('soc_target', 'init', {'soc_pct': 30})
    for _ in range(10):
        w.step()
    for kind, arg in actions:
        if kind == 'run':
            for _ in range(arg):
                w.step()
        elif kind == 'plant':
            w.plant(arg[0], arg[1])
            w.step()
        elif kind == 'cmd':
            w.command(arg[0], arg[1], arg[2])
            w.step()
        elif kind == 'hb':
            w.hb = arg
            w.step()
        else:
            # a late step (the scheduler stalled): time jumps
            w.t += arg - 50
            w.step()


def test_core_safety_properties():
    for k in COUNTS:
        COUNTS[k] = 0
    _run()
    print('core properties:', ', '.join('{}={}'.format(k, v) for k, v in COUNTS.items()))
    assert COUNTS['examples'] == EXAMPLES
    # the properties were exercised, not vacuously true
    assert COUNTS['discharge_steps'] > 1000
    assert COUNTS['charge_steps'] > 1000
    assert COUNTS['repeated_txns'] > 50
    assert COUNTS['hb_lost_steps'] > 100
    assert COUNTS['floor_steps'] > 100
    assert COUNTS['at_floor_steps'] > 20
    assert COUNTS['faults'] > 100
    assert COUNTS['closes'] > 100
    assert COUNTS['no_reverse_droop_steps'] > 100


# ---------------------------------------------------------------- hostile host input
# integers too long for CPython's int-to-text limit (built lazily: hypothesis prints strategies)
_huge = st.sampled_from((1, -1)).map(lambda sign: sign * 10 ** 5000)
_odd_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                        st.sampled_from((10 ** 400, float('inf'), float('nan'), True, False)), _huge)
_odd_scalar = st.one_of(_odd_number, st.none(), st.text(max_size=60),
                        st.sampled_from(('auto', 'charge', 'MAX_CHARGE_AMPS', 'PHASES')))
_odd_value = st.recursive(_odd_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=6)
_odd_key = st.one_of(st.sampled_from(('soc_pct', 'mode', 'charge_a', 'discharge_a', 'on', 'keys',
                                      'MAX_CHARGE_AMPS', 'MAX_DISCHARGE_AMPS', 'PHASES', 'METER_ADDRESS',
                                      'GRID_RAMP_S', 'GRID_PROFILE', 'FREQ_DROOP_ENABLED')),
                     st.text(max_size=8), st.integers(), st.none(), st.just((1, 2)),
                     st.sampled_from((1.5, float('nan'))), _huge)
_odd_args = st.one_of(st.dictionaries(_odd_key, _odd_value, max_size=4), _odd_value)
_odd_op = st.one_of(st.sampled_from(OPS), _odd_scalar, st.lists(st.integers(), max_size=2))


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(_odd_op, _odd_args), min_size=1, max_size=8))
def test_commands_never_raise_and_refusals_change_nothing(cmds):
    c = Controller(config.validate({}))
    i = Inputs()
    c.step(0, i)
    t = 0
    for k, (op, args) in enumerate(cmds):
        before = _snapshot(c)
        res = c.command(t, 'h{}'.format(k), op, args)
        assert isinstance(res, tuple) and len(res) == 4
        ok, code, msg, data = res
        assert isinstance(msg, str) and len(msg) < 2000
        if not ok:
            assert code in ('V2G-400', 'V2G-301', 'V2G-011'), res
            assert _snapshot(c) == before
        t += 50
        c.step(t, i)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.one_of(st.dictionaries(_odd_key, _odd_value, max_size=5), _odd_value))
def test_config_check_never_raises(changes):
    cfg, errs = config.check(changes)
    assert (cfg is None) == bool(errs)
    for key, why in errs:
        assert isinstance(key, str) and isinstance(why, str)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=80),
                 st.builds(lambda k, v: '{"%s": %s}' % (k, v),
                           st.sampled_from(config.KEYS),
                           st.sampled_from(('1e999', '-1e999', 'NaN', 'Infinity', '[1]', '{}', 'null', 'true',
                                            '"x"', '1' * 400, '-0', '0.0000001', '1e-999'))),
                 st.binary(max_size=40)))
def test_load_json_raises_only_config_error(text):
    try:
        config.load_json(text)
    except config.ConfigError as e:
        assert e.errors
