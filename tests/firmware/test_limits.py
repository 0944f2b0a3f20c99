import micropython

from core import limits as L


def put(lim, src, charge_ma, discharge_ma):
    # the slots as the controller writes them each step
    lim.charge[src] = charge_ma
    lim.discharge[src] = discharge_ma


def test_minimum_and_source():
    lim = L.Limits()
    put(lim, L.STATION, 32000, 32000)
    put(lim, L.CABLE, 20000, 20000)
    put(lim, L.BMS, 25000, 10000)
    lim.resolve()
    assert lim.charge_ma == 20000 and lim.charge_name() == 'cable'
    assert lim.discharge_ma == 10000 and lim.discharge_name() == 'bms'


def test_tie_goes_to_first_source():
    lim = L.Limits()
    put(lim, L.STATION, 16000, 16000)
    put(lim, L.CSMS, 16000, 16000)
    lim.resolve()
    assert lim.charge_name() == 'station'


def test_unset_sources_do_not_limit():
    lim = L.Limits()
    put(lim, L.STATION, 32000, 0)
    lim.resolve()
    assert lim.charge_ma == 32000
    assert lim.discharge_ma == 0 and lim.discharge_name() == 'station'


def test_negative_counts_as_zero_and_clear():
    lim = L.Limits()
    put(lim, L.STATION, 32000, 32000)
    lim.discharge[L.GRID] = -500
    lim.resolve()
    assert lim.discharge_ma == 0 and lim.discharge_name() == 'grid'
    put(lim, L.GRID, L.NO_LIMIT, L.NO_LIMIT)
    lim.resolve()
    assert lim.discharge_ma == 32000


def test_safety_override_names():
    lim = L.Limits()
    put(lim, L.STATION, 32000, 32000)
    lim.discharge[L.HEARTBEAT] = 0
    lim.resolve()
    assert lim.discharge_ma == 0 and lim.discharge_name() == 'heartbeat'
    assert lim.charge_ma == 32000


def test_force_charge_pilot():
    lim = L.Limits()
    put(lim, L.STATION, 32000, 32000)
    lim.charge[L.CSMS] = 3000
    lim.resolve()
    assert lim.charge_name() == 'csms'
    lim.force_charge(L.PILOT, 0)
    assert lim.charge_ma == 0 and lim.charge_name() == 'pilot'
    lim.force_charge(L.FAULT, 5)    # higher than now: no change
    assert lim.charge_name() == 'pilot'


def test_names_cover_every_slot():
    assert len(L.SOURCES) == L.N_SOURCES
    for name in ('station', 'cable', 'bms', 'thermal', 'grid', 'csms', 'setpoint'):
        assert name in L.SOURCES


def test_resolve_allocates_nothing():
    lim = L.Limits()
    lim.resolve()
    micropython.heap_lock()
    try:
        for i in range(200):
            lim.charge[L.STATION] = 32000
            lim.discharge[L.STATION] = 30000 - i
            lim.charge[L.BMS] = 20000 + i
            lim.resolve()
    finally:
        micropython.heap_unlock()
    assert lim.charge_ma == 20199 and lim.discharge_ma == 29801
