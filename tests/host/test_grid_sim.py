"""Grid compliance through the simulator (`v2g sim`'s library): every trip stage of every
profile just inside and just outside its threshold and clearing time, ride-through,
enter service, droop slope and deadband, droop against the SoC floor and thermal
derating, and the frequency-response latency. The full matrix runs on CPython; a
sample runs in the MicroPython VM and must give the same trip times.

The measuring code is host_tools/gridcheck.py; docs/grid.md gives the timing rule."""

import pytest

from host_tools import gridcheck as gc
from host_tools import sim, vm
from host_tools.gridcheck import FAST_POLL_MS, STEP_MS

vm.firmware_sys_path()
from core.grid_profiles import profiles  # noqa: E402

PROFILES = profiles()

ALL_STAGES = [s for p in gc.PROFILE_ORDER for s in gc.stages(p)]


@pytest.fixture(scope="module")
def matrix():
    return {repr(r["stage"]): r for r in gc.matrix("cpython")}


def test_every_profile_has_its_stages():
    names = {p: [s.name for s in gc.stages(p)] for p in PROFILES}
    for p in ("IEEE1547_CAT_I_60HZ", "IEEE1547_CAT_II_60HZ", "IEEE1547_CAT_III_60HZ"):
        assert sorted(names[p]) == ["OF1", "OF2", "OV1", "OV2", "UF1", "UF2", "UV1", "UV2"]
    assert sorted(names["EN50549_50HZ"]) == ["OF", "OV2", "UF", "UV1"]
    assert len(ALL_STAGES) == sum(len(PROFILES[p]["stages"]) for p in PROFILES)
    # stage 2 is the wider one
    cat2 = {s.name: s for s in gc.stages("IEEE1547_CAT_II_60HZ")}
    assert cat2["OV2"].threshold == 288000 and cat2["OV2"].clearing_ms == 160
    assert cat2["UV1"].threshold == 168000 and cat2["UV1"].clearing_ms == 10000
    assert cat2["UF2"].threshold == 56500


def test_meter_polls_where_gridcheck_assumes():
    """The simulated meter reads at multiples of METER_POLL_MS: the 'first outside reading'."""
    from board import scenario_run

    for poll in (100, 500):
        sc = gc.build("IEEE1547_CAT_II_60HZ", [], 3000, config={"METER_POLL_MS": poll})
        run = scenario_run.Run(sc, out=lambda line: None)
        seen = []
        fill = run.plant.fill_inputs

        def spy(inp, now, fill=fill, seen=seen, plant=run.plant):
            before = plant.meter_read_ms
            fill(inp, now)
            if plant.meter_read_ms != before:
                seen.append(now)
        run.plant.fill_inputs = spy
        run.advance(3000)
        assert seen == list(range(0, 3000, poll))
        for t in range(0, 3000, STEP_MS):
            assert gc.first_poll_at_or_after(t, poll) == min(x for x in seen + [3000] if x >= t)


@pytest.mark.parametrize("stage", ALL_STAGES, ids=repr)
def test_trip_just_outside_on_time(matrix, stage):
    """One unit beyond the threshold trips with the stage's code, on the last sample at or
    before the clearing time counted from the first outside reading, and the current stops."""
    r = matrix[repr(stage)]
    for key in ("aligned", "late", "default"):
        m = r[key]
        assert m["code"] == stage.code, (key, m)
        assert stage.clearing_ms - STEP_MS < m["share_ms"] <= stage.clearing_ms, (key, m)
        assert m["fw_elapsed_ms"] == m["share_ms"], (key, m)     # the firmware counts the same
        assert m["request_at_trip"] == 0 and m["limits_at_trip"] == (0, 0), (key, m)
    # step on a poll: the trip time from the grid step is the firmware's share
    assert r["aligned"]["trip_ms"] == r["aligned"]["share_ms"]
    # step one control step after a poll: the meter shows it one poll period later
    assert r["late"]["trip_ms"] == r["aligned"]["trip_ms"] + FAST_POLL_MS - STEP_MS
    assert r["default"]["trip_ms"] == r["aligned"]["trip_ms"] + gc.DEFAULT_POLL_MS - STEP_MS
    assert r["problems"] == []


@pytest.mark.parametrize("stage", ALL_STAGES, ids=repr)
def test_on_threshold_and_short_excursions_ride_through(matrix, stage):
    r = matrix[repr(stage)]
    assert r["inside"]["hold_ms"] > stage.clearing_ms + FAST_POLL_MS
    assert r["inside"]["trip_ms"] is None, r["inside"]
    ride = r["ride"]
    assert ride["excursion_ms"] < stage.clearing_ms
    assert not ride["tripped_short"]
    # the timer was reset: the next excursion needs the full clearing time again
    assert ride["second"]["code"] == stage.code
    assert ride["second"]["trip_ms"] == r["aligned"]["trip_ms"]
    # the shortest excursion (in whole polls) longer than the clearing time trips on time
    assert r["overstay"]["excursion_ms"] > stage.clearing_ms
    assert r["overstay"]["trip_ms"] == r["aligned"]["trip_ms"]


# ------------------------------------------------------------------ the default meter poll

LONG_STAGES = [s for s in ALL_STAGES if s.clearing_ms >= gc.DEFAULT_POLL_MS]
FAST_STAGES = [s for s in ALL_STAGES if s.clearing_ms < gc.DEFAULT_POLL_MS]
LATE_BY = gc.DEFAULT_POLL_MS - STEP_MS     # the meter's share at the worst phase (docs/grid.md)


def _runs(matrix, stage):
    return {r["label"]: r for r in matrix[repr(stage)]["excursions"]}


def test_stage_split_covers_the_long_and_fast_stages():
    assert {s.name for s in LONG_STAGES if s.profile == "IEEE1547_CAT_II_60HZ"} == {"OV1", "UV1", "OF1", "UF1"}
    assert {repr(s) for s in LONG_STAGES if s.profile != "IEEE1547_CAT_II_60HZ" and s.clearing_ms < 20000} >= {
        "IEEE1547_CAT_III_60HZ UV2", "EN50549_50HZ UV1"}
    assert len(LONG_STAGES) + len(FAST_STAGES) == len(ALL_STAGES) and len(FAST_STAGES) == 14


@pytest.mark.parametrize("stage", LONG_STAGES, ids=repr)
def test_long_stage_excursions_at_the_default_poll(matrix, stage):
    """METER_POLL_MS 500 (the default): an excursion ending just inside the clearing time
    rides through in every phase; one just outside trips on time; at the worst phase the
    meter's share is one poll less one step, never more."""
    assert stage.clearing_ms % gc.DEFAULT_POLL_MS == 0     # why "just inside" always rides through
    runs = _runs(matrix, stage)
    for label in ("clearing - 1 step, on a poll", "clearing - 1 step, worst phase"):
        r = runs[label]
        assert r["excursion_ms"] == stage.clearing_ms - STEP_MS
        assert r["trip_ms"] is None, r
    r = runs["clearing + 1 step, on a poll"]
    assert r["excursion_ms"] == stage.clearing_ms + STEP_MS
    assert r["code"] == stage.code and r["trip_ms"] == stage.clearing_ms, r
    # worst phase: the meter sees the excursion 450 ms late and its end as late, so it
    # rides through up to clearing + 450 ms and always trips from clearing + 500 ms,
    # at clearing + 450 ms from the grid step
    r = runs["longest riding through, worst phase"]
    assert r["excursion_ms"] == stage.clearing_ms + LATE_BY and r["trip_ms"] is None, r
    r = runs["shortest always tripping, worst phase"]
    assert r["excursion_ms"] == stage.clearing_ms + gc.DEFAULT_POLL_MS
    assert r["code"] == stage.code and r["trip_ms"] == stage.clearing_ms + LATE_BY, r
    assert runs["one-step blip on a poll"]["trip_ms"] is None
    for r in runs.values():
        assert r["trip_ms"] == r["predicted_ms"], r


@pytest.mark.parametrize("stage", FAST_STAGES, ids=repr)
def test_fast_stage_at_the_default_poll_trips_on_one_reading(matrix, stage):
    """Safety first: a held outside reading keeps counting until a newer one says the
    excursion ended, so at a 500 ms poll a one-step blip that a poll catches trips at the
    decision time after that reading; one between polls is never seen."""
    runs = _runs(matrix, stage)
    d = gc.decision_ms(stage)
    assert gc.sampling_bounds_ms(stage, gc.DEFAULT_POLL_MS) == (0, gc.DEFAULT_POLL_MS)
    r = runs["one-step blip on a poll"]
    assert r["code"] == stage.code and r["trip_ms"] == d, r
    assert runs["clearing - 1 step, on a poll"]["trip_ms"] == d
    assert runs["clearing - 1 step, worst phase"]["trip_ms"] is None     # no poll inside it
    assert runs["longest riding through, worst phase"]["trip_ms"] is None
    r = runs["shortest always tripping, worst phase"]
    assert r["code"] == stage.code and r["trip_ms"] == d + LATE_BY, r
    for r in runs.values():
        assert r["trip_ms"] == r["predicted_ms"], r


def test_excursion_table_lists_every_stage(matrix):
    text = gc.excursion_table(list(matrix.values()))
    lines = text.splitlines()
    assert len(lines) == 2 + len(ALL_STAGES)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "FAIL" not in text


def test_en50549_ten_minute_mean():
    out = gc.mean_run(True)
    assert out["threshold_mv"] == 253000
    assert out["trip_ms"] is not None and 0 < out["trip_ms"] <= 3000
    assert "10-minute mean" in out["msg"]
    assert gc.mean_run(False)["trip_ms"] is None


def test_table_lists_every_stage(matrix):
    text = gc.table(list(matrix.values()), mean=(gc.mean_run(True), gc.mean_run(False)))
    lines = text.splitlines()
    assert len(lines) == 2 + len(ALL_STAGES) + 1
    for s in ALL_STAGES:
        assert any(line.startswith("| {} | {} |".format(s.profile, s.name)) for line in lines), s
    assert "FAIL" not in text


# ------------------------------------------------------------------ enter service

ES_HI = {p: PROFILES[p]["es_f_mhz"][1] for p in PROFILES}


@pytest.mark.parametrize("profile", gc.PROFILE_ORDER)
def test_enter_service_after_trip(profile):
    o = gc.enter_service_run(profile, delay_s=5, ramp_s=10)
    assert o["trip"] is not None and o["trip"] < o["t_back"]
    assert o["waiting_from"] == o["first_inside"]         # V2G-507 at the first reading back
    assert o["in_service"] == o["waiting_from"] + 5000     # never early, not a step late
    lim = o["limit_at"]
    assert lim[0] == 0.0                                    # the ramp starts from zero
    assert 14.0 <= lim[5000] <= 18.0                        # half way through the 10 s ramp
    assert lim[10100] == 32.0
    assert o["amps_end"] == 32.0


@pytest.mark.parametrize("profile", gc.PROFILE_ORDER)
def test_enter_service_window_edge(profile):
    on_edge = gc.enter_service_run(profile, back_mhz=ES_HI[profile], delay_s=5, ramp_s=0)
    assert on_edge["in_service"] == on_edge["first_inside"] + 5000
    beyond = gc.enter_service_run(profile, back_mhz=ES_HI[profile] + 1, delay_s=5, ramp_s=0)
    assert beyond["waiting_from"] is None and beyond["in_service"] is None
    last = beyond["result"].ticks()[-1]
    assert "V2G-505" in last["errors"] and last["request_a"] == 0.0


@pytest.mark.parametrize("profile", ["IEEE1547_CAT_II_60HZ", "EN50549_50HZ"])
def test_enter_service_wait_restarts_after_leaving_window(profile):
    o = gc.enter_service_run(profile, blip_mhz=ES_HI[profile] + 100, delay_s=5, ramp_s=0)
    assert o["in_service"] == o["blip_end_reading"] + 5000


# ------------------------------------------------------------------ droop

DROOP_CASES = {
    "IEEE1547_CAT_II_60HZ": (20, 36, 37, 100, 300, 600, 1000),
    "EN50549_50HZ": (150, 200, 201, 300, 700, 1200),
}


def _clamp(x, lo, hi):
    return max(lo, min(hi, x))


@pytest.mark.parametrize("profile", sorted(DROOP_CASES))
@pytest.mark.parametrize("charge", [True, False], ids=["charging", "discharging"])
def test_droop_line(profile, charge):
    """Settled current against rated * (|df| - deadband) / (droop * f0) on both sides of
    nominal: the base current is the limit, so the droop shows where it moves away from it."""
    offs = DROOP_CASES[profile]
    rows, _ = gc.droop_run(profile, [-o for o in offs] + list(offs), charge=charge)
    base = 32.0 if charge else -32.0
    moved = 0
    for r in rows:
        exp = gc.expected_droop_a(profile, r["f_mhz"])
        want = _clamp(base + exp, -32.0, 32.0)
        assert abs(r["request_a"] - want) <= 0.06, (r, exp)
        assert abs(r["amps"] - want) <= 0.1, (r, exp)
        if abs(r["offset_mhz"]) <= (200 if profile == "EN50549_50HZ" else 36):
            assert r["request_a"] == base, r              # inside the deadband: no response
        moved += r["request_a"] != base
    assert moved >= len(offs) - 3


def test_droop_config_slope_and_deadband():
    """FREQ_DROOP_PCT 3 and FREQ_DEADBAND_HZ 0.1 on Cat III: a steeper line from 0.1 Hz."""
    cfg = {"FREQ_DROOP_PCT": 3, "FREQ_DEADBAND_HZ": 0.1}
    rows, _ = gc.droop_run("IEEE1547_CAT_III_60HZ", [-90, -300, -700], config=cfg)
    for r in rows:
        exp = gc.expected_droop_a("IEEE1547_CAT_III_60HZ", r["f_mhz"], deadband_mhz=100, droop_mpct=3000)
        assert abs(r["request_a"] - (32.0 + exp)) <= 0.06, (r, exp)
    assert rows[0]["request_a"] == 32.0
    assert rows[2]["request_a"] < 32.0 - 10.0     # 0.6 Hz beyond at 3 %: a third of rated


LIMIT_6A = (5000, "limit", {"charge_a": 6, "discharge_a": 32})


def test_droop_discharges_above_the_floor():
    """Control case: charging limited to 6 A, 59.0 Hz asks 10.3 A less: the EV discharges."""
    rows, _ = gc.droop_run("IEEE1547_CAT_II_60HZ", [-1000], extra_events=[LIMIT_6A], ev={"soc_pct": 50.0})
    exp = 6.0 + gc.expected_droop_a("IEEE1547_CAT_II_60HZ", 59000)
    assert exp < -4
    assert abs(rows[0]["request_a"] - exp) <= 0.06 and rows[0]["amps"] < -4


def test_droop_never_discharges_below_the_floor():
    rows, res = gc.droop_run("IEEE1547_CAT_II_60HZ", [-1000], extra_events=[LIMIT_6A], ev={"soc_pct": 19.0})
    assert rows[0]["request_a"] == 0.0 and rows[0]["limit_discharge_src"] == "floor"
    assert min(t["amps"] for t in res.ticks()) >= 0.0
    assert min(t["request_a"] for t in res.ticks()) >= 0.0


def test_droop_discharge_stops_at_the_floor():
    """A small battery just above the floor: the under-frequency discharge runs it down to
    the floor and stops there."""
    rows, res = gc.droop_run("IEEE1547_CAT_II_60HZ", [-1000], hold_ms=60000, extra_events=[LIMIT_6A],
                             ev={"soc_pct": 20.5, "capacity_kwh": 1.0}, config={"V2G_AVAILABLE_MARGIN": 0})
    ticks = res.ticks()
    assert min(t["amps"] for t in ticks) < -4.0           # it did discharge
    assert min(t["soc_pct"] for t in ticks) >= 19.9
    assert rows[0]["request_a"] >= 0.0 and rows[0]["amps"] >= 0.0
    assert rows[0]["limit_discharge_src"] == "floor"


def test_battery_derating_caps_droop_discharge():
    """Battery at 54 C (derate 45-55 C): discharge capped at 10 % of 32 A = 3.2 A."""
    rows, _ = gc.droop_run("IEEE1547_CAT_II_60HZ", [-1000],
                           extra_events=[LIMIT_6A, (6000, "battery_temp", {"c": 54.0})])
    assert rows[0]["request_a"] == -3.2 and rows[0]["amps"] == -3.2
    assert rows[0]["limit_discharge_src"] == "thermal"


def test_evse_derating_caps_droop_charge():
    """Discharging at a 2 A limit, 61.0 Hz asks +10.3 A: 8.3 A charge without derating,
    6.4 A with the EVSE at 73 C (derate 65-75 C)."""
    lim = (5000, "limit", {"charge_a": 32, "discharge_a": 2})
    free, _ = gc.droop_run("IEEE1547_CAT_II_60HZ", [1000], charge=False, extra_events=[lim])
    exp = -2.0 + gc.expected_droop_a("IEEE1547_CAT_II_60HZ", 61000)
    assert abs(free[0]["request_a"] - exp) <= 0.06
    hot, _ = gc.droop_run("IEEE1547_CAT_II_60HZ", [1000], charge=False,
                          extra_events=[lim, (6000, "evse_temp", {"c": 73.0})])
    assert hot[0]["request_a"] == 6.4 and hot[0]["limit_charge_src"] == "thermal"


# ------------------------------------------------------------------ latency

@pytest.mark.parametrize("profile", ["IEEE1547_CAT_II_60HZ", "EN50549_50HZ"])
def test_frequency_response_latency(profile):
    w = gc.latency_worst(profile)
    assert w["share_ms"] <= STEP_MS                 # the controller's own share
    assert w["total_ms"] <= gc.DEFAULT_POLL_MS - STEP_MS + w["share_ms"]
    assert w["total_ms"] <= 500


# ------------------------------------------------------------------ MicroPython VM

MP_SAMPLE = [("IEEE1547_CAT_II_60HZ", "OV2"), ("EN50549_50HZ", "OF"), ("IEEE1547_CAT_I_60HZ", "UV1")]


@pytest.mark.parametrize("profile,name", MP_SAMPLE)
def test_micropython_gives_the_same_trip_times(matrix, profile, name):
    stage = next(s for s in gc.stages(profile) if s.name == name)
    try:
        mp = gc.check_stage(stage, vm_name="micropython", full=False)
    except sim.SimError as e:   # no Node/VM here: say so rather than pass
        pytest.fail("MicroPython VM unavailable: {}".format(e))
    cp = matrix[repr(stage)]
    assert mp["aligned"]["vm"] == "micropython"
    for key in ("trip_ms", "share_ms", "code", "fw_elapsed_ms", "msg"):
        assert mp["aligned"][key] == cp["aligned"][key], key


def test_an_ev_holding_at_its_target_answers_the_grid_both_ways():
    """At its SoC target the EV holds (no current); a frequency deviation beyond the
    deadband wakes it as a source (under-frequency) or a sink (over-frequency), and it goes
    back to holding when the grid recovers."""
    hold = (4000, "setpoint", {"soc_target_pct": 50, "txn": "hold-here"})
    rows, res = gc.droop_run("IEEE1547_CAT_II_60HZ", [-1000, 1000], extra_events=[hold],
                             ev={"soc_pct": 50.0})
    under, over = rows
    assert abs(under["request_a"] - gc.expected_droop_a("IEEE1547_CAT_II_60HZ", 59000)) <= 0.06, under
    assert under["amps"] < -8.0                              # a source
    assert abs(over["request_a"] - gc.expected_droop_a("IEEE1547_CAT_II_60HZ", 61000)) <= 0.06, over
    assert over["amps"] > 8.0                                # a sink
    last = res.ticks()[-1]
    assert last["request_a"] == 0.0 and last["mode"] == "paused"   # back to holding at nominal


# ------------------------------------------------------------------ the defaults on the meter port's wire
# Nothing changed from the defaults (METER_POLL_MS 500, SDM630 at METER_BAUD 38400): the
# firmware's meter task reads the plant's meter over the wire model of the meter port, every
# byte its time at 38400 baud, the shell moving the port's bytes between control steps, in
# simulated time. Clearing is counted from the grid step.

IEEE_STAGES = [s for s in ALL_STAGES if s.profile.startswith("IEEE")]
EN_FAST = [s for s in ALL_STAGES if s.profile == "EN50549_50HZ" and s.clearing_ms < 1000]
EN_LONG = [s for s in ALL_STAGES if s.profile == "EN50549_50HZ" and s.clearing_ms >= 1000]
WIRE_SENSE_MS = 100      # core/meter_map.py sense_ms at the defaults: what the firmware allows for


@pytest.fixture(scope="module")
def wire():
    return {}


def _wire_stage(wire, stage):
    if repr(stage) not in wire:
        wire[repr(stage)] = gc.wire_stage(stage)
    return wire[repr(stage)]


def test_the_defaults_sense_a_grid_step_within_100_ms():
    from core import config, grid
    cfg = config.validate({})
    assert cfg.meter_baud == 38400 and cfg.meter_model == "SDM630" and cfg.meter_poll_ms == 500
    assert grid.meter_sense_ms(cfg) == WIRE_SENSE_MS


@pytest.mark.parametrize("stage", IEEE_STAGES + EN_LONG, ids=repr)
def test_defaults_clear_every_stage_within_its_clearing_time_from_the_grid_step(wire, stage):
    r = _wire_stage(wire, stage)
    assert not r["problems"], r["problems"]
    assert r["worst_ms"] <= stage.clearing_ms
    # best .. worst over the phases: a step shows one or two control steps late (the whole
    # sensing delay at the worst phase), and the stage is decided that much early: a 160 ms
    # stage one step after the first outside reading, a long one 100 ms before its time
    if stage.clearing_ms < 1000:
        assert (r["best_ms"], r["worst_ms"]) == (100, 150)
    else:
        assert (r["best_ms"], r["worst_ms"]) == (stage.clearing_ms - STEP_MS, stage.clearing_ms)
    assert r["worst_ms"] == gc.trip_decision_ms(stage.clearing_ms, STEP_MS, WIRE_SENSE_MS) + WIRE_SENSE_MS


@pytest.mark.parametrize("stage", EN_FAST, ids=repr)
def test_defaults_clear_the_en50549_fast_stages_within_100_ms(wire, stage):
    r = _wire_stage(wire, stage)
    assert not r["problems"], r["problems"]
    assert r["worst_ms"] <= stage.clearing_ms
    # decided on the first outside reading, which comes one or two control steps after the step
    assert (r["best_ms"], r["worst_ms"]) == (STEP_MS, 100)


@pytest.mark.parametrize("profile", ["IEEE1547_CAT_II_60HZ", "EN50549_50HZ"])
def test_defaults_frequency_step_to_new_current_request_on_the_wire(profile):
    w = gc.wire_latency_worst(profile)
    assert w["total_ms"] <= 500                     # the field manual, end to end
    assert w["total_ms"] <= 300                     # the target
    assert w["total_ms"] == WIRE_SENSE_MS and w["best_total_ms"] == STEP_MS


@pytest.mark.parametrize("profile,name,phases", [("IEEE1547_CAT_II_60HZ", "OF2", (0, 50, 100)),
                                                 ("EN50549_50HZ", "OF", (0, 100, 150))])
def test_defaults_on_the_wire_in_the_micropython_vm(profile, name, phases):
    stage = next(s for s in gc.stages(profile) if s.name == name)
    try:
        mp = [gc.wire_trip_run(stage, ph, vm_name="micropython") for ph in phases]
    except sim.SimError as e:   # no Node/VM here: say so rather than pass
        pytest.fail("MicroPython VM unavailable: {}".format(e))
    cp = [gc.wire_trip_run(stage, ph) for ph in phases]
    assert [r["trip_ms"] for r in mp] == [r["trip_ms"] for r in cp]
    assert [r["msg"] for r in mp] == [r["msg"] for r in cp]
    assert max(r["trip_ms"] for r in mp) <= stage.clearing_ms
    if stage.clearing_ms == 100:
        # both sensing delays occur among these phases: the worst one meets the clearing time
        assert sorted({r["trip_ms"] for r in mp}) == [STEP_MS, 100]
