"""Scenario files: every kind of invalid file is refused before anything runs, and the
message names the file, the place (event index or table) and the problem."""

import subprocess
import sys
from pathlib import Path

import pytest

from host_tools import scenario as sc

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
BAD = SCENARIOS / "bad"

# file -> (event index or None, where text, problem text)
CASES = {
    "unknown_do.toml": (1, "event #1", "unknown do 'teleport'"),
    "missing_key.toml": (1, "event #1", "missing key 'txn'"),
    "missing_t_s.toml": (0, "event #0", "missing key 't_s'"),
    "wrong_type.toml": (0, "event #0", "soc_target_pct must be a number, got 'fifty'"),
    "out_of_range.toml": (2, "event #2", "c = 500.0 is out of range -40 .. 150"),
    "out_of_order.toml": (1, "event #1", "events out of time order: t_s = 5 comes after t_s = 10"),
    "after_end.toml": (0, "event #0", "t_s = 90 is outside the run"),
    "bad_kind.toml": (0, "event #0", "kind = 'melted' is not one of short, diode, open"),
    "unknown_event_key.toml": (0, "event #0", "unknown key 'force'"),
    "grid_ramp_no_target.toml": (0, "event #0", "grid_ramp needs voltage_v and/or frequency_hz"),
    "bad_config.toml": (None, "[config]", "MAX_CHARGE_AMPS: value 200 out of range: allowed 6 to 80 A"),
    "unknown_ev_key.toml": (None, "[ev]", "unknown key 'battery_kwh'"),
    "not_toml.toml": (None, "file", "not valid TOML"),
    "no_version.toml": (None, "top level", "missing key 'version'"),
}


def test_every_bad_example_has_a_case():
    assert sorted(p.name for p in BAD.glob("*.toml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_names_file_place_and_problem(name):
    index, where, problem = CASES[name]
    with pytest.raises(sc.ScenarioError) as info:
        sc.load(BAD / name)
    e = info.value
    text = str(e)
    assert name in text
    assert where in text
    assert problem in text
    assert e.index == index
    assert e.file.endswith(name)


def _doc(**over):
    d = {"version": 1, "duration_s": 60, "at": [{"t_s": 1, "do": "plug"}]}
    d.update(over)
    return d


@pytest.mark.parametrize("event, problem", [
    ({"t_s": 1, "do": "setpoint", "soc_target_pct": 50, "txn": "a", "mode": "turbo"}, "mode = 'turbo' is not one of"),
    ({"t_s": 1, "do": "setpoint", "soc_target_pct": 101, "txn": "a"}, "soc_target_pct = 101 is out of range"),
    ({"t_s": 1, "do": "setpoint", "soc_target_pct": True, "txn": "a"}, "soc_target_pct must be a number"),
    ({"t_s": 1, "do": "setpoint", "soc_target_pct": 50, "txn": ""}, "txn must be 1 to 64 characters"),
    ({"t_s": 1, "do": "limit", "charge_a": 10}, "missing key 'discharge_a'"),
    ({"t_s": 1, "do": "limit", "charge_a": -1, "discharge_a": 5}, "charge_a = -1 is out of range"),
    ({"t_s": 1, "do": "grid", "voltage_v": "high"}, "voltage_v must be a number"),
    ({"t_s": 1, "do": "grid"}, "grid needs voltage_v and/or frequency_hz"),
    # where the run starts only: the grid cannot be put in service by an event
    ({"t_s": 1, "do": "grid", "in_service": False}, "unknown key 'in_service'"),
    ({"t_s": 1, "do": "grid_ramp", "frequency_hz": 50.5}, "missing key 'over_s'"),
    ({"t_s": 1, "do": "meter_fault"}, "missing key 'kind'"),
    ({"t_s": 1, "do": "meter_fault", "kind": "smoke"}, "kind = 'smoke' is not one of timeout, crc, exception"),
    ({"t_s": 1, "do": "evse_temp", "c": float("nan")}, "c must be a finite number"),
    ({"t_s": 1, "do": "config"}, "config needs at least one settings key"),
    ({"t_s": 1, "do": "config", "MAX_CHARGE_AMPS": [1, 2]}, "must be a plain value"),
    ({"t_s": "soon", "do": "plug"}, "t_s must be a number"),
    ({"t_s": -1, "do": "plug"}, "outside the run"),
    ({"t_s": 1, "do": 5}, "unknown do 5"),
])
def test_bad_event_in_memory(event, problem):
    with pytest.raises(sc.ScenarioError) as info:
        sc.validate(_doc(at=[{"t_s": 0, "do": "plug"}, event]), "mem.toml")
    assert "mem.toml: event #1" in str(info.value)
    assert problem in str(info.value)
    assert info.value.index == 1


@pytest.mark.parametrize("doc, where, problem", [
    (_doc(version=2), "top level", "only version 1"),
    (_doc(duration_s=0), "top level", "duration_s = 0 is out of range"),
    (_doc(vm="jython"), "top level", "vm = 'jython' is not one of"),
    (_doc(extra=1), "top level", "unknown key 'extra'"),
    (_doc(ev={"soc_pct": 120}), "[ev]", "soc_pct = 120 is out of range"),
    (_doc(ev={"v2g_capable": "yes"}), "[ev]", "v2g_capable must be true or false"),
    (_doc(grid={"frequency_hz": 80}), "[grid]", "frequency_hz = 80 is out of range"),
    (_doc(grid={"in_service": "yes"}), "[grid]", "in_service must be true or false"),
    (_doc(config={"EVSE_TEMP_DERATE_C": 80}), "[config]", "EVSE_TEMP_DERATE_C: must be below EVSE_TEMP_LIMIT_C"),
    (_doc(config={"NO_SUCH": 1}), "[config]", "NO_SUCH: unknown key"),
    (_doc(config={"GRID_PROFILE": 5}), "[config]", "GRID_PROFILE: wrong type int"),
    (_doc(at={"t_s": 1}), "[[at]]", "must be an array of tables"),
])
def test_bad_tables_in_memory(doc, where, problem):
    with pytest.raises(sc.ScenarioError) as info:
        sc.validate(doc, "mem.toml")
    assert "mem.toml: {}: ".format(where) in str(info.value)
    assert problem in str(info.value)


def test_missing_file_is_a_scenario_error(tmp_path):
    with pytest.raises(sc.ScenarioError) as info:
        sc.load(tmp_path / "nope.toml")
    assert "nope.toml: file: cannot read" in str(info.value)


def test_good_scenarios_load_and_normalise():
    loaded = {p.name: sc.load(p) for p in SCENARIOS.glob("*.toml")}
    assert "demo.toml" in loaded
    demo = loaded["demo.toml"]
    assert demo["duration_ms"] == 600000
    assert all(isinstance(e["t_ms"], int) for e in demo["events"])
    assert [e["t_ms"] for e in demo["events"]] == sorted(e["t_ms"] for e in demo["events"])
    assert demo["events"][2] == {"t_ms": 60000, "do": "setpoint", "args": {"soc_target_pct": 30, "txn": "demo-1"}}


def test_examples_cover_the_whole_vocabulary():
    used = set()
    for p in SCENARIOS.glob("*.toml"):
        used.update(e["do"] for e in sc.load(p)["events"])
    assert used == set(sc.EVENTS), "not covered: {}".format(sorted(set(sc.EVENTS) - used))


def test_cli_refuses_bad_file_before_simulating(tmp_path):
    out = tmp_path / "timeline.jsonl"
    proc = subprocess.run([sys.executable, "-m", "host_tools.commands.sim", str(BAD / "unknown_do.toml"),
                           "--json", "--vm", "cpython", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""          # not a single timeline record
    assert "unknown_do.toml: event #1 (do = 'teleport'): unknown do 'teleport'" in proc.stderr.replace("\n", "")
    assert not out.exists()


@pytest.mark.parametrize("name, where", [
    ("bad_config.toml", "bad_config.toml: [config]: MAX_CHARGE_AMPS: value 200 out of range"),
    ("unknown_ev_key.toml", "unknown_ev_key.toml: [ev]: unknown key 'battery_kwh'"),
])
def test_cli_shows_the_table_named_in_a_table_level_error(name, where):
    # the place is text: "[config]" must not be swallowed as console markup
    proc = subprocess.run([sys.executable, "-m", "host_tools.commands.sim", str(BAD / name), "--vm", "cpython"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert where in proc.stderr.replace("\n", ""), proc.stderr


def test_live_view_prints_brackets_in_event_messages_as_text():
    import io

    from rich.console import Console

    from host_tools.commands.sim import _LiveView
    buf = io.StringIO()
    view = _LiveView(Console(file=buf, width=200, color_system=None), {"duration_ms": 60000})
    view({"kind": "event", "t_ms": 1000, "src": "host", "code": "V2G-400",
          "msg": "config_set refused: [config] MAX_CHARGE_AMPS [/] [bold]"})
    assert "config_set refused: [config] MAX_CHARGE_AMPS [/] [bold]" in buf.getvalue()


@pytest.mark.parametrize("buses, problem", [
    ({"meter": "modbus"}, "[buses]"),
    ({"bms": True}, "[buses]"),
    ({"canbus": "can"}, "unknown key 'canbus'"),
])
def test_buses_takes_the_known_tasks_only(buses, problem):
    doc = {"version": 1, "duration_s": 5, "buses": buses}
    with pytest.raises(sc.ScenarioError) as e:
        sc.validate(doc, "b.toml")
    assert problem in str(e.value)
    assert sc.validate({"version": 1, "duration_s": 5, "buses": {"meter": "wire", "bms": "can"}},
                       "b.toml")["buses"] == {"meter": "wire", "bms": "can"}
