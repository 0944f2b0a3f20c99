"""v2g bench against the virtual board (--ev-can external --meter sdm630): python-can over the
slcan endpoint plays the vehicle, the board's pymodbus meter simulator answers on RS-485."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from host_tools import bench
from vboard_fixture import RunningBoard

# the command as the console runs it (host_tools.commands.bench:cli)
BENCH = [sys.executable, "-c", "from host_tools.commands.bench import cli; cli()"]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios" / "bench").glob("*.toml"))


@pytest.fixture
def board(tmp_path):
    b = RunningBoard(tmp_path / "flash", "--ev-can", "external", "--meter", "sdm630")
    yield b
    b.stop()


def test_five_bench_scenarios_ship():
    names = {p.stem for p in SCENARIOS}
    assert {"bms_limits", "bms_loss", "soc_floor", "thermal", "meter_faults"} <= names
    for p in SCENARIOS:
        sc = bench.load(p)
        assert sc["expects"] and sc["events"]


# meter_faults times the meter's failures against METER_STALE_S: on a CPU shared with other
# tests the stale reading can be reported before the failure is named, so it runs alone
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.serial) if p.stem == "meter_faults" else p
                                  for p in SCENARIOS], ids=[p.stem for p in SCENARIOS])
def test_scenario_passes_on_the_virtual_board(board, path, tmp_path):
    sc = bench.load(path)
    result = bench.Bench(sc, board.endpoints["link"], can_interface="slcan", can_channel=board.endpoints["can"],
                         plant=board.endpoints["plant"]).run()
    assert result.setup_error is None, result.setup_error
    assert result.passed, result.table()
    assert len(result.samples) >= sc["duration_s"] / bench.SAMPLE_S * 0.8
    # the vehicle really was on the bus: the controller's frames were decoded
    assert any(s.get("can_mode") for s in result.samples)


def test_command_line_writes_table_junit_and_plots(board, tmp_path):
    junit = tmp_path / "out.xml"
    png = tmp_path / "run.png"
    proc = subprocess.run([*BENCH, str(ROOT / "scenarios" / "bench" / "bms_loss.toml"),
                           "--link", board.endpoints["link"], "--can-interface", "slcan",
                           "--can-channel", board.endpoints["can"], "--plant", board.endpoints["plant"],
                           "--junit", str(junit), "--plot", str(png), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BMS loss  PASSED" in proc.stdout and "V2G-130 raised on the loss" in proc.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and len(suite.findall("testcase")) == 6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_check_is_reported_with_its_reason(board, tmp_path):
    text = (ROOT / "scenarios" / "bench" / "bms_limits.toml").read_text()
    # a wrong expectation: the BMS allows 10 A, the check claims 20 A
    bad = tmp_path / "wrong.toml"
    bad.write_text(text.replace("limit_discharge_a = 10.0", "limit_discharge_a = 20.0").replace(
        "duration_s = 16", "duration_s = 6").replace("t_s = 8.0", "t_s = 5.0").replace("t_s = 12.0", "t_s = 5.5")
        .replace("until_s = 8", "until_s = 6").replace("until_s = 12", "until_s = 6").replace(
        "until_s = 16", "until_s = 6").replace("after_s = 9.5", "after_s = 5.9").replace("after_s = 13.5", "after_s = 5.95"))
    result = bench.Bench(bench.load(bad), board.endpoints["link"], can_channel=board.endpoints["can"],
                         plant=board.endpoints["plant"]).run()
    assert not result.passed
    failed = [c for c in result.checks if not c.ok]
    assert failed[0].name == "discharge starts, capped by the BMS"
    assert "limit_discharge_a" in failed[0].detail and "20.0" in failed[0].detail
    html = result.plot(tmp_path / "run.html")
    assert "FAILED" in html.read_text() and "<svg" in html.read_text()


def test_bad_scenarios_are_refused_naming_the_problem(tmp_path):
    base = 'version = 1\nduration_s = 5\n[[expect]]\nname = "x"\nmode = "charging"\n'
    cases = {
        'version = 1\nduration_s = 5\n': "at least one check",
        base + '[[at]]\nt_s = 1\ndo = "teleport"\n': "unknown do 'teleport'",
        base + '[[at]]\nt_s = 9\ndo = "plug"\n': "t_s must be a number within",
        base + '[[at]]\nt_s = 1\ndo = "can_bad"\nkind = "nonsense"\n': "kind = 'nonsense' is not one of",
        base.replace('mode = "charging"', 'speed = 3'): "unknown signal 'speed'",
        base.replace('mode = "charging"', 'amps = "lots"'): "amps wants a number",
        base + '[config]\nMAX_CHARGE_AMPS = 500\n': "MAX_CHARGE_AMPS",
        base + '[vehicle]\nsoc_pct = 120\n': "soc_pct = 120 is out of range",
    }
    for text, words in cases.items():
        p = tmp_path / "s.toml"
        p.write_text(text)
        with pytest.raises(bench.BenchError) as e:
            bench.load(p)
        assert words in str(e.value) and str(p) in str(e.value)


def test_meter_events_need_a_meter_to_act_on(tmp_path):
    sc = bench.load(ROOT / "scenarios" / "bench" / "meter_faults.toml")
    with pytest.raises(bench.BenchError, match="--meter-port"):
        bench.Bench(sc, "/dev/null", can_channel="x")


def test_cli_exit_2_on_a_bad_scenario(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("version = 2\nduration_s = 5\n")
    proc = subprocess.run([*BENCH, str(p), "--link", "/dev/null", "--can-channel", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "version" in proc.stderr


# the meter simulator answers in real time, at 38400 baud several transactions a control step:
# on a CPU shared with other tests its replies come late and the readings go stale
@pytest.mark.serial
def test_bench_plays_the_meter_on_the_rs485_port(tmp_path):
    # --meter-port: the bench's pymodbus meter is the controller's only source of grid
    # voltage and frequency. The board runs its default settings (IEEE 1547 Cat II, 60 Hz,
    # 240 V), which no scenario line mentions: the bench must read them, not assume 50 Hz.
    b = RunningBoard(tmp_path / "flash", "--ev-can", "external", "--meter", "external")
    try:
        sc = bench.load(ROOT / "scenarios" / "bench" / "meter_faults.toml")
        assert "GRID_PROFILE" not in sc["config"] and "NOMINAL_VOLTAGE_V" not in sc["config"]
        run = bench.Bench(sc, b.endpoints["link"], can_interface="slcan", can_channel=b.endpoints["can"],
                          meter_port=b.endpoints["rs485"], plant=b.endpoints["plant"])
        result = run.run()
        assert result.setup_error is None, result.setup_error
        assert result.passed, result.table()
        assert (run.grid_v, run.grid_hz) == (240.0, 60.0)
        good = [s for s in result.samples if s.get("grid_hz") is not None and s["t"] < 5]
        assert good and all(s["grid_hz"] == 60.0 and s["grid_v"] == 240.0 for s in good)
        # a grid event moves what the bench's meter reports: over-frequency trips the controller
        trip = tmp_path / "trip.toml"
        trip.write_text('version = 1\nduration_s = 5\n[config]\nGRID_ENTER_SERVICE_DELAY_S = 0\n'
                        '[[at]]\nt_s = 1.0\ndo = "grid"\nfrequency_hz = 63.0\n'
                        '[[expect]]\nname = "over-frequency trip"\nafter_s = 1\nevent = "V2G-505"\n'
                        '[[expect]]\nname = "the controller sees 63 Hz"\nafter_s = 1.5\ngrid_hz = 63.0\n')
        result = bench.Bench(bench.load(trip), b.endpoints["link"], can_channel=b.endpoints["can"],
                             meter_port=b.endpoints["rs485"], plant=b.endpoints["plant"]).run()
        assert result.setup_error is None and result.passed, result.table()
        assert "bench meter: 240 V 63 Hz" in result.actions[0]["note"]
    finally:
        b.stop()


def test_nominal_frequency_comes_from_the_controllers_profile_table():
    from core import grid_profiles
    for name in grid_profiles.NAMES:
        assert bench.nominal_hz(name) * 1000 == grid_profiles.profile(name)["nominal_mhz"]
    assert bench.nominal_hz("EN50549_50HZ") == 50.0 and bench.nominal_hz("IEEE1547_CAT_II_60HZ") == 60.0
    for bad in ("IEEE1547", "MADE_UP_50HZ", None, 60):
        with pytest.raises(bench.BenchError, match="is none the firmware knows"):
            bench.nominal_hz(bad)


class _Bus:
    def __init__(self):
        self.sent = []

    def send(self, m):
        self.sent.append(m)


def _vehicle_frames(db, seconds=2.0, dt=0.01):
    bus = _Bus()
    v = bench.Vehicle(db, bus, {}, 240.0)
    t = 0.0
    while t < seconds - 1e-9:
        v.step(t, dt)
        t += dt
    counts = {}
    for m in bus.sent:
        counts[m.arbitration_id] = counts.get(m.arbitration_id, 0) + 1
    return counts


def test_vehicle_sends_at_the_dbc_cycle_times(tmp_path):
    import cantools

    db = cantools.database.load_file(str(bench.DBC))
    assert bench.cycle_times(db) == {"BMS_Status": 0.1, "BMS_Limits": 0.1, "BMS_Info": 1.0}
    assert _vehicle_frames(db) == {0x601: 20, 0x602: 20, 0x603: 2}
    # the periods come from the DBC, not from the bench: change one there and the bench follows
    text = bench.DBC.read_text()
    faster = tmp_path / "faster.dbc"
    faster.write_text(text.replace('BA_ "GenMsgCycleTime" BO_ 1537 100;', 'BA_ "GenMsgCycleTime" BO_ 1537 50;'))
    assert _vehicle_frames(cantools.database.load_file(str(faster))) == {0x601: 40, 0x602: 20, 0x603: 2}
    silent = tmp_path / "no_period.dbc"
    silent.write_text(text.replace('BA_ "GenMsgCycleTime" BO_ 1539 1000;\n', ''))
    with pytest.raises(bench.BenchError, match="BMS_Info no GenMsgCycleTime"):
        bench.Vehicle(cantools.database.load_file(str(silent)), _Bus(), {}, 240.0)


def test_the_benchs_meter_answers_at_the_controllers_meter_speed():
    sc = bench.load(ROOT / "scenarios" / "bench" / "meter_faults.toml")
    sc["config"].pop("METER_BAUD", None)
    assert bench._controller_baud(sc) == 38400           # the settings' default
    sc["config"]["METER_BAUD"] = 9600
    assert bench._controller_baud(sc) == 9600


def test_a_mode_never_met_names_the_errors_active_then():
    # a check wanting "discharging" that saw "fault" says which code latched it
    ex = {"name": "discharge resumes", "after_s": 1.0, "until_s": 3.0, "hold": "once",
          "conds": {"mode": "discharging"}, "errors_include": [], "errors_exclude": [],
          "event": None, "event_on": True, "event_msg": None}
    samples = [{"t": 2.0, "mode": "fault", "errors": ["V2G-301"]}]
    check = bench.evaluate(ex, samples, [])
    assert not check.ok and "mode = 'fault', wanted 'discharging' (errors ['V2G-301'])" in check.detail
    samples[0]["errors"] = []
    assert bench.evaluate(ex, samples, []).detail.endswith("wanted 'discharging'")
