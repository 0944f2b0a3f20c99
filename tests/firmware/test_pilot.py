from core import pilot as P


def test_duty_for_standard_currents():
    assert P.duty_for_ma(6000) == 100        # 10 %
    assert P.duty_for_ma(16000) == 266       # 26.6 % (rounded down: never offer more)
    assert P.duty_for_ma(32000) == 533
    assert P.duty_for_ma(51000) == 850       # 85 %
    assert P.duty_for_ma(63000) == 892       # 63 / 2.5 + 64 = 89.2 %
    assert P.duty_for_ma(80000) == 960       # 96 %
    assert P.duty_for_ma(120000) == 960      # the pilot cannot offer more than 80 A


def test_below_six_amps_no_offer():
    assert P.duty_for_ma(5999) == P.PWM_OFF
    assert P.duty_for_ma(0) == P.PWM_OFF
    assert P.duty_for_ma(-5000) == P.PWM_OFF


def test_duty_to_current():
    assert P.ma_for_duty(100) == 6000
    assert P.ma_for_duty(533) == 31980
    assert P.ma_for_duty(850) == 51000
    assert P.ma_for_duty(960) == 80000
    assert P.ma_for_duty(P.PWM_DIGITAL) == 0    # 5 %: digital communication, no analog offer
    assert P.ma_for_duty(P.PWM_OFF) == 0
    assert P.ma_for_duty(P.PWM_STATE_F) == 0
    assert P.ma_for_duty(97 * 10) == 0          # above 96 % is not a valid offer


def test_offer_never_exceeds_limit_and_is_monotonic():
    last = 0
    ma = 6000
    while ma <= 80000:
        pm = P.duty_for_ma(ma)
        got = P.ma_for_duty(pm)
        assert got <= ma, (ma, pm, got)
        # at most one duty step (0.1 %) below, except the 51-52.75 A gap the pilot cannot express
        if ma < 51000 or ma >= 52750:
            assert ma - got <= 250, (ma, got)
        assert pm >= last, (ma, pm, last)
        last = pm
        ma += 50


def test_levels_bands():
    assert P.level(12000) == P.A
    assert P.level(11000) == P.A
    assert P.level(13000) == P.A
    assert P.level(9000) == P.B
    assert P.level(8100) == P.B
    assert P.level(6000) == P.C
    assert P.level(3000) == P.D
    assert P.level(0) == P.E
    assert P.level(-800) == P.E
    assert P.level(-12000) == P.F
    assert P.level(10500) == P.UNKNOWN     # between A and B
    assert P.level(-5000) == P.UNKNOWN
    assert P.level(15000) == P.UNKNOWN


def test_filter_debounces_towards_energy():
    f = P.PilotFilter(3)
    f.reset(P.B)
    assert f.update(P.C) == P.B
    assert f.update(P.C) == P.B
    assert f.update(P.C) == P.C           # third sample in a row
    f.reset(P.B)
    assert f.update(P.C) == P.B
    assert f.update(P.B) == P.B           # interrupted: starts over
    assert f.update(P.C) == P.B
    assert f.update(P.C) == P.B
    assert f.update(P.C) == P.C


def test_filter_removing_power_acts_at_once():
    f = P.PilotFilter(3)
    f.reset(P.C)
    assert f.update(P.B) == P.B
    f.reset(P.C)
    assert f.update(P.A) == P.A
    f.reset(P.C)
    assert f.update(P.UNKNOWN) == P.UNKNOWN
    f.reset(P.C)
    assert f.update(P.E) == P.E
    f.reset(P.B)
    assert f.update(P.F) == P.F


def test_filter_unknown_from_b_is_debounced():
    # without energy flowing a single noisy sample must not raise a pilot fault
    f = P.PilotFilter(3)
    f.reset(P.B)
    assert f.update(P.UNKNOWN) == P.B
    assert f.update(P.B) == P.B
    for _ in range(3):
        s = f.update(P.UNKNOWN)
    assert s == P.UNKNOWN


def test_diode():
    assert P.diode_ok(-12000)
    assert P.diode_ok(-11500)
    assert not P.diode_ok(-2000)
    assert not P.diode_ok(0)
    assert P.power_level(P.C) and P.power_level(P.D)
    assert not P.power_level(P.B) and not P.power_level(P.A)
