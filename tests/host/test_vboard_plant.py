"""The virtual board's plant is the world around the controller: the EV, its battery and the
grid stay as they were through a controller reset (the board host keeps the plant's state,
host_tools/vboard.py), and a fresh grid is the one the settings describe."""

import json

from host_tools import vm

vm.firmware_sys_path()
from app import station as station_mod  # noqa: E402
from board import hal as sim_hal  # noqa: E402
from board import plant as plantmod  # noqa: E402
from core.controller import CONTROL_PERIOD_MS, Outputs  # noqa: E402


class KeepingPorts(sim_hal.MemoryPorts):
    """In-memory ports whose host keeps the plant, as the virtual board's host does."""

    keeps_plant = True

    def __init__(self, kept=None):
        sim_hal.MemoryPorts.__init__(self)
        self.kept = kept
        self.handovers = 0

    def keep_plant(self, text):
        self.kept = text
        self.handovers += 1

    def kept_plant(self):
        return self.kept


def _run(st, now, ms):
    end = now + ms
    while now < end:
        st.tick(now)
        now += CONTROL_PERIOD_MS
    return now


def test_a_snapshot_keeps_the_world_and_drops_the_controllers_outputs():
    p = plantmod.Plant(ev={"soc_pct": 63.4, "capacity_kwh": 40, "battery_temp_c": 31})
    for do, args in (("plug", {}), ("ev_ready", {}), ("meter_fault", {"kind": "crc"}),
                     ("can_loss", {}), ("cooling_fault", {"kind": "flicker", "open_s": 3})):
        p.apply_event(do, args, 1000)
    p.apply_event("grid_ramp", {"frequency_hz": 59.0, "over_s": 10}, 1000)
    out = Outputs()
    out.contactor, out.pwm_pm, out.request_ma = True, 500, 16000
    p.step(1000, 4000, out)             # 4 s into the 10 s ramp, charging
    assert p.ev_ma > 0 and p.contactor_closed
    snap = json.loads(json.dumps(p.snapshot()))   # as it travels to the host and back

    q = plantmod.Plant()
    q.restore(snap, 777000)             # the next boot's clock starts elsewhere
    for k in plantmod.KEPT:
        assert getattr(q, k) == getattr(p, k), k
    assert q.plugged and q.s2 and q.soc_pm() == p.soc_pm() and q.capacity_wh == 40000
    assert q.energy_in_mwh() == p.energy_in_mwh() > 0
    # the reset dropped the controller's drive: contacts open, no current
    assert not q.contactor_closed and q.ev_ma == 0
    # the ramp goes on where it was: 6 s left
    assert q.f_ramp.active
    assert q.f_ramp.value(777000 + 6000) == 59000
    assert q.f_ramp.value(777000 + 3000) == p.f_ramp.value(5000 + 3000)
    assert q.cooling_fault_ms == 777000 - 4000


def test_a_welded_contactor_stays_closed_and_a_bad_snapshot_changes_nothing():
    p = plantmod.Plant()
    p.apply_event("contactor_fault", {"kind": "welded"}, 0)
    q = plantmod.Plant()
    q.restore(p.snapshot(), 5)
    assert q.contactor_closed
    fresh = plantmod.Plant()
    bad = dict(p.snapshot(), energy_mwh="lots")
    try:
        fresh.restore(bad, 0)
    except ValueError as e:
        assert "energy_mwh" in str(e)
    else:
        raise AssertionError("a snapshot with a text energy was taken")
    assert fresh.contactor_fault is None and fresh.energy_mwh == plantmod.Plant().energy_mwh


def test_the_board_hands_the_plant_over_and_the_next_boot_takes_it_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ports = KeepingPorts()
    now = 0
    hal = sim_hal.Hal(ports=ports, clock=lambda: now)
    st = station_mod.Station(hal, now)
    assert not hal.plant_restored
    ports.inbox["plant"] += b'{"do": "plug"}\n{"do": "ev_ready"}\n{"do": "battery_temp", "c": 38}\n'
    now = _run(st, now, 2000)
    assert ports.handovers >= 3      # every KEEP_PLANT_MS while it runs
    soc = hal.plant.soc_pm()
    hal.reset()                       # the controller resets itself: the plant goes to the host
    assert ports.stop
    kept = ports.kept

    ports2 = KeepingPorts(kept)
    now = 90000
    hal2 = sim_hal.Hal(ports=ports2, clock=lambda: now)
    st2 = station_mod.Station(hal2, now)
    assert hal2.plant_restored
    p = hal2.plant
    assert p.plugged and p.s2 and p.battery_temp_dc == 380 and p.soc_pm() == soc
    _run(st2, now, 500)
    assert hal2.plant_state()["cp"] in ("B", "C")
    # a kept state this firmware cannot read: a fresh plant, not a crash
    hal3 = sim_hal.Hal(ports=KeepingPorts('{"v": 99}'), clock=lambda: 0)
    assert not hal3.plant_restored and not hal3.plant.plugged


def test_the_grid_starts_at_the_nominal_of_the_configured_grid_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v2g_vars.json").write_text(json.dumps(
        {"GRID_PROFILE": "EN50549_50HZ", "NOMINAL_VOLTAGE_V": 230}))
    ports = KeepingPorts()
    hal = sim_hal.Hal(ports=ports, clock=lambda: 0)
    st = station_mod.Station(hal, 0)
    assert st.cfg.grid_profile == "EN50549_50HZ"
    s = hal.plant_state()
    assert (s["grid_mv"], s["grid_mhz"]) == (230000, 50000)
    _run(st, 0, 1000)
    inp = st.inputs
    assert (inp.meter_mv, inp.meter_mhz) == (230000, 50000)
    # a grid the plant port set stays as set through a reset, whatever the settings say
    ports.inbox["plant"] += b'{"do": "grid", "frequency_hz": 50.4}\n'
    _run(st, 1000, 300)
    hal.reset()
    hal2 = sim_hal.Hal(ports=KeepingPorts(ports.kept), clock=lambda: 0)
    station_mod.Station(hal2, 0)
    assert (hal2.plant.grid_mv, hal2.plant.grid_mhz) == (230000, 50400)
