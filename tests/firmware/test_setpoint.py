from core import setpoint as S


def sp(floor=200, margin=100):
    return S.Setpoint(floor, margin)


def test_no_target_charges():
    s = sp()
    assert s.update(True, 500, False) == S.CHARGE
    assert s.update(False, 0, False) == S.CHARGE


def test_availability_latch():
    s = sp()
    assert not s.update_available(250)        # between floor and floor + margin: not yet
    assert s.update_available(300)            # floor + margin reached
    assert s.update_available(250)            # stays available while above the floor
    assert not s.update_available(200)        # at the floor: stop
    assert not s.update_available(290)        # and stays off until floor + margin again
    assert s.update_available(300)


def test_discharge_toward_target_stops_at_target():
    s = sp()
    s.set_target(500)
    assert s.update(True, 800, False) == S.DISCHARGE
    assert s.update(True, 600, False) == S.DISCHARGE
    assert s.update(True, 500, False) == S.HOLD
    # inside the band: hold, no short-cycling
    assert s.update(True, 505, False) == S.HOLD
    assert s.update(True, 495, False) == S.HOLD
    assert s.update(True, 511, False) == S.DISCHARGE


def test_charge_toward_target_with_band():
    s = sp()
    s.set_target(600)
    assert s.update(True, 300, False) == S.CHARGE
    assert s.update(True, 600, False) == S.HOLD
    assert s.update(True, 595, False) == S.HOLD
    assert s.update(True, 589, False) == S.CHARGE


def test_discharge_stops_at_floor_even_with_lower_target():
    s = sp()
    s.set_target(50)
    assert s.update(True, 400, False) == S.DISCHARGE
    assert s.update(True, 201, False) == S.DISCHARGE
    assert s.update(True, 200, False) == S.HOLD
    assert s.wants_discharge and not s.available      # -> V2G-301 at the controller
    assert s.update(True, 250, False) == S.HOLD        # below floor + margin: no restart


def test_discharge_never_starts_below_floor_plus_margin():
    s = sp()
    s.set_target(100)
    assert s.update(True, 299, False) == S.HOLD
    assert s.update(True, 300, False) == S.DISCHARGE


def test_charge_only_forces_charge():
    s = sp()
    s.set_target(400)
    assert s.update(True, 800, False) == S.DISCHARGE
    assert s.update(True, 800, True) == S.CHARGE
    assert not s.wants_discharge


def test_modes():
    s = sp()
    s.set_target(500, S.MODE_CHARGE)
    assert s.update(True, 800, False) == S.HOLD
    assert not s.wants_discharge
    s.set_target(500, S.MODE_DISCHARGE)
    assert s.update(True, 300, False) == S.HOLD
    assert S.mode_index('discharge') == S.MODE_DISCHARGE
    assert S.mode_index('bogus') == -1


def test_unknown_soc_never_discharges():
    s = sp()
    s.set_target(300)
    assert s.update(True, 800, False) == S.DISCHARGE
    assert s.update(False, 0, False) == S.HOLD


def test_capacity():
    s = sp(floor=200)
    assert s.capacity_wh(800, 60000) == 36000
    assert s.capacity_wh(200, 60000) == 0
    assert s.capacity_wh(100, 60000) == 0
