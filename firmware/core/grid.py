"""Grid protection: voltage/frequency trips, enter service, frequency-watt droop.

Pure and integer: one step() per control step with the latest meter reading.
It allocates nothing in step() once constructed (tests check it under
heap_lock). docs/grid.md is the reference for every rule below.

State machine:
  WAITING    no energy transfer (V2G-507) until the grid stays inside the
             enter-service window for the enter-service delay. Also the boot state.
  RAMP       the allowed current rises linearly from 0 to full over the ramp time.
  IN_SERVICE full current allowed.
  TRIPPED    a trip stage ran its clearing time: no energy transfer, the trip's
             code (V2G-503..506) active until the first sample back inside the
             enter-service window, then WAITING.
Trip stages (and the droop) run in RAMP and IN_SERVICE only.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import errors
from core import meter_map
from core import grid_profiles
from core.grid_profiles import MEAN_BLOCK_MS, MEAN_BLOCKS, OF, OV, UV

WAITING = const(0)
RAMP = const(1)
IN_SERVICE = const(2)
TRIPPED = const(3)
STATE_NAMES = ('waiting', 'ramp', 'in_service', 'tripped')

_CODE_OF_KIND = (errors.E503, errors.E504, errors.E505, errors.E506)

_NO_EVENTS = ()
_EV_CAP = const(8)          # events kept until pop_events()
_DECAY_BITS = const(16)     # filter table covers dt up to 2**16 - 1 ms
_Q = const(15)              # fixed point of the filter's decay factors
_ELAPSED_CAP = const(1 << 29)   # saturate timers so they stay small ints


def _check(name, value, lo, hi):
    if value is True or value is False or not isinstance(value, int):
        raise ValueError('grid: {} must be an integer, got {!r}'.format(name, value))
    if value < lo or value > hi:
        raise ValueError('grid: {} = {} out of range {}..{}'.format(name, value, lo, hi))


def _clamp(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def _mul_q15(x, d):
    """x * d / 2**15 truncated toward zero, without leaving small-int range.

    |x| < 2**24 and 0 <= d <= 2**15: x is split so no partial product reaches 2**30
    (MicroPython's small-int limit on a 32-bit board; beyond it ints allocate).
    """
    neg = x < 0
    if neg:
        x = -x
    r = (((x >> 10) * d) >> 5) + (((x & 1023) * d) >> 15)
    return -r if neg else r


def _profile(profile_name):
    p = grid_profiles.profile(profile_name)
    if p is None:
        raise ValueError('grid: unknown profile {!r} (one of {})'.format(
            profile_name, ', '.join(sorted(grid_profiles.NAMES))))
    return p


def values_in_force(profile_name, deadband_mhz, droop_mpct):
    """(deadband_mhz, droop_mpct) as the profile applies them: each clamped into the
    profile's adjustable range (FREQ_DEADBAND_HZ 0.036 Hz becomes 0.2 Hz on EN50549_50HZ)."""
    p = _profile(profile_name)
    return (_clamp(deadband_mhz, p['db_mhz'][0], p['db_mhz'][1]),
            _clamp(droop_mpct, p['droop_mpct'][0], p['droop_mpct'][1]))


def trip_decision_ms(clearing_ms, step_ms=50, sense_ms=0):
    """Time from the first outside reading to the trip decision with steps of step_ms,
    when a grid step may be seen up to sense_ms late: the last step at which the trip
    still falls within the clearing time counted from the grid step (150 ms for 160 ms
    at 50 ms steps and no sensing delay; 0, the first reading, once sense_ms + one step
    passes the clearing time)."""
    d = clearing_ms - sense_ms - step_ms
    if d < 0:
        return 0
    return (d // step_ms + 1) * step_ms


def worst_trip_ms(clearing_ms, step_ms=50, sense_ms=0):
    """Latest trip counted from the grid step (on a control step): the decision plus
    the time the step may take to show in a reading."""
    return trip_decision_ms(clearing_ms, step_ms, sense_ms) + sense_ms


def meter_sense_ms(cfg, step_ms=50):
    """The meter task's worst delay from a grid step to a reading showing it
    (core/meter_map.py sense_ms) for the settings in force."""
    return meter_map.sense_ms(meter_map.model_from_name(cfg.meter_model), cfg.meter_baud, step_ms)


def shortest_clearing_ms(profile_name):
    """The profile's fastest trip stage, ms."""
    return min(s[2] for s in _profile(profile_name)['stages'])


def _dec(v):
    """Milli-units as decimal text without trailing zeros: 200 -> '0.2', 5000 -> '5'."""
    t = '{}.{:03d}'.format(v // 1000, v % 1000).rstrip('0')
    return t[:-1] if t.endswith('.') else t


def settings_notes(profile_name, meter_poll_ms, deadband_mhz, droop_mpct, step_ms=50,
                   meter_model='SDM630', meter_baud=38400):
    """Settings that are valid but do less than they read, as text ([] when none).

    Not refusals (the settings are taken); the controller reports them beside its status.
    Sampling (docs/grid.md, "Meter sampling"): the meter task reads voltage and frequency
    in a cycle of its own (core/meter_map.py), so a grid step shows in a reading up to
    S = meter_sense_ms() later, and every stage is decided S early
    (trip_decision_ms). METER_POLL_MS sets only the snapshot of current and energy."""
    p = _profile(profile_name)
    out = []
    model = meter_map.model_from_name(meter_model)
    sense = meter_map.sense_ms(model, meter_baud, step_ms)
    every = meter_map.read_every_ms(model, meter_baud, step_ms)
    seen = []
    for stage in p['stages']:
        clr = stage[2]
        if clr in seen:
            continue
        seen.append(clr)
        worst = worst_trip_ms(clr, step_ms, sense)
        if worst > clr:
            out.append('METER_BAUD {} ({}): voltage and frequency are read at least every {} ms and a grid step '
                       'shows up to {} ms later, so the {} ms stages of {} can trip {} ms after the '
                       'grid step'.format(meter_baud, meter_model, every, sense, clr,
                                          profile_name, worst))
        elif trip_decision_ms(clr, step_ms, sense) == 0:
            out.append('the {} ms stages of {} trip on the first reading outside their threshold '
                       '(at most {} ms after the grid step): an excursion a voltage or frequency '
                       'read catches trips however short'.format(clr, profile_name, worst))
    blocks = meter_map.blocks_of(model)
    others = len(blocks) - 1 - (1 if meter_map.cycle_steps(model, meter_baud, step_ms)[1] else 0)
    snap = others * every
    if meter_poll_ms < snap:
        out.append('METER_POLL_MS {}: a snapshot of current and energy takes {} ms ({}, METER_BAUD {}), '
                   'so one follows the other every {} ms'.format(meter_poll_ms, snap, meter_model,
                                                                 meter_baud, snap))
    db, dr = values_in_force(profile_name, deadband_mhz, droop_mpct)
    if db != deadband_mhz:
        out.append('FREQ_DEADBAND_HZ {} is outside the {}-{} Hz of {}: {} Hz in force'.format(
            _dec(deadband_mhz), _dec(p['db_mhz'][0]), _dec(p['db_mhz'][1]), profile_name, _dec(db)))
    if dr != droop_mpct:
        out.append('FREQ_DROOP_PCT {} is outside the {}-{} % of {}: {} % in force'.format(
            _dec(droop_mpct), _dec(p['droop_mpct'][0]), _dec(p['droop_mpct'][1]), profile_name, _dec(dr)))
    return out


def config_notes(cfg, step_ms=50):
    """settings_notes() for a core.config.Config."""
    return settings_notes(cfg.grid_profile, cfg.meter_poll_ms, cfg.deadband_mhz, cfg.droop_mpct, step_ms,
                          cfg.meter_model, cfg.meter_baud)


def _config_args(cfg, kw):
    """GridProtection keyword arguments from a core.config.Config; kw overrides."""
    args = {
        'droop_enabled': cfg.droop_enabled,
        'deadband_mhz': cfg.deadband_mhz,
        'droop_mpct': cfg.droop_mpct,
        'response_ms': cfg.response_ms,
        'rated_charge_ma': cfg.max_charge_ma,
        'rated_discharge_ma': cfg.max_discharge_ma,
        'enter_service_delay_ms': getattr(cfg, 'grid_enter_service_ms', None),
        'ramp_ms': getattr(cfg, 'grid_ramp_ms', None),
    }
    args.update(kw)
    if 'sense_ms' not in args:
        args['sense_ms'] = meter_sense_ms(cfg, args.get('step_ms', 50))
    return args


class GridProtection:
    """Trips, enter service and droop for one grid connection.

    profile_name        a GRID_PROFILE value
    nominal_mv          nominal line-neutral voltage, mV
    droop_enabled       FREQ_DROOP_ENABLED
    deadband_mhz        FREQ_DEADBAND_HZ in mHz, clamped to the profile's range (values_in_force)
    droop_mpct          FREQ_DROOP_PCT in 0.001 % (5000 = 5 %), clamped the same way
    response_ms         FREQ_RESPONSE_S in ms: time to 90 % of a droop step
    rated_charge_ma     MAX_CHARGE_AMPS in mA
    rated_discharge_ma  MAX_DISCHARGE_AMPS in mA (0 = no V2G)
    enter_service_delay_ms, ramp_ms   None = the profile's value
    step_ms             the control period; trips are decided one step early
                        rather than one step late (see docs/grid.md)
    sense_ms            how late a grid step may show in the readings (the meter's
                        sampling, meter_sense_ms()); every stage is decided that much
                        earlier, so it is met counted from the grid step.
                        from_config() fills it from the meter settings
    start_in_service    skip the boot enter-service wait (for a warm restart
                        the integrator knows was inside a running session)
    Bad values raise ValueError naming the parameter; nothing changes.
    """

    def __init__(self, profile_name, nominal_mv, droop_enabled=True, deadband_mhz=36,
                 droop_mpct=5000, response_ms=500, rated_charge_ma=32000, rated_discharge_ma=32000,
                 enter_service_delay_ms=None, ramp_ms=None, step_ms=50, start_in_service=False,
                 sense_ms=0):
        # preallocated state; configure() fills the parameters
        self._stage_n = 0
        self._s_kind = [0] * 8
        self._s_thr = [0] * 8
        self._s_clr = [0] * 8
        self._s_el = [-1] * 8          # ms since the first outside sample, -1 = inside
        self._s_run = False            # some stage's timer runs (an entry of _s_el >= 0)
        self._decay = [0] * _DECAY_BITS
        self._ring = [0] * MEAN_BLOCKS
        self._ev_t = [0] * _EV_CAP
        self._ev_bit = [0] * _EV_CAP
        self._ev_on = [False] * _EV_CAP
        self._ev_val = [0] * _EV_CAP
        self._ev_ms = [0] * _EV_CAP
        self._ev_head = 0
        self._ev_n = 0
        self.ev_lost = 0
        self.profile_name = None
        self.sense_fixed = True
        self.configure(profile_name, nominal_mv, droop_enabled, deadband_mhz, droop_mpct,
                       response_ms, rated_charge_ma, rated_discharge_ma,
                       enter_service_delay_ms, ramp_ms, step_ms, sense_ms)
        self._have_last = False
        self._last_ms = 0
        self._ok_el = -1               # enter-service window held for this long, -1 = not inside
        self._ramp_el = 0
        self._y = 0                    # droop output, mA
        self._yq = 0                   # the same in 1/16 mA (less rounding bias)
        self._f_dt = -1                # dt of the cached filter factor
        self._f_k = 0
        self._target = 0               # droop operating point, mA
        self._mean_reset()
        self.trip_bit = 0
        self.trip_value = 0
        self._trip_ms = 0
        self._good_mv = 0
        self._good_mhz = 0
        self.changed = False
        if start_in_service:
            self.state = IN_SERVICE
            self.trip_code = 0
            self._set_allow(1000)
        else:
            self.state = WAITING
            self.trip_code = errors.E507
            self._set_allow(0)
        self._boot_event = not start_in_service      # V2G-507 raised on the first step
        self.droop_ma = 0

    @classmethod
    def from_config(cls, cfg, **kw):
        """Build from a core.config.Config; keyword arguments override."""
        g = cls(cfg.grid_profile, cfg.nominal_mv, **_config_args(cfg, kw))
        g.sense_fixed = 'sense_ms' in kw
        return g

    def reconfigure(self, cfg, **kw):
        """New settings from a Config; trips, timers and the enter-service state carry on.
        A sense_ms given at construction stays (a meter that is not the meter task's)."""
        if 'sense_ms' not in kw and self.sense_fixed:
            kw['sense_ms'] = self.sense_ms
        self.configure(cfg.grid_profile, cfg.nominal_mv, **_config_args(cfg, kw))

    def configure(self, profile_name, nominal_mv, droop_enabled, deadband_mhz, droop_mpct,
                  response_ms, rated_charge_ma, rated_discharge_ma,
                  enter_service_delay_ms=None, ramp_ms=None, step_ms=50, sense_ms=0):
        """New settings; the trip/enter-service state carries on. All checked first."""
        p = _profile(profile_name)
        _check('nominal_mv', nominal_mv, 100000, 480000)
        if droop_enabled is not True and droop_enabled is not False:
            raise ValueError('grid: droop_enabled must be a bool, got {!r}'.format(droop_enabled))
        _check('deadband_mhz', deadband_mhz, 17, 1000)
        _check('droop_mpct', droop_mpct, 2000, 12000)
        _check('response_ms', response_ms, 200, 10000)
        _check('rated_charge_ma', rated_charge_ma, 0, 80000)
        _check('rated_discharge_ma', rated_discharge_ma, 0, 80000)
        if enter_service_delay_ms is None:
            enter_service_delay_ms = p['es_delay_ms']
        _check('enter_service_delay_ms', enter_service_delay_ms, 0, 600000)
        if ramp_ms is None:
            ramp_ms = p['es_ramp_ms']
        _check('ramp_ms', ramp_ms, 0, 1000000)
        _check('step_ms', step_ms, 1, 1000)
        _check('sense_ms', sense_ms, 0, 10000)

        # everything valid: apply
        changed_profile = profile_name != self.profile_name
        self.profile_name = profile_name
        self.nominal_mv = nominal_mv
        self.nominal_mhz = p['nominal_mhz']
        self.droop_enabled = droop_enabled
        # out-of-range values are applied clamped and reported by settings_notes()
        self.deadband_mhz, self.droop_mpct = values_in_force(profile_name, deadband_mhz, droop_mpct)
        self.response_ms = response_ms
        self.rated_charge_ma = rated_charge_ma
        self.rated_discharge_ma = rated_discharge_ma
        self.enter_service_delay_ms = enter_service_delay_ms
        self.ramp_ms = ramp_ms
        self.step_ms = step_ms
        self.sense_ms = sense_ms

        stages = p['stages']
        self._stage_n = len(stages)
        for i in range(len(stages)):
            kind, thr, clr = stages[i]
            if kind == OV or kind == UV:
                thr = nominal_mv * thr // 1000
            self._s_kind[i] = kind
            self._s_thr[i] = thr
            self._s_clr[i] = clr
            if changed_profile:
                self._s_el[i] = -1
        if changed_profile:
            self._s_run = False
        # the band inside every stage's threshold: while no stage timer runs, a reading in it
        # leaves every stage as it is, and step() does not run them
        v_lo = f_lo = -_ELAPSED_CAP
        v_hi = f_hi = _ELAPSED_CAP
        for i in range(self._stage_n):
            kind = self._s_kind[i]
            thr = self._s_thr[i]
            if kind == OV:
                v_hi = thr if thr < v_hi else v_hi
            elif kind == UV:
                v_lo = thr if thr > v_lo else v_lo
            elif kind == OF:
                f_hi = thr if thr < f_hi else f_hi
            else:
                f_lo = thr if thr > f_lo else f_lo
        self._band_v_lo = v_lo
        self._band_v_hi = v_hi
        self._band_f_lo = f_lo
        self._band_f_hi = f_hi
        self._mean_thr = nominal_mv * p['ov_mean_pm'] // 1000
        self._es_v_lo = nominal_mv * p['es_v_pm'][0] // 1000
        self._es_v_hi = nominal_mv * p['es_v_pm'][1] // 1000
        self._es_f_lo = p['es_f_mhz'][0]
        self._es_f_hi = p['es_f_mhz'][1]

        # droop: full rated current per droop % of nominal frequency beyond the deadband
        self._droop_den = self.droop_mpct * self.nominal_mhz // 100000   # mHz for 1x rated
        r = rated_charge_ma if rated_charge_ma > rated_discharge_ma else rated_discharge_ma
        self._rated = r
        self._span = rated_charge_ma + rated_discharge_ma
        # first-order lag with 90 % at response_ms: remaining error after t ms is 10**(-t/T90)
        for i in range(_DECAY_BITS):
            self._decay[i] = int(10.0 ** (-(1 << i) / response_ms) * (1 << _Q) + 0.5)
        self._f_dt = -1

    # ------------------------------------------------------------------ step
    def step(self, now_ms, grid_mv, grid_mhz, meter_ok):
        """Advance to now_ms with the latest meter reading (meter_ok False: it failed)."""
        if self._have_last:
            # ticks wrap at 2**30: difference modulo 2**30; beyond 2**29 it is a
            # clock that stepped back, which counts as no time passing
            dt = (now_ms - self._last_ms) & 0x3FFFFFFF
            if dt > 0x20000000:
                dt = 0
        else:
            dt = 0
            self._have_last = True
        self._last_ms = now_ms
        self.changed = False
        if self._boot_event:
            self._boot_event = False
            self._event(now_ms, errors.E507, True, 0, self.enter_service_delay_ms)

        mean_over = False
        if meter_ok:
            self._good_mv = grid_mv      # for the trip message when a reading then fails
            self._good_mhz = grid_mhz
            if self._mean_thr:
                # the block is summed here, without a call; _mean_add() closes a full one
                self._blk_sum += grid_mv
                self._blk_n += 1
                self._blk_el += dt
                if self._blk_el >= MEAN_BLOCK_MS or self._blk_n >= 1000:
                    mean_over = self._mean_add()

        st = self.state
        if st == RAMP or st == IN_SERVICE:
            bit = 0
            # no stage timer running and the reading inside every threshold (nearly every
            # step): the stages would all stay inside, so they are not run
            if self._s_run or (meter_ok and not (self._band_v_lo <= grid_mv <= self._band_v_hi
                                                 and self._band_f_lo <= grid_mhz <= self._band_f_hi)):
                bit = self._stages(dt, grid_mv, grid_mhz, meter_ok)
            if bit == 0 and mean_over:
                bit = errors.E503
                self.trip_value = self._mean_last
                self._trip_ms = -1      # marks the 10-minute mean stage
            if bit:
                self._trip(now_ms, bit)
                st = TRIPPED
        # the 10-minute mean must be back under its limit too; needed only while out of service
        inside = ((st == TRIPPED or st == WAITING) and meter_ok and self._inside_window(grid_mv, grid_mhz)
                  and self._mean_ok())
        if st == TRIPPED and inside:
            self._event(now_ms, self.trip_bit, False, 0, 0)
            self.trip_bit = 0
            self.trip_code = errors.E507
            self._event(now_ms, errors.E507, True, 0, self.enter_service_delay_ms)
            self._ok_el = -1
            st = WAITING
        if st == WAITING:
            if inside:
                if self._ok_el < 0:
                    self._ok_el = 0
                else:
                    self._ok_el = self._add(self._ok_el, dt)
                if self._ok_el >= self.enter_service_delay_ms:
                    self._event(now_ms, errors.E507, False, 0, self._ok_el)
                    self.trip_code = 0
                    self._ramp_el = 0
                    for i in range(self._stage_n):
                        self._s_el[i] = -1
                    self._s_run = False
                    st = RAMP
                    dt = 0   # the ramp starts at this sample
            else:
                self._ok_el = -1
        if st == RAMP:
            self._ramp_el = self._add(self._ramp_el, dt)
            if self._ramp_el >= self.ramp_ms:
                st = IN_SERVICE
            else:
                self._set_allow(self._ramp_el * 1000 // self.ramp_ms)
        # full current at the ratings in force (nearly every step): already set, no call
        if st == IN_SERVICE and (self.allow_pm != 1000 or self.allow_charge_ma != self.rated_charge_ma
                                 or self.allow_discharge_ma != self.rated_discharge_ma):
            self._set_allow(1000)
        self.state = st

        if (st == RAMP or st == IN_SERVICE) and self.droop_enabled:
            if meter_ok:
                # inside the deadband (nearly every step) the target is 0 without the call
                dev = grid_mhz - self.nominal_mhz
                db = self.deadband_mhz
                self._target = 0 if -db <= dev <= db else self._droop_target(grid_mhz)
            if self._yq == self._target << 4:
                self._y = self._target   # settled on the target: what _filter() would give
            else:
                self._filter(dt)
        else:
            self._target = 0
            self._y = 0
            self._yq = 0
        self.droop_ma = self._y

    # ------------------------------------------------------------- internals
    def _add(self, el, dt):
        el += dt
        return el if el < _ELAPSED_CAP else _ELAPSED_CAP

    def _stages(self, dt, mv, mhz, meter_ok):
        """Run the stage timers; the bit of the first stage that trips, else 0."""
        hit = 0
        run = False
        early = self.step_ms + self.sense_ms
        for i in range(self._stage_n):
            el = self._s_el[i]
            if meter_ok:
                kind = self._s_kind[i]
                thr = self._s_thr[i]
                if kind == OV:
                    out = mv > thr
                elif kind == UV:
                    out = mv < thr
                elif kind == OF:
                    out = mhz > thr
                else:
                    out = mhz < thr
                if not out:
                    self._s_el[i] = -1
                    continue
                el = 0 if el < 0 else self._add(el, dt)
            elif el < 0:
                continue        # no reading: a stage that was inside stays so
            else:
                el = self._add(el, dt)   # no reading: a running excursion keeps counting
            self._s_el[i] = el
            run = True
            # trip on the last sample at or before the clearing time counted from the
            # grid step (which the readings may show sense_ms late): the next sample,
            # one step later, could already be past it
            if hit == 0 and el + early > self._s_clr[i]:
                hit = _CODE_OF_KIND[self._s_kind[i]]
                self.trip_value = self._good_mhz if self._s_kind[i] >= OF else self._good_mv
                self._trip_ms = el
        self._s_run = run
        return hit

    def _trip(self, now_ms, bit):
        self.state = TRIPPED
        self.trip_bit = bit
        self.trip_code = bit
        self._set_allow(0)
        self._target = 0
        self._y = 0
        self._yq = 0
        for i in range(self._stage_n):
            self._s_el[i] = -1
        self._s_run = False
        self._event(now_ms, bit, True, self.trip_value, self._trip_ms)

    def _inside_window(self, mv, mhz):
        return (self._es_v_lo <= mv <= self._es_v_hi) and (self._es_f_lo <= mhz <= self._es_f_hi)

    def _set_allow(self, pm):
        self.allow_pm = pm
        self.allow_charge_ma = self.rated_charge_ma * pm // 1000
        self.allow_discharge_ma = self.rated_discharge_ma * pm // 1000
        self.allow_ma = self.allow_charge_ma if self.allow_charge_ma > self.allow_discharge_ma \
            else self.allow_discharge_ma

    def _droop_target(self, mhz):
        dev = mhz - self.nominal_mhz
        neg = dev < 0
        if neg:
            dev = -dev
        dev -= self.deadband_mhz
        if dev <= 0 or self._droop_den <= 0:
            return 0
        den = self._droop_den
        if dev > 2 * den:
            dev = 2 * den        # twice rated is past the whole span anyway
        q = dev * 4096 // den    # fraction of rated, Q12
        t = self._rated * q >> 12
        if t > self._span:
            t = self._span
        # over-frequency: take more from the grid (more charge, less discharge)
        return -t if neg else t

    def _filter(self, dt):
        """First-order lag toward the target over dt ms; state kept in 1/16 mA."""
        err = self._yq - (self._target << 4)
        if err != 0 and dt != 0:
            if dt != self._f_dt:
                self._f_dt = dt
                self._f_k = self._factor(dt)
            err = _mul_q15(err, self._f_k)
            self._yq = (self._target << 4) + err
        y = self._yq
        self._y = -((-y) >> 4) if y < 0 else y >> 4

    def _factor(self, dt):
        """10**(-dt/T90) in Q15 from the per-power-of-two table (no floats in step)."""
        if dt >> _DECAY_BITS:
            return 0
        k = 1 << _Q
        i = 0
        while dt and k:
            if dt & 1:
                k = _mul_q15(k, self._decay[i])
            dt >>= 1
            i += 1
        return k

    def _mean_reset(self):
        for i in range(MEAN_BLOCKS):
            self._ring[i] = 0
        self._ring_i = 0
        self._ring_n = 0
        self._ring_sum = 0
        self._blk_sum = 0
        self._blk_n = 0
        self._blk_el = 0
        self._mean_last = 0
        self._mean_over = False

    def _mean_add(self):
        """Close the full block (step() sums it) into the 10-minute mean; True when the mean
        is too high."""
        b = self._blk_sum // self._blk_n
        i = self._ring_i
        self._ring_sum += b - self._ring[i]
        self._ring[i] = b
        self._ring_i = i + 1 if i + 1 < MEAN_BLOCKS else 0
        if self._ring_n < MEAN_BLOCKS:
            self._ring_n += 1
        self._blk_sum = 0
        self._blk_n = 0
        self._blk_el = 0
        # fewer than 10 minutes of blocks after boot: the shorter mean is the stricter one
        self._mean_last = self._ring_sum // self._ring_n
        self._mean_over = self._mean_last > self._mean_thr
        return self._mean_over

    def _mean_ok(self):
        return not (self._mean_thr and self._mean_over)

    def _event(self, t_ms, bit, on, value, ms):
        if self._ev_n == _EV_CAP:
            self._ev_head = self._ev_head + 1 if self._ev_head + 1 < _EV_CAP else 0
            self._ev_n -= 1
            self.ev_lost += 1
        j = self._ev_head + self._ev_n
        if j >= _EV_CAP:
            j -= _EV_CAP
        self._ev_t[j] = t_ms
        self._ev_bit[j] = bit
        self._ev_on[j] = on
        self._ev_val[j] = value
        self._ev_ms[j] = ms
        self._ev_n += 1
        self.changed = True

    # --------------------------------------------------------- outside step
    def pending(self):
        """How many events wait for pop_events()."""
        return self._ev_n

    def pop_events(self):
        """Events since the last call as (t_ms, 'V2G-xxx', raised, msg).

        Allocates only when there are events: with none it returns a shared empty
        tuple, so the shell may call it every tick."""
        if not self._ev_n:
            return _NO_EVENTS
        out = []
        while self._ev_n:
            j = self._ev_head
            out.append((self._ev_t[j], errors.code(self._ev_bit[j]), self._ev_on[j], self._msg(j)))
            self._ev_head = j + 1 if j + 1 < _EV_CAP else 0
            self._ev_n -= 1
        return out

    def _msg(self, j):
        bit = self._ev_bit[j]
        on = self._ev_on[j]
        v = self._ev_val[j]
        ms = self._ev_ms[j]
        if bit == errors.E507:
            if on:
                return 'waiting for {:.3f}-{:.3f} V and {:.3f}-{:.3f} Hz to hold for {} s'.format(
                    self._es_v_lo / 1000, self._es_v_hi / 1000, self._es_f_lo / 1000,
                    self._es_f_hi / 1000, ms // 1000)
            return 'entering service: ramp to full current over {} s'.format(self.ramp_ms // 1000)
        if not on:
            return 'grid back inside the enter-service window'
        if bit == errors.E505 or bit == errors.E506:
            return '{}: {:.3f} Hz for {} ms ({})'.format(
                errors.text(errors.code(bit)), v / 1000, ms, self.profile_name)
        if ms < 0:
            return 'grid over-voltage: 10-minute mean {:.1f} V above {:.1f} V ({})'.format(
                v / 1000, self._mean_thr / 1000, self.profile_name)
        return '{}: {:.1f} V for {} ms ({})'.format(
            errors.text(errors.code(bit)), v / 1000, ms, self.profile_name)

    def state_name(self):
        return STATE_NAMES[self.state]
