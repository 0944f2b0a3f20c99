from core.thermal import Derate


def test_full_current_below_derate_point():
    d = Derate(650, 750, 50)
    assert d.update(250) == 1000
    assert d.update(650) == 1000
    assert not d.tripped


def test_linear_between_derate_and_limit():
    d = Derate(650, 750, 50)
    assert d.update(700) == 500
    assert d.update(725) == 250
    assert d.apply(32000) == 8000
    assert d.update(749) == 10


def test_stop_at_limit_and_hysteresis():
    d = Derate(650, 750, 50)
    assert d.update(750) == 0
    assert d.tripped
    assert d.update(720) == 0          # below the limit but not below limit - hysteresis
    assert d.tripped
    assert d.update(700) == 0          # exactly limit - hysteresis: still not below
    assert d.update(699) == 510        # resumes on the derating line
    assert not d.tripped


def test_reconfigure():
    d = Derate(650, 750, 50)
    d.configure(400, 500, 20)
    assert d.update(500) == 0 and d.tripped
    assert d.update(479) == 210
