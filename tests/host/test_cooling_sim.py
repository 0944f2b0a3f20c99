"""Cooling-loop supervision through the simulator: the scenarios in scenarios/cooling_*.toml
(pump failure at high discharge, at low current, while charging; a flickering flow switch),
the plant's pump and coolant model, and the cooling events' vocabulary."""

from pathlib import Path

import pytest

from host_tools import scenario as sc
from host_tools import sim, vm

ROOT = Path(__file__).resolve().parents[2]

vm.firmware_sys_path()
from board import plant as plantmod  # noqa: E402
from core.controller import Inputs  # noqa: E402

FEEDBACK_MS = 5000


def _run(name):
    return sim.simulate(sc.load(ROOT / "scenarios" / (name + ".toml")), vm="cpython")


def _codes(r, code="V2G-013"):
    return [(e["t_ms"], e["on"]) for e in r.events() if e.get("code") == code]


def _at(r, t_ms):
    """The tick in force at t_ms."""
    return [x for x in r.ticks() if x["t_ms"] <= t_ms][-1]


def _between(r, t0, t1):
    return [x for x in r.ticks() if t0 <= x["t_ms"] < t1]


@pytest.fixture(scope="module")
def discharge():
    return _run("cooling_discharge")


def test_pump_failure_at_high_discharge_is_a_hard_fault(discharge):
    r = discharge
    fault_ms, restore_ms = 40000, 100000
    assert _codes(r) == [(45000, True), (106000, False)]
    raised = [e for e in r.events() if e.get("code") == "V2G-013" and e["on"]][0]
    assert "discharging 32.0 A above COOLING_UNCOOLED_AMPS 16.0 A" in raised["msg"]
    assert "contactor open" in raised["msg"]
    before = _at(r, fault_ms - 50)
    assert before["mode"] == "discharging" and before["amps"] == -32.0 and before["cooling"] == "running"
    # silent for COOLING_FEEDBACK_S: the step that raises it commands the contactor open (the
    # tick's `contactor` is the plant's, which has opened at the next one)
    t = _at(r, 45000)
    assert t["t_ms"] == 45000 and t["mode"] == "fault"
    assert _at(r, 45050)["contactor"] is False and _at(r, 45050)["amps"] == 0.0
    assert t["limit_charge_a"] == 0.0 and t["limit_discharge_a"] == 0.0 and t["cooling"] == "tripped"
    assert t["led"] == "fault"
    # latched while the pump is down, the pump still commanded
    for x in _between(r, 45050, restore_ms + 1000):
        assert x["contactor"] is False and x["amps"] == 0.0 and "V2G-013" in x["errors"]
    # restored: 1 s spin-up, 5 s of steady feedback, then the discharge comes back (ramped)
    after = _between(r, 106000, 150000)
    assert after[0]["errors"] == [] and after[-1]["amps"] == -32.0 and after[-1]["mode"] == "discharging"
    assert after[-1]["led"] == "discharging"


def test_failed_pump_heats_the_stage_and_the_open_contactor_lets_it_cool(discharge):
    temps = [x["evse_temp_c"] for x in _between(discharge, 40000, 45050)]
    assert temps == sorted(temps) and temps[-1] > temps[0]      # 32 A through a stage without flow
    peak = max(x["evse_temp_c"] for x in _between(discharge, 40000, 100000))
    assert peak < 30.0                                          # minutes of inertia: 5 s is little
    assert _at(discharge, 99000)["evse_temp_c"] < peak          # no current: it cools again


def test_pump_failure_at_low_current_raises_nothing_until_the_current_needs_cooling():
    r = _run("cooling_low_current")
    quiet = _between(r, 60000, 360000)
    assert all(x["errors"] == [] and x["amps"] == -10.0 and x["cooling"] == "off" for x in quiet)
    assert all(x["pump"] is False for x in quiet)
    # 10 A through the uncooled stage: it warms on the coolant's minutes, toward 5.9 C above
    rise = _at(r, 359000)["evse_temp_c"] - _at(r, 60000)["evse_temp_c"]
    assert 2.0 < rise < 5.9
    # the CSMS lifts the limit: the pump is commanded at once, silent, and the discharge,
    # by then above 16 A, ends
    (t_on, on), = _codes(r)
    assert on and 360000 + FEEDBACK_MS < t_on <= 360000 + FEEDBACK_MS + 1000
    assert _at(r, t_on)["mode"] == "fault" and _at(r, t_on + 50)["contactor"] is False


def test_pump_failure_while_charging_derates_to_the_uncooled_rating():
    r = _run("cooling_charge")
    assert _codes(r) == [(35000, True), (546000, False)]
    derated = _between(r, 36000, 540000)
    assert all(x["contactor"] and x["mode"] == "charging" and x["limit_charge_a"] == 16.0
               and x["limit_charge_src"] == "cooling" and x["cooling"] == "derated" for x in derated)
    assert _at(r, 37000)["amps"] == 16.0 and _at(r, 37000)["led"] == "charging"
    # the coolant's thermal inertia: a slow climb toward 15 C above the loop's 25 C
    temps = [_at(r, t)["evse_temp_c"] for t in (60000, 180000, 300000, 539000)]
    assert temps == sorted(temps) and 36.0 < temps[-1] < 40.0
    assert _at(r, 599000)["amps"] == 32.0 and _at(r, 599000)["evse_temp_c"] < temps[-1]


def test_flickering_flow_switch_within_the_window_is_no_fault():
    r = _run("cooling_flicker")
    flicker = _between(r, 20000, 100000)
    assert all(x["errors"] == [] and x["amps"] == 32.0 and x["cooling"] == "running" for x in flicker)
    # gaps of 8 s: longer than COOLING_FEEDBACK_S, so a fault (charging: derate, not a trip)
    (t1, on1), (t2, on2) = _codes(r)
    assert on1 and 100000 < t1 <= 100000 + FEEDBACK_MS + 300 and not on2
    assert _at(r, t1)["contactor"] and _at(r, t1)["limit_charge_src"] == "cooling"
    # the flickering switch does not clear it; the repaired one does, COOLING_FEEDBACK_S later
    assert all("V2G-013" in x["errors"] for x in _between(r, t1, 160000))
    assert t2 == 160000 + FEEDBACK_MS


# -- the plant ----------------------------------------------------------------------------------

class _Out:
    def __init__(self, cooling, contactor=False):
        self.pwm_pm = 1000
        self.contactor = contactor
        self.request_ma = 0
        self.cooling = cooling


def _flow_trace(p, steps, cooling=True, start=0):
    inp = Inputs()
    out = _Out(cooling)
    trace = []
    t = start
    for _ in range(steps):
        before = inp.cooling_count
        p.fill_inputs(inp, t)
        trace.append(inp.cooling_count != before)
        p.step(t, 50, out)
        t += 50
    return trace


def test_plant_pump_spins_up_then_the_switch_closes():
    p = plantmod.Plant()
    trace = _flow_trace(p, 40)
    first = trace.index(True)
    assert first * 50 == plantmod.PUMP_SPINUP_MS and all(trace[first:])
    p.apply_event("cooling_fault", {"kind": "pump"})
    assert not any(_flow_trace(p, 40, start=2000))
    p.apply_event("cooling_restore", {})
    assert _flow_trace(p, 40, start=4000).index(True) * 50 == plantmod.PUMP_SPINUP_MS


def test_plant_flicker_and_stuck_switch():
    p = plantmod.Plant()
    _flow_trace(p, 40)
    p.apply_event("cooling_fault", {"kind": "flicker", "open_s": 1.0}, 2000)
    trace = _flow_trace(p, 52, start=2000)      # 2.6 s: two cycles of 1 s open, 0.3 s closed
    assert trace == ([False] * 20 + [True] * 6) * 2
    p.apply_event("cooling_fault", {"kind": "flow_switch"}, 5000)
    assert not any(_flow_trace(p, 40, start=5000)) and p.flowing(7000)


def test_plant_stage_heats_on_the_coolant_time_constant_without_flow():
    p = plantmod.Plant()
    p.apply_event("cooling_fault", {"kind": "pump"})
    p.ev_ma = 32000
    p.contactor_closed = True
    out = _Out(True)
    # hold 32 A (an EV with nothing to follow: step() keeps ev_ma since the target is set below)
    p.ev_target_ma = lambda: 32000
    t = 0
    for _ in range(plantmod.TAU_STILL_MS // 50):
        p.contactor_closed = True
        out.contactor = True
        p.step(t, 50, out)
        t += 50
    # one time constant: 63 % of the 60 C the stage settles at with 32 A and no flow
    assert 37.5 <= (p.evse_temp_dc - 250) / 10 <= 38.5
    assert p.rise_mdc > 0 and p.held_dc == 250


@pytest.mark.parametrize("args, problem", [
    ({}, "missing key 'kind'"),
    ({"kind": "fan"}, "kind = 'fan' is not one of pump, flow_switch, flicker"),
    ({"kind": "flicker", "open_s": 0}, "open_s = 0 is out of range 0.1 .. 60"),
    ({"kind": "pump", "open_s": 2}, "open_s applies to kind = flicker only"),
    ({"kind": "pump", "rpm": 2}, "unknown key 'rpm' (allowed: kind, open_s)"),
])
def test_cooling_events_get_the_same_answer_from_validator_and_plant(args, problem):
    assert plantmod.COOLING_EVENTS["cooling_fault"] == sc.EVENTS["cooling_fault"]
    assert plantmod.COOLING_EVENTS["cooling_restore"] == sc.EVENTS["cooling_restore"]
    with pytest.raises(sc.ScenarioError) as e:
        sc._check_event("s.toml", 0, dict(args, t_s=0, do="cooling_fault"), 10, None)
    assert e.value.problem == problem
    with pytest.raises(ValueError) as e2:
        plantmod.Plant().apply_event("cooling_fault", args)
    assert str(e2.value) == problem
    with pytest.raises(ValueError):
        plantmod.Plant().apply_event("cooling_restore", {"kind": "pump"})


def test_plot_has_the_led_and_cooling_lanes(discharge, tmp_path):
    spans = sim.runs(discharge.ticks(), "led")
    assert [v for _, _, v in spans][:5] == ["idle", "connected", "charging", "discharging", "fault"]
    fault = [s for s in spans if s[2] == "fault"][0]
    assert fault[0] == 45.0 and 105.0 <= fault[1] <= 106.1
    assert [v for _, _, v in sim.runs(discharge.ticks(), "cooling")][-3:] == ["running", "tripped", "running"]
    png = sim.plot(discharge, tmp_path / "cooling.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
