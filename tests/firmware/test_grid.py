"""Grid protection: trips, ride-through, enter service, ramp, droop (both interpreters)."""
import micropython

from core import errors
from core.grid import (IN_SERVICE, RAMP, TRIPPED, WAITING, GridProtection, settings_notes,
                       shortest_clearing_ms, trip_decision_ms, values_in_force, worst_trip_ms)
from fwtest import approx, raises

NOM_MV = 240000
STEP = 50

# Trip settings as printed in the issue (IEEE 1547-2018 defaults and our EN 50549 set):
# (profile, what, threshold in pu (voltage) or mHz (frequency), clearing ms)
IEEE_F = (('OF', 62000, 160), ('OF', 61200, 300000), ('UF', 56500, 160), ('UF', 58500, 300000))
EXPECTED = {
    'IEEE1547_CAT_I_60HZ': (('OV', 1200, 160), ('OV', 1100, 2000), ('UV', 700, 2000),
                            ('UV', 450, 160)) + IEEE_F,
    'IEEE1547_CAT_II_60HZ': (('OV', 1200, 160), ('OV', 1100, 2000), ('UV', 700, 10000),
                             ('UV', 450, 160)) + IEEE_F,
    'IEEE1547_CAT_III_60HZ': (('OV', 1200, 160), ('OV', 1100, 13000), ('UV', 880, 21000),
                              ('UV', 500, 2000)) + IEEE_F,
    'EN50549_50HZ': (('OV', 1150, 100), ('UV', 850, 3000), ('OF', 51500, 100), ('UF', 47500, 100)),
}
CODE = {'OV': errors.E503, 'UV': errors.E504, 'OF': errors.E505, 'UF': errors.E506}


def nominal_mhz(profile):
    return 50000 if profile.startswith('EN') else 60000


def in_service(profile='IEEE1547_CAT_II_60HZ', **kw):
    """A protection already in service (short enter-service delay and ramp), at t = 0."""
    kw.setdefault('enter_service_delay_ms', 0)
    kw.setdefault('ramp_ms', 0)
    g = GridProtection(profile, NOM_MV, start_in_service=True, **kw)
    g.step(0, NOM_MV, nominal_mhz(profile), True)
    assert g.state == IN_SERVICE
    g.pop_events()
    return g


def run(g, t, mv, mhz, n, ok=True):
    """n samples, one control step apart, starting one step after t; returns the last t."""
    for _ in range(n):
        t += STEP
        g.step(t, mv, mhz, ok)
    return t


def excursion(what, thr, nominal):
    """(outside, inside) measurement for a stage: 1 unit past the threshold, and on it."""
    if what in ('OV', 'UV'):
        thr = NOM_MV * thr // 1000
    out = thr + 1 if what in ('OV', 'OF') else thr - 1
    return out, thr


def sample(what, value, profile):
    """(mv, mhz) with one quantity at value and the other nominal."""
    if what in ('OV', 'UV'):
        return value, nominal_mhz(profile)
    return NOM_MV, value


def test_every_trip_in_every_profile_at_its_clearing_time():
    for profile, stages in EXPECTED.items():
        for what, thr, clear_ms in stages:
            out, _ = excursion(what, thr, nominal_mhz(profile))
            mv, mhz = sample(what, out, profile)
            g = in_service(profile, droop_enabled=False)
            k = clear_ms // STEP            # samples after the first outside one
            t = 0
            # samples 0..k-1 outside: still in service
            t = run(g, t, mv, mhz, k)
            assert g.state == IN_SERVICE, (profile, what, thr)
            assert g.allow_ma == 32000
            # sample k (elapsed k * 50 ms, not after the clearing time): trips
            t = run(g, t, mv, mhz, 1)
            assert g.state == TRIPPED, (profile, what, thr)
            assert g.trip_code == CODE[what], (profile, what, g.trip_code)
            assert g.allow_ma == 0 and g.allow_charge_ma == 0 and g.allow_discharge_ma == 0
            assert g.droop_ma == 0
            elapsed = k * STEP
            assert elapsed <= clear_ms and elapsed + STEP > clear_ms
            ev = g.pop_events()
            assert len(ev) == 1 and ev[0][1] == errors.code(CODE[what]) and ev[0][2] is True
            assert ev[0][0] == t


def test_just_inside_each_threshold_never_trips():
    for profile, stages in EXPECTED.items():
        for what, thr, clear_ms in stages:
            _, inside = excursion(what, thr, nominal_mhz(profile))
            mv, mhz = sample(what, inside, profile)
            g = in_service(profile, droop_enabled=False)
            run(g, 0, mv, mhz, clear_ms // STEP + 20)
            assert g.state == IN_SERVICE, (profile, what, thr)
            assert g.trip_code == 0


def test_ride_through_one_sample_short_of_clearing():
    for profile, stages in EXPECTED.items():
        for what, thr, clear_ms in stages:
            out, _ = excursion(what, thr, nominal_mhz(profile))
            mv, mhz = sample(what, out, profile)
            g = in_service(profile, droop_enabled=False)
            k = clear_ms // STEP
            t = run(g, 0, mv, mhz, k)          # k samples outside: the trip would be the next
            t = run(g, t, NOM_MV, nominal_mhz(profile), 1)   # back inside: timer resets
            assert g.state == IN_SERVICE, (profile, what)
            # a fresh excursion needs its full clearing time again
            t = run(g, t, mv, mhz, k)
            assert g.state == IN_SERVICE, (profile, what)
            run(g, t, mv, mhz, 1)
            assert g.state == TRIPPED and g.trip_code == CODE[what]


def test_trip_never_after_clearing_with_odd_step_period():
    # 0.16 s stage with a 70 ms control step: 0, 70, 140 ms -> trips at 140, not 210
    g = GridProtection('IEEE1547_CAT_II_60HZ', NOM_MV, enter_service_delay_ms=0, ramp_ms=0,
                       step_ms=70, droop_enabled=False)
    g.step(0, NOM_MV, 60000, True)
    over = NOM_MV * 1200 // 1000 + 1
    g.step(70, over, 60000, True)
    g.step(140, over, 60000, True)
    assert g.state == IN_SERVICE
    g.step(210, over, 60000, True)
    assert g.state == TRIPPED      # elapsed 140 ms <= 160 ms
    assert g.trip_code == errors.E503


def test_meter_failure_keeps_running_excursion_and_starts_none():
    g = in_service(droop_enabled=False)
    under = NOM_MV * 450 // 1000 - 1
    t = run(g, 0, under, 60000, 1)           # excursion starts (elapsed 0)
    t = run(g, t, 0, 0, 2, ok=False)         # no reading: elapsed keeps counting (100 ms)
    assert g.state == IN_SERVICE
    run(g, t, 0, 0, 1, ok=False)             # 150 ms: trips, the last reading was outside
    assert g.state == TRIPPED and g.trip_code == errors.E504
    assert '108.0 V' in g.pop_events()[0][3]    # the last good reading (107999 mV), not the failed one
    # failed readings while inside start nothing, whatever numbers they carry
    g = in_service(droop_enabled=False)
    run(g, 0, 0, 0, 100, ok=False)
    assert g.state == IN_SERVICE


class _EveryStepStages(GridProtection):
    """Runs the trip stages on every step, as before step() learned to skip them while no
    timer runs and the reading is inside every threshold: a timer always counts as running
    and the band inside every threshold is empty."""
    _s_run = property(lambda self: True, lambda self, v: None)

    def configure(self, *args, **kw):
        GridProtection.configure(self, *args, **kw)
        self._band_v_lo = 1
        self._band_v_hi = 0


def test_skipping_the_stages_inside_every_threshold_changes_nothing():
    # readings on, one past and well past each threshold, nominal ones and failed meter
    # reads, each held for a few steps in a fixed pseudo-random order: every trip, its
    # value and time the same
    for profile, stages in EXPECTED.items():
        nom_f = nominal_mhz(profile)
        values = [(NOM_MV, nom_f, True), (0, 0, False)]
        for what, thr, _ in stages:
            out, on = excursion(what, thr, nom_f)
            for v in (out, on, out + (out - on) * 50):
                mv, mhz = sample(what, v, profile)
                values.append((mv, mhz, True))
        a = in_service(profile, droop_enabled=False)
        b = _EveryStepStages(profile, NOM_MV, start_in_service=True, droop_enabled=False,
                             enter_service_delay_ms=0, ramp_ms=0)
        b.step(0, NOM_MV, nom_f, True)
        b.pop_events()
        t = 0
        x = 12345
        trips = 0
        hold = 0
        for _ in range(4000):
            if hold == 0:      # the next reading, held for 1 to 8 steps
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
                mv, mhz, ok = values[(x >> 8) % len(values)]
                hold = 1 + (x >> 4) % 8
            hold -= 1
            t += STEP
            a.step(t, mv, mhz, ok)
            b.step(t, mv, mhz, ok)
            assert (a.state, a.trip_code, a.trip_value, a.allow_ma) == \
                (b.state, b.trip_code, b.trip_value, b.allow_ma), (profile, t)
            ea = a.pop_events()
            assert ea == b.pop_events(), (profile, t)
            trips += len([e for e in ea if e[2] and e[1] != 'V2G-507'])
        assert trips > 5, (profile, trips)      # the sequence did reach the stages


def test_boot_waits_for_enter_service_with_default_delay():
    g = GridProtection('IEEE1547_CAT_II_60HZ', NOM_MV, droop_enabled=False)
    assert g.state == WAITING and g.trip_code == errors.E507 and g.allow_ma == 0
    assert g.enter_service_delay_ms == 300000 and g.ramp_ms == 300000
    g.step(0, NOM_MV, 60000, True)
    ev = g.pop_events()
    assert len(ev) == 1 and ev[0][1] == 'V2G-507' and ev[0][2] is True
    t = run(g, 0, NOM_MV, 60000, 300000 // STEP - 1)
    assert g.state == WAITING and g.allow_ma == 0
    t = run(g, t, NOM_MV, 60000, 1)          # held 300 s: enter service
    assert g.state == RAMP and g.trip_code == 0
    ev = g.pop_events()
    assert len(ev) == 1 and ev[0][1] == 'V2G-507' and ev[0][2] is False


def test_enter_service_window_edges():
    p = 'IEEE1547_CAT_II_60HZ'
    lo = NOM_MV * 917 // 1000
    hi = NOM_MV * 1050 // 1000
    for mv, mhz, ok in ((lo, 60000, True), (hi, 60000, True), (lo - 1, 60000, False),
                        (hi + 1, 60000, False), (NOM_MV, 59500, True), (NOM_MV, 60100, True),
                        (NOM_MV, 59499, False), (NOM_MV, 60101, False)):
        g = GridProtection(p, NOM_MV, enter_service_delay_ms=1000, ramp_ms=1000)
        g.step(0, mv, mhz, True)
        run(g, 0, mv, mhz, 20)
        assert (g.state == RAMP) == ok, (mv, mhz)
    # EN 50549: 0.85-1.10 pu, 49.9-50.1 Hz, 60 s
    g = GridProtection('EN50549_50HZ', 230000)
    assert g.enter_service_delay_ms == 60000 and g.ramp_ms == 600000
    g.step(0, 230000 * 850 // 1000, 49900, True)
    t = run(g, 0, 230000 * 1100 // 1000, 50100, 60000 // STEP - 1)
    assert g.state == WAITING
    run(g, t, 230000, 50000, 1)
    assert g.state == RAMP


def test_window_interruption_restarts_the_delay():
    g = GridProtection('IEEE1547_CAT_I_60HZ', NOM_MV, enter_service_delay_ms=2000, ramp_ms=1000)
    g.step(0, NOM_MV, 60000, True)
    t = run(g, 0, NOM_MV, 60000, 30)             # 1.5 s held
    t = run(g, t, NOM_MV, 60200, 1)              # out of the window once
    t = run(g, t, NOM_MV, 60000, 40)             # 1.95 s since the first sample back inside
    assert g.state == WAITING
    t = run(g, t, NOM_MV, 60000, 1)
    assert g.state == RAMP
    # a failed meter reading also restarts it (nothing proves the grid was fine)
    g = GridProtection('IEEE1547_CAT_I_60HZ', NOM_MV, enter_service_delay_ms=2000, ramp_ms=1000)
    g.step(0, NOM_MV, 60000, True)
    t = run(g, 0, NOM_MV, 60000, 30)
    t = run(g, t, NOM_MV, 60000, 1, ok=False)
    t = run(g, t, NOM_MV, 60000, 40)
    assert g.state == WAITING


def test_trip_then_short_enter_service_and_ramp():
    g = in_service(enter_service_delay_ms=1000, ramp_ms=2000, rated_charge_ma=32000,
                   rated_discharge_ma=16000, droop_enabled=False)
    t = run(g, 0, NOM_MV, 62001, 4)              # OF2 trips at 150 ms
    assert g.state == TRIPPED and g.trip_code == errors.E505
    t = run(g, t, NOM_MV, 60500, 10)             # below OF1, outside the window: still tripped
    assert g.state == TRIPPED and g.trip_code == errors.E505 and g.allow_ma == 0
    t = run(g, t, NOM_MV, 60000, 1)              # back inside the window: waiting
    assert g.state == WAITING and g.trip_code == errors.E507
    ev = g.pop_events()
    assert [(e[1], e[2]) for e in ev] == [('V2G-505', True), ('V2G-505', False), ('V2G-507', True)]
    t = run(g, t, NOM_MV, 60000, 19)
    assert g.state == WAITING and g.allow_ma == 0
    t = run(g, t, NOM_MV, 60000, 1)              # held 1 s
    assert g.state == RAMP and g.allow_ma == 0
    t = run(g, t, NOM_MV, 60000, 10)             # 0.5 of 2 s ramp
    assert g.allow_charge_ma == 8000 and g.allow_discharge_ma == 4000 and g.allow_ma == 8000
    t = run(g, t, NOM_MV, 60000, 20)             # 1.5 s
    assert g.allow_charge_ma == 24000 and g.allow_discharge_ma == 12000
    prev = g.allow_charge_ma
    t = run(g, t, NOM_MV, 60000, 9)
    assert prev < g.allow_charge_ma < 32000 and g.state == RAMP
    run(g, t, NOM_MV, 60000, 1)                  # 2 s
    assert g.state == IN_SERVICE and g.allow_charge_ma == 32000 and g.allow_discharge_ma == 16000


def test_trip_during_ramp():
    g = in_service(enter_service_delay_ms=0, ramp_ms=10000, droop_enabled=False)
    t = run(g, 0, NOM_MV * 1200 // 1000 + 1, 60000, 4)
    assert g.state == TRIPPED
    t = run(g, t, NOM_MV, 60000, 1)              # zero delay: straight into the ramp
    assert g.state == RAMP and g.allow_ma == 0
    t = run(g, t, NOM_MV, 60000, 20)
    assert g.allow_ma == 3200
    run(g, t, NOM_MV * 450 // 1000 - 1, 60000, 4)
    assert g.state == TRIPPED and g.trip_code == errors.E504 and g.allow_ma == 0


def test_en50549_ten_minute_mean_over_voltage():
    un = 230000
    g = GridProtection('EN50549_50HZ', un, enter_service_delay_ms=0, ramp_ms=0, droop_enabled=False)
    g.step(0, un, 50000, True)
    t = run(g, 0, un, 50000, 600000 // STEP)     # ten minutes at nominal
    high = un * 1120 // 1000                     # 1.12 pu: under stage 2, over the mean limit
    # the mean passes 1.10 pu after 500 s at 1.12 pu; blocks close every 3 s
    t = run(g, t, high, 50000, 495000 // STEP)
    assert g.state == IN_SERVICE
    n = 0
    while g.state == IN_SERVICE and n < 200:
        t = run(g, t, high, 50000, 1)
        n += 1
    assert g.state == TRIPPED and g.trip_code == errors.E503
    assert 5000 <= n * STEP <= 9000, n * STEP
    ev = g.pop_events()
    assert '10-minute mean' in ev[-1][3]
    # back to nominal: tripped until the mean is under 1.10 pu again
    t = run(g, t, un, 50000, 20)
    assert g.state == TRIPPED
    n = 0
    while g.state == TRIPPED and n < 3000:
        t = run(g, t, un, 50000, 1)
        n += 1
    assert g.state != TRIPPED and n > 20


def settle(profile, mhz, **kw):
    """In service with the droop settled at mhz; returns (protection, last t)."""
    g = in_service(profile, **kw)
    t = run(g, 0, NOM_MV, mhz, 200)
    return g, t


def droop_settled(profile, mhz, **kw):
    return settle(profile, mhz, **kw)[0]


def test_droop_deadband_and_slope_60hz():
    # 5 % of 60 Hz = 3 Hz for full rated current, beyond the 36 mHz deadband
    for mhz, expect in ((60000, 0), (60036, 0), (59964, 0), (60536, 32000 * 500 // 3000),
                        (59464, -32000 * 500 // 3000), (61036, 32000 // 3), (58964, -32000 // 3),
                        (61200, 32000 * 1164 // 3000)):
        g = droop_settled('IEEE1547_CAT_II_60HZ', mhz)
        assert approx(g.droop_ma, expect, 16), (mhz, g.droop_ma, expect)
    # just past the deadband it moves, in the right direction
    assert droop_settled('IEEE1547_CAT_II_60HZ', 60040).droop_ma > 0
    assert droop_settled('IEEE1547_CAT_II_60HZ', 59960).droop_ma < 0
    # a 3 % droop is steeper, a 100 mHz deadband later
    g = droop_settled('IEEE1547_CAT_III_60HZ', 60600, droop_mpct=3000, deadband_mhz=100)
    assert approx(g.droop_ma, 32000 * 500 // 1800, 16)


def test_droop_50hz_lfsm_thresholds():
    # EN 50549: LFSM-O from 50.2 Hz, LFSM-U from 49.8 Hz; a 36 mHz deadband is widened to 200
    for mhz, expect in ((50200, 0), (49800, 0), (50100, 0), (50700, 32000 * 500 // 2500),
                        (49300, -32000 * 500 // 2500), (51450, 32000 * 1250 // 2500)):
        g = droop_settled('EN50549_50HZ', mhz, deadband_mhz=36)
        assert g.deadband_mhz == 200
        assert approx(g.droop_ma, expect, 16), (mhz, g.droop_ma, expect)


def test_droop_scale_and_cap():
    # rated = the larger rating; the offset never exceeds the full charge-discharge span
    g = droop_settled('IEEE1547_CAT_II_60HZ', 59000, rated_charge_ma=32000, rated_discharge_ma=0)
    assert approx(g.droop_ma, -32000 * 964 // 3000, 16)
    g = droop_settled('EN50549_50HZ', 47600, droop_mpct=2000, rated_charge_ma=10000,
                      rated_discharge_ma=6000)
    assert g.droop_ma == -16000


def test_droop_off_and_inactive_when_not_in_service():
    g = droop_settled('IEEE1547_CAT_II_60HZ', 59000, droop_enabled=False)
    assert g.droop_ma == 0
    g = GridProtection('IEEE1547_CAT_II_60HZ', NOM_MV, enter_service_delay_ms=10000)
    g.step(0, NOM_MV, 59600, True)
    run(g, 0, NOM_MV, 59600, 50)
    assert g.state == WAITING and g.droop_ma == 0


def test_droop_response_reaches_90_percent_within_response_time():
    for resp in (500, 1000, 200, 5000):
        g, t = settle('IEEE1547_CAT_II_60HZ', 60000, response_ms=resp)
        assert g.droop_ma == 0
        target = 32000 * 500 // 3000
        t = run(g, t, NOM_MV, 60536, 1)          # first sample showing the step
        assert g.droop_ma > 0                    # moves on that very sample
        t0 = t
        hit = None
        while hit is None:
            t = run(g, t, NOM_MV, 60536, 1)
            if g.droop_ma * 10 >= target * 9:
                hit = t - t0
        assert hit <= resp, (resp, hit)
        # first order, not a jump: 90 % is not reached much sooner than asked
        assert hit >= resp - 2 * STEP, (resp, hit)
        run(g, t, NOM_MV, 60536, 40 * resp // STEP)
        assert approx(g.droop_ma, target, 16)
    # and back down the same way
    g, t = settle('IEEE1547_CAT_II_60HZ', 59464)
    assert g.droop_ma < 0
    t = run(g, t, NOM_MV, 60000, 9)
    assert g.droop_ma < -5333 // 10
    run(g, t, NOM_MV, 60000, 1)
    assert g.droop_ma >= -5333 // 10 - 16


def test_droop_holds_target_when_meter_fails():
    g, t = settle('IEEE1547_CAT_II_60HZ', 59464)
    before = g.droop_ma
    run(g, t, 0, 0, 20, ok=False)
    assert g.droop_ma == before and g.state == IN_SERVICE


def test_bad_parameters_are_refused_and_change_nothing():
    e = raises(ValueError, GridProtection, 'IEEE1547_CAT_IV', NOM_MV)
    assert 'profile' in str(e)
    e = raises(ValueError, GridProtection, 'EN50549_50HZ', 50000)
    assert 'nominal_mv' in str(e)
    e = raises(ValueError, GridProtection, 'EN50549_50HZ', NOM_MV, response_ms=100)
    assert 'response_ms' in str(e)
    e = raises(ValueError, GridProtection, 'EN50549_50HZ', NOM_MV, rated_charge_ma=True)
    assert 'rated_charge_ma' in str(e)
    e = raises(ValueError, GridProtection, 'EN50549_50HZ', NOM_MV, ramp_ms=-1)
    assert 'ramp_ms' in str(e)
    g = in_service('IEEE1547_CAT_II_60HZ')
    e = raises(ValueError, g.configure, 'EN50549_50HZ', NOM_MV, True, 36, 5000, 500, 32000, 32000,
               None, None, 0)
    assert 'step_ms' in str(e)
    assert g.profile_name == 'IEEE1547_CAT_II_60HZ' and g.nominal_mhz == 60000


def test_configure_keeps_state_and_clamps_to_profile_ranges():
    g = in_service('IEEE1547_CAT_I_60HZ', droop_mpct=12000, deadband_mhz=1000)
    assert g.droop_mpct == 5000 and g.deadband_mhz == 1000
    g.configure('IEEE1547_CAT_I_60HZ', NOM_MV, True, 36, 4000, 500, 16000, 8000)
    assert g.state == IN_SERVICE and g.droop_mpct == 4000
    run(g, 0, NOM_MV, 60000, 1)
    assert g.allow_charge_ma == 16000 and g.allow_discharge_ma == 8000


def test_one_new_rating_in_service_takes_effect_on_the_next_step():
    # in service the full allowance is set again only when a rating changed: each one counts
    g = in_service('IEEE1547_CAT_I_60HZ', rated_charge_ma=32000, rated_discharge_ma=32000)
    t = 0
    for charge, discharge in ((32000, 10000), (20000, 10000), (20000, 0), (0, 0)):
        g.configure('IEEE1547_CAT_I_60HZ', NOM_MV, True, 36, 5000, 500, charge, discharge)
        t = run(g, t, NOM_MV, 60000, 1)
        assert (g.allow_charge_ma, g.allow_discharge_ma) == (charge, discharge)
        assert g.allow_ma == max(charge, discharge) and g.allow_pm == 1000


def test_from_config_uses_the_settings():
    from core import config
    cfg = config.validate({'GRID_PROFILE': 'EN50549_50HZ', 'NOMINAL_VOLTAGE_V': 230,
                           'MAX_CHARGE_AMPS': 16, 'MAX_DISCHARGE_AMPS': 10,
                           'FREQ_DROOP_PCT': 4, 'FREQ_RESPONSE_S': 1})
    g = GridProtection.from_config(cfg, enter_service_delay_ms=0, ramp_ms=0)
    assert g.profile_name == 'EN50549_50HZ' and g.nominal_mv == 230000 and g.nominal_mhz == 50000
    assert g.droop_mpct == 4000 and g.response_ms == 1000 and g.deadband_mhz == 200
    g.step(0, 230000, 50000, True)
    assert g.state == IN_SERVICE
    assert g.allow_charge_ma == 16000 and g.allow_discharge_ma == 10000


def test_event_queue_is_bounded():
    g = in_service(enter_service_delay_ms=0, ramp_ms=0, droop_enabled=False)
    t = 0
    for _ in range(5):       # each trip + return makes 4 events
        t = run(g, t, NOM_MV, 62001, 4)
        t = run(g, t, NOM_MV, 60000, 1)
    ev = g.pop_events()
    assert len(ev) == 8 and g.ev_lost == 12
    assert ev[-1][1] == 'V2G-507' and ev[-1][2] is False
    assert len(g.pop_events()) == 0


def test_no_allocation_over_1000_steps():
    g = GridProtection('EN50549_50HZ', 230000, enter_service_delay_ms=500, ramp_ms=1000)
    g2 = GridProtection('IEEE1547_CAT_III_60HZ', NOM_MV, enter_service_delay_ms=500, ramp_ms=1000)
    t = 0
    tripped = 0
    micropython.heap_lock()
    try:
        for i in range(1000):
            t += STEP
            ph = i % 200
            if ph < 150:
                mhz = 50000 + (ph - 75) * 12       # sweeps through both LFSM bands
                mv = 230000
            elif ph < 160:
                mhz = 51600                        # over-frequency trip
                mv = 230000
            else:
                mhz = 50000
                mv = 230000 + (ph - 180) * 100
            g.step(t, mv, mhz, ph != 100)
            g2.step(t, 240000 + (ph - 100) * 300, 60000 + (ph - 100) * 10, True)
            if g.state == TRIPPED:
                tripped += 1
    finally:
        micropython.heap_unlock()
    assert tripped > 0 and g.ev_lost > 0
    assert g.state in (WAITING, RAMP, IN_SERVICE, TRIPPED)


def test_reconfigure_keeps_the_grid_state_and_takes_new_ratings():
    from core import config
    from core.controller import Controller, Inputs
    cfg = config.validate({'GRID_ENTER_SERVICE_DELAY_S': 1, 'GRID_RAMP_S': 0})
    ctl = Controller(cfg, grid=GridProtection.from_config(cfg))
    inp = Inputs()
    inp.meter_ok, inp.meter_age_ms, inp.meter_mv, inp.meter_mhz = True, 0, 240000, 60000
    inp.cp_high_mv, inp.cp_low_mv = 12000, -12000
    t = 0
    while t < 3000:
        ctl.step(t, inp)
        t += 50
    assert ctl.grid.state == IN_SERVICE
    ctl.apply_config(config.validate({'MAX_CHARGE_AMPS': 16, 'MAX_DISCHARGE_AMPS': 10}, cfg))
    ctl.step(t, inp)
    assert ctl.grid.state == IN_SERVICE and ctl.grid.trip_code == 0
    assert ctl.grid.rated_charge_ma == 16000 and ctl.grid.rated_discharge_ma == 10000
    # another grid code is a new connection agreement: wait to enter service again
    ctl.apply_config(config.validate({'GRID_PROFILE': 'IEEE1547_CAT_III_60HZ'}, ctl.cfg))
    ctl.step(t + 50, inp)
    assert ctl.grid.state == WAITING and ctl.grid.trip_code == errors.E507


def test_trip_time_unchanged_across_the_tick_wrap():
    # UV stage 45 % (160 ms) of CAT II, with the ticks wrapping at 2**30 in the middle
    wrap = 1 << 30
    mv = NOM_MV * 450 // 1000 - 1
    for start in (0, wrap - 75):
        g = GridProtection('IEEE1547_CAT_II_60HZ', NOM_MV, start_in_service=True,
                           enter_service_delay_ms=0, ramp_ms=0, droop_enabled=False)
        g.step(start, NOM_MV, 60000, True)
        g.pop_events()
        t = start
        for k in range(3):      # 0, 50, 100 ms outside: still riding through
            t = (t + STEP) & (wrap - 1)
            g.step(t, mv, 60000, True)
            assert g.state == IN_SERVICE, (start, k)
        t = (t + STEP) & (wrap - 1)
        g.step(t, mv, 60000, True)
        assert g.state == TRIPPED and g.trip_code == errors.E504, start


def test_pop_events_without_events_allocates_nothing():
    g = in_service()
    micropython.heap_lock()
    try:
        for _ in range(100):
            ev = g.pop_events()
    finally:
        micropython.heap_unlock()
    assert len(ev) == 0 and g.pending() == 0


def held_excursion_trips(profile, what, thr, poll_ms, n_out):
    """A meter polled every poll_ms shows an excursion on n_out readings; between polls the
    last reading is held, as the controller sees it. Returns the ms from the first outside
    reading to the trip, or None."""
    out, _ = excursion(what, thr, nominal_mhz(profile))
    mv, mhz = sample(what, out, profile)
    g = in_service(profile, droop_enabled=False)
    t = 0
    for i in range(n_out * poll_ms // STEP + poll_ms // STEP):
        t += STEP
        if i < n_out * poll_ms // STEP:
            g.step(t, mv, mhz, True)            # the outside reading, held until the next poll
        else:
            g.step(t, NOM_MV, nominal_mhz(profile), True)
        if g.state == TRIPPED:
            return t - STEP
    return None


def test_held_reading_trips_exactly_when_n_polls_exceed_the_decision_time():
    """docs/grid.md, "Meter sampling": an excursion seen on n readings, each held for a poll
    period P, trips iff n * P > the decision time, at the decision time after the first."""
    cases = (('IEEE1547_CAT_II_60HZ', 'OV', 1200, 160), ('IEEE1547_CAT_II_60HZ', 'OV', 1100, 2000),
             ('EN50549_50HZ', 'OF', 51500, 100), ('EN50549_50HZ', 'UV', 850, 3000))
    for profile, what, thr, clear_ms in cases:
        d = trip_decision_ms(clear_ms, STEP)
        for poll in (100, 150, 300, 500):
            for n in range(1, d // poll + 3):
                got = held_excursion_trips(profile, what, thr, poll, n)
                if n * poll > d:
                    assert got == d, (profile, what, clear_ms, poll, n, got)
                else:
                    assert got is None, (profile, what, clear_ms, poll, n, got)


def test_trip_decision_is_the_last_step_at_or_before_clearing():
    assert trip_decision_ms(160, 50) == 150 and trip_decision_ms(2000, 50) == 2000
    assert trip_decision_ms(100, 50) == 100 and trip_decision_ms(160, 70) == 140
    assert shortest_clearing_ms('IEEE1547_CAT_III_60HZ') == 160
    assert shortest_clearing_ms('EN50549_50HZ') == 100


def _steps_to_trip(g, mv, mhz, limit_ms):
    """Outside readings every step from the next one: ms from the first to the trip, or None."""
    t0 = g._last_ms + STEP
    t = t0
    while t - t0 <= limit_ms:
        g.step(t, mv, mhz, True)
        if g.state == TRIPPED:
            return t - t0
        t += STEP
    return None


def test_stages_are_decided_as_early_as_the_sensing_delay_needs():
    """sense_ms: a grid step may show that late, so each stage is decided that much
    earlier and is met counted from the grid step (docs/grid.md, "Meter sampling")."""
    assert trip_decision_ms(160, 50, 150) == 0 and trip_decision_ms(100, 50, 150) == 0
    assert trip_decision_ms(2000, 50, 150) == 1850 and trip_decision_ms(300000, 50, 150) == 299850
    assert worst_trip_ms(160, 50, 150) == 150 and worst_trip_ms(2000, 50, 150) == 2000
    assert worst_trip_ms(100, 50, 150) == 150      # cannot be met: named by settings_notes
    for clear, mv, want in ((160, NOM_MV * 1200 // 1000 + 1, 0), (2000, NOM_MV * 1100 // 1000 + 1, 1850)):
        g = in_service(sense_ms=150, droop_enabled=False)
        got = _steps_to_trip(g, mv, 60000, clear)
        assert got == want and got + 150 <= clear, (clear, got)
    # one reading short of the decision: rides through
    g = in_service(sense_ms=150, droop_enabled=False)
    assert _steps_to_trip(g, NOM_MV * 1100 // 1000 + 1, 60000, 1800) is None
    e = raises(ValueError, GridProtection, 'IEEE1547_CAT_II_60HZ', NOM_MV, sense_ms=-1)
    assert 'sense_ms' in str(e)


def test_from_config_takes_the_meter_tasks_sensing_delay():
    from core import config
    # the default 38400 baud: pumped between control steps, a grid step shows within 100 ms
    assert GridProtection.from_config(config.validate({})).sense_ms == 100
    assert GridProtection.from_config(config.validate({'METER_BAUD': 9600})).sense_ms == 150
    assert GridProtection.from_config(config.validate({'METER_BAUD': 2400})).sense_ms == 550
    # given explicitly (a meter that is not the meter task's), it stays through a reconfigure
    g = GridProtection.from_config(config.validate({}), sense_ms=0)
    g.reconfigure(config.validate({'METER_BAUD': 2400}))
    assert g.sense_ms == 0
    g = GridProtection.from_config(config.validate({}))
    g.reconfigure(config.validate({'METER_BAUD': 2400}))
    assert g.sense_ms == 550


def test_values_in_force_clamp_to_the_profile():
    assert values_in_force('EN50549_50HZ', 36, 5000) == (200, 5000)
    assert values_in_force('EN50549_50HZ', 800, 12000) == (500, 12000)
    assert values_in_force('IEEE1547_CAT_II_60HZ', 36, 10000) == (36, 5000)
    assert values_in_force('IEEE1547_CAT_I_60HZ', 36, 2000) == (36, 3000)
    assert values_in_force('IEEE1547_CAT_III_60HZ', 17, 2000) == (17, 2000)
    e = raises(ValueError, values_in_force, 'IEEE1547', 36, 5000)
    assert 'IEEE1547' in str(e) and 'EN50549_50HZ' in str(e)
    g = in_service('IEEE1547_CAT_I_60HZ', deadband_mhz=1000, droop_mpct=2000)
    assert (g.deadband_mhz, g.droop_mpct) == (1000, 3000)     # the instance uses the same rule


def test_settings_notes_name_the_sampling_bound_and_the_clamped_values():
    # the defaults (38400 baud) on IEEE: a grid step shows within 100 ms, so the 160 ms stages
    # are decided a step after the first reading outside and met: nothing to say
    assert settings_notes('IEEE1547_CAT_II_60HZ', 500, 36, 5000) == []
    # at 9600 baud a grid step shows within 150 ms: decided on the first reading, and met
    notes = settings_notes('IEEE1547_CAT_II_60HZ', 500, 36, 5000, meter_baud=9600)
    assert notes == ['the 160 ms stages of IEEE1547_CAT_II_60HZ trip on the first reading outside their '
                     'threshold (at most 150 ms after the grid step): an excursion a voltage or frequency '
                     'read catches trips however short'], notes
    # METER_POLL_MS sets the snapshot only: no trip note changes with it
    notes = settings_notes('IEEE1547_CAT_II_60HZ', 100, 36, 5000)
    assert notes == ['METER_POLL_MS 100: a snapshot of current and energy takes 210 ms (SDM630, METER_BAUD '
                     '38400), so one follows the other every 210 ms'], notes
    notes = settings_notes('IEEE1547_CAT_II_60HZ', 100, 36, 5000, meter_baud=9600)
    assert len(notes) == 2 and 'a snapshot of current and energy takes 450 ms' in notes[1], notes
    # a slower line: every read two steps, a step may show 350 ms late
    notes = settings_notes('IEEE1547_CAT_III_60HZ', 500, 36, 5000, meter_baud=4800)
    assert notes[0].startswith('METER_BAUD 4800 (SDM630): voltage and frequency are read at least every 300 ms')
    assert 'the 160 ms stages of IEEE1547_CAT_III_60HZ can trip 350 ms after the grid step' in notes[0]
    # the long stages are decided early enough; the snapshot needs longer than the poll
    assert len(notes) == 2 and 'a snapshot of current and energy takes 900 ms' in notes[1], notes
    # EN 50549's 100 ms stages at the default 38400 baud: met, decided on the first reading
    notes = settings_notes('EN50549_50HZ', 500, 36, 5000)
    assert len(notes) == 2, notes
    assert notes[0] == ('the 100 ms stages of EN50549_50HZ trip on the first reading outside their threshold '
                        '(at most 100 ms after the grid step): an excursion a voltage or frequency read '
                        'catches trips however short'), notes
    assert notes[1] == 'FREQ_DEADBAND_HZ 0.036 is outside the 0.2-0.5 Hz of EN50549_50HZ: 0.2 Hz in force'
    # ... and not at 19200 or 9600 baud: named, with the worst case
    for baud in (19200, 9600):
        notes = settings_notes('EN50549_50HZ', 500, 36, 5000, meter_baud=baud)
        assert notes[0] == ('METER_BAUD {} (SDM630): voltage and frequency are read at least every 150 ms '
                            'and a grid step shows up to 150 ms later, so the 100 ms stages of EN50549_50HZ '
                            'can trip 150 ms after the grid step'.format(baud)), notes
    notes = settings_notes('IEEE1547_CAT_I_60HZ', 500, 1000, 10000)
    assert notes[-1] == 'FREQ_DROOP_PCT 10 is outside the 3-5 % of IEEE1547_CAT_I_60HZ: 5 % in force'
    assert not any('DEADBAND' in n for n in notes)
    notes = settings_notes('IEEE1547_CAT_III_60HZ', 500, 36, 2500)
    assert not any('DROOP' in n for n in notes)


def test_profiles_are_made_on_demand_and_not_shared():
    # the tables are constants, each call makes a new dict: nothing held at import, and a
    # caller changing its copy changes no other caller's
    from core import grid_profiles as gp
    a = gp.profile('EN50549_50HZ')
    a['stages'] = ()
    b = gp.profile('EN50549_50HZ')
    assert b['stages'] and b['nominal_mhz'] == 50000 and a is not b
    assert gp.profile('IEEE1547_CAT_II_60HZ')['stages'][3] == (gp.UV, 700, 10000)
    assert gp.profile('nope') is None
    assert sorted(gp.profiles()) == sorted(gp.NAMES)
    assert not hasattr(gp, 'PROFILES')
    e = raises(ValueError, GridProtection, 'nope', 240000)
    assert 'EN50549_50HZ, IEEE1547_CAT_III_60HZ' in str(e)
