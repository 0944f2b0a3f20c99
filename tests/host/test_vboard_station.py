"""The controller running on the virtual board in real time, driven as a station is:
the plant port plays the EV and grid, the host link (host_tools.link) plays the host."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from host_tools.link import LinkClient
from vboard_fixture import RunningBoard

QUICK_GRID = {"GRID_ENTER_SERVICE_DELAY_S": 1, "GRID_RAMP_S": 0}


class Plant:
    def __init__(self, path):
        self.port = serial.Serial(path, timeout=2)

    def do(self, **event):
        self.port.write((json.dumps(event) + "\n").encode())
        line = self.port.readline()
        assert line, "no reply from the plant port"
        return json.loads(line)


@pytest.fixture
def station(tmp_path):
    state = tmp_path / "flash"
    board = RunningBoard(state)
    # settings as an installer leaves them: a short enter-service delay for commissioning
    board.mpremote("exec", "open('v2g_vars.json','w').write({!r})".format(json.dumps(QUICK_GRID)))
    plant = Plant(board.endpoints["plant"])
    assert plant.do(do="reboot") == {"ok": True, "do": "reboot"}   # boot with those settings
    time.sleep(1.5)
    tel = []
    lock = threading.Lock()

    def on_tel(msg):
        with lock:
            tel.extend(msg["samples"])
    link = LinkClient(board.endpoints["link"], on_tel=on_tel).open()
    yield board, plant, link, tel
    link.close()
    plant.port.close()
    board.stop()


def wait_for(tel, pred, timeout=45):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tel and pred(tel[-1]):
            return tel[-1]
        time.sleep(0.2)
    raise AssertionError("telemetry never matched; last: {}".format(tel[-1] if tel else None))


def test_plug_charge_discharge_to_target_and_heartbeat_fallback(station):
    board, plant, link, tel = station
    hello = link.hello()
    assert hello["board"] == "sim" and hello["boot_count"] >= 2
    cfg = link.command("config_get").data["values"]
    assert cfg.get("GRID_ENTER_SERVICE_DELAY_S") == 1, cfg
    assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
    charging = wait_for(tel, lambda s: s["mode"] == "charging" and s["ma"] > 5000)
    assert charging["contactor"] is True and charging["cp"] == "C"
    # the app asks for a lower SoC: the controller discharges toward it
    r = link.command("soc_target", {"soc_pct": 30}, txn="app-1")
    assert r.ok, r.msg
    discharging = wait_for(tel, lambda s: s["mode"] == "discharging" and s["ma"] < -5000)
    assert discharging["lim_dis_ma"] > 0
    again = link.command("soc_target", {"soc_pct": 90}, txn="app-1")   # same txn: same answer
    assert again.ok == r.ok and again.msg == r.msg
    assert link.command("status").data["target_pm"] == 300
    # the host goes quiet: charge-only within the timeout plus a step, never discharge
    link.heartbeat_s = None
    link.close()
    with serial.Serial(board.endpoints["link"], timeout=0.1) as raw:
        end = time.monotonic() + 14
        seen_fallback = False
        while time.monotonic() < end and not seen_fallback:
            seen_fallback = b"V2G-101" in raw.read(4096)
    assert seen_fallback, "no V2G-101 event within HEARTBEAT_TIMEOUT_S"


def test_plant_port_answers_every_line(station):
    _, plant, _, _ = station
    assert plant.do(do="plug") == {"ok": True, "do": "plug"}
    bad = plant.do(do="grid", frequency_hz="sixty")
    assert bad["ok"] is False and "frequency_hz" in bad["error"]
    bad_host = plant.do(do="setpoint", soc_target_pct=50)
    assert bad_host == {"ok": False, "do": "setpoint", "error": "missing key 'txn'"}
    state = plant.do(do="state")["state"]
    assert state["cp"] == "B"
    plant.port.write(b"this is not json\n")
    assert json.loads(plant.port.readline())["ok"] is False


def test_plant_lines_that_are_not_utf8_leave_the_controller_running(station):
    _, plant, _, tel = station
    plant.port.write(b"\xff\xfe not json\n")
    bad = json.loads(plant.port.readline())
    assert bad["ok"] is False and "not UTF-8" in bad["error"]
    # a two-byte character across byte 60 of a line that is not JSON
    plant.port.write(b"x" + "\u00e9".encode() * 40 + b"\n")
    bad = json.loads(plant.port.readline())
    assert bad["ok"] is False and bad["error"].startswith("not a JSON object: x\u00e9")
    seen = len(tel)
    assert plant.do(do="plug") == {"ok": True, "do": "plug"}
    wait_for(tel, lambda s: s["cp"] == "B")     # telemetry flows and follows the plant
    assert len(tel) > seen


# -- the plant port plays the host's side of a scenario ------------------------------------------

def test_host_event_rules_match_the_scenario_validator():
    """The board cannot import host_tools/scenario.py, so it keeps its own copy of the rules
    for the host's events: they must say exactly what the validator says."""
    from host_tools import scenario, vm
    vm.firmware_sys_path()
    from board import hal

    for do, rule in hal.HOST_EVENTS.items():
        assert scenario.EVENTS[do] == rule, do
    cases = [
        {"do": "setpoint", "soc_target_pct": 50},
        {"do": "setpoint", "soc_target_pct": 101, "txn": "a"},
        {"do": "setpoint", "soc_target_pct": float("nan"), "txn": "a"},
        {"do": "setpoint", "soc_target_pct": "50", "txn": "a"},
        {"do": "setpoint", "soc_target_pct": 50, "txn": 7},
        {"do": "setpoint", "soc_target_pct": 50, "txn": "x" * 65},
        {"do": "setpoint", "soc_target_pct": 50, "txn": "a", "mode": "fast"},
        {"do": "setpoint", "soc_target_pct": 50, "txn": "a", "mode": 1},
        {"do": "limit", "charge_a": 10},
        {"do": "limit", "charge_a": -1, "discharge_a": 0},
        {"do": "limit", "charge_a": False, "discharge_a": 0},
        {"do": "limit", "charge_a": 1, "discharge_a": 0, "txn": ""},
        {"do": "limit", "charge_a": 1, "discharge_a": 0, "phase": 2},
        {"do": "heartbeat_loss", "after_s": 1},
        {"do": "heartbeat_restore", "x": None},
        {"do": "config"},
        {"do": "config", "MAX_CHARGE_AMPS": {"a": 1}},
    ]
    for ev in cases:
        args = {k: v for k, v in ev.items() if k != "do"}
        with pytest.raises(scenario.ScenarioError) as e:
            scenario._check_event("s.toml", 0, dict(ev, t_s=0), 10, None)
        assert hal.host_event_problem(ev["do"], args) == e.value.problem, ev
    for ev in ({"do": "setpoint", "soc_target_pct": 50, "txn": "a", "mode": "auto"},
               {"do": "limit", "charge_a": 16, "discharge_a": 8.5},
               {"do": "heartbeat_loss"}, {"do": "config", "MAX_CHARGE_AMPS": 16}):
        scenario._check_event("s.toml", 0, dict(ev, t_s=0), 10, None)
        assert hal.host_event_problem(ev["do"], {k: v for k, v in ev.items() if k != "do"}) is None


def test_plant_setpoint_and_limit_reach_the_controller_with_its_result(station):
    _, plant, link, tel = station
    assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
    wait_for(tel, lambda s: s["mode"] == "charging" and s["ma"] > 5000)
    first = plant.do(do="setpoint", soc_target_pct=30, txn="plant-sp-1")
    assert first["ok"] is True and first["op"] == "soc_target" and first["txn"] == "plant-sp-1"
    assert first["code"] is None and first["data"]["target_pm"] == 300, first
    wait_for(tel, lambda s: s["mode"] == "discharging" and s["ma"] < -5000)
    # the same txn again, with another target: the original result, nothing changed
    again = plant.do(do="setpoint", soc_target_pct=90, txn="plant-sp-1")
    assert again == first
    assert link.command("status").data["target_pm"] == 300
    # and over the link the same txn is the same command
    r = link.command("soc_target", {"soc_pct": 90}, txn="plant-sp-1")
    assert r.ok and r.msg == first["msg"]
    # a CSMS limit without a txn: one is made up, the controller's limit source says csms
    lim = plant.do(do="limit", charge_a=10, discharge_a=6)
    assert lim["ok"] is True and lim["op"] == "limit" and lim["txn"].startswith("plant-"), lim
    s = wait_for(tel, lambda s: s["lim_dis_ma"] == 6000)
    assert s["lim_dis_src"] == "csms"


def test_plant_config_is_the_hosts_config_set_and_a_bad_value_is_refused(station):
    _, plant, link, _ = station
    before = link.command("config_get").data
    bad = plant.do(do="config", MAX_CHARGE_AMPS=500, MIN_SOC_THRESHOLD=30)
    assert bad["ok"] is False and bad["code"] == "V2G-400" and bad["op"] == "config_set", bad
    assert "MAX_CHARGE_AMPS" in bad["error"] and "MAX_CHARGE_AMPS" in bad["data"]["errors"]
    after = link.command("config_get").data
    assert after == before          # refused whole: MIN_SOC_THRESHOLD not taken either
    ok = plant.do(do="config", MIN_SOC_THRESHOLD=30)
    assert ok["ok"] is True and ok["data"]["changed"] == ["MIN_SOC_THRESHOLD"], ok
    assert link.command("config_get", {"keys": ["MIN_SOC_THRESHOLD"]}).data["values"] == {"MIN_SOC_THRESHOLD": 30}
    diag = link.command("diag").data
    assert "MIN_SOC_THRESHOLD" in diag["config_file_keys"]        # on flash, as config_set does
    assert plant.do(do="config", txn="c1")["ok"] is False          # txn is no setting


@pytest.mark.serial      # times the fallback to within a step or so of the timeout
def test_plant_heartbeat_loss_brings_the_fallback_for_real(station):
    _, plant, link, tel = station
    # a short timeout, set the way the host would (through the plant port's config)
    assert plant.do(do="config", HEARTBEAT_TIMEOUT_S=3)["ok"]
    timeout_s = 3
    assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
    assert plant.do(do="setpoint", soc_target_pct=30, txn="before-hb")["ok"]
    wait_for(tel, lambda s: s["mode"] == "discharging" and s["ma"] < -5000)
    hbacks, evts = [], []
    link.subscribe("hback", lambda m: hbacks.append(time.monotonic()))
    link.subscribe("evt", lambda m: evts.extend((time.monotonic(), e) for e in m["events"]))
    time.sleep(1.5)
    assert hbacks, "the host's heartbeats are not answered"
    lost = plant.do(do="heartbeat_loss")
    assert lost["ok"] is True and "V2G-101" in lost["msg"] and "3 s" in lost["msg"], lost
    t_lost = time.monotonic()
    end = t_lost + timeout_s + 3
    raised = None
    while time.monotonic() < end and raised is None:
        raised = next((t for t, e in evts if e["code"] == "V2G-101" and e["on"]), None)
        time.sleep(0.05)
    assert raised is not None, "no V2G-101 after the heartbeat loss"
    last_hb = max(t for t in hbacks if t <= t_lost + 0.3)   # the last one the controller took
    assert not [t for t in hbacks if t > t_lost + 0.3], "a heartbeat got through"
    # the controller's timer runs from the last heartbeat it took; one step (100 ms) plus
    # the ports' latency on top
    assert timeout_s - 0.3 <= raised - last_hb <= timeout_s + 0.1 + 0.6, raised - last_hb
    assert link.stats["hb_sent"] > 0
    diag = link.command("diag").data
    assert "V2G-101" in diag["errors"] and diag["buses"]["link_port"]["hb_dropped"] >= timeout_s
    assert diag["mode"] == "charge_only" and diag["limits"]["discharge_ma"] == 0, diag
    wait_for(tel, lambda s: s["mode"] == "charge_only" and s["ma"] >= 0)
    # heartbeats back: still charge-only until a fresh command
    back = plant.do(do="heartbeat_restore")
    assert back["ok"] is True
    n = len(hbacks)
    end = time.monotonic() + 3
    while len(hbacks) == n and time.monotonic() < end:
        time.sleep(0.05)
    assert len(hbacks) > n, "heartbeats are not answered after heartbeat_restore"
    time.sleep(0.3)
    assert "V2G-101" in link.command("diag").data["errors"]
    fresh = plant.do(do="setpoint", soc_target_pct=30, txn="after-hb")
    assert fresh["ok"] is True, fresh
    end = time.monotonic() + 2
    cleared = None
    while time.monotonic() < end and cleared is None:
        cleared = next((e for _, e in evts if e["code"] == "V2G-101" and not e["on"]), None)
        time.sleep(0.05)
    assert cleared is not None and "fresh command" in cleared["msg"]
    assert "V2G-101" not in link.command("diag").data["errors"]
    wait_for(tel, lambda s: s["mode"] == "discharging")      # discharge toward 30 % again


# -- a host that floods the link -----------------------------------------------------------------

@pytest.mark.serial      # times the reaction (< 1 s): another test's CPU load is not the board's
def test_a_link_flood_leaves_the_pilot_fault_reaction_and_the_plant_port_alone(tmp_path):
    """However fast the host writes, the board takes a bounded share of the link a step: the
    plant port still answers every step and a shorted pilot opens the contactor in control
    steps, not seconds (before: 3-5 s; the VM spent its steps converting the link's bytes).
    The bound is generous for a busy machine: a step or two late is fine, seconds are not."""
    from vboard_fixture import LinkFlood, PlantPort, refused_limit

    board = RunningBoard(tmp_path / "flash")
    try:
        board.mpremote("exec", "open('v2g_vars.json','w').write({!r})".format(json.dumps(QUICK_GRID)))
        plant = PlantPort(board.endpoints["plant"])
        assert plant.do(do="reboot")["ok"]
        time.sleep(1.5)
        assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
        plant.wait(lambda s: s["contactor"])
        flood = LinkFlood(board.endpoints["link"], refused_limit, rate=None)
        flood.start()
        try:
            time.sleep(2)
            t0 = time.monotonic()
            assert plant.do(do="cp_fault", kind="short")["ok"]
            plant.wait(lambda s: not s["contactor"], timeout=10)
            took = time.monotonic() - t0
        finally:
            flood.stop.set()
            flood.join(10)
        assert took < 1.0, took
        assert flood.sent > 1_000_000, flood.sent      # far past any line rate
        with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
            diag = lk.command("diag", {}, timeout=5).data
        assert diag["buses"]["link_port"]["overruns"] > 0       # the excess was lost, and counted
        assert "V2G-010" in diag["errors"] and diag["contactor"] is False
        plant.port.close()
    finally:
        board.stop()


def test_pump_failure_on_the_virtual_board_derates_and_the_led_shows_it(station):
    """The cooling loop for real time: the plant port stops the pump while charging at 32 A;
    telemetry carries the cooling state and the LED pattern."""
    _, plant, link, tel = station
    assert plant.do(do="config", COOLING_FEEDBACK_S=2)["ok"]
    assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
    running = wait_for(tel, lambda s: s["mode"] == "charging" and s["cool"] == "running")
    assert running["led"] == "charging" and plant.do(do="state")["state"]["pump"] is True
    bad = plant.do(do="cooling_fault", kind="pump", open_s=2)
    assert bad == {"ok": False, "do": "cooling_fault", "error": "open_s applies to kind = flicker only"}
    assert plant.do(do="cooling_fault", kind="pump") == {"ok": True, "do": "cooling_fault"}
    derated = wait_for(tel, lambda s: s["cool"] == "derated")
    assert "V2G-013" in derated["errors"] and derated["lim_chg_src"] == "cooling"
    assert derated["lim_chg_ma"] == 16000 and derated["contactor"] is True and derated["led"] == "charging"
    assert plant.do(do="state")["state"]["pump"] is False
    assert plant.do(do="cooling_restore")["ok"]
    back = wait_for(tel, lambda s: s["cool"] == "running" and s["errors"] == [])
    assert back["lim_chg_ma"] == 32000
    # the host link's own cue: stop answering heartbeats, the LED flashes amber
    assert plant.do(do="config", HEARTBEAT_TIMEOUT_S=1)["ok"]
    assert plant.do(do="heartbeat_loss")["ok"]
    assert wait_for(tel, lambda s: "V2G-101" in s["errors"])["led"] == "link"


# -- what survives on the board's flash -----------------------------------------------------------

def wait_booted(plant, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if plant.do(do="state")["ok"]:
                return
        except (AssertionError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("the station did not answer on the plant port")


def unsealed_json(path):
    from app import storage
    return json.loads(storage.unseal(path.read_bytes())[1])


def diag_of(board):
    from host_tools.diag import fetch_events
    with LinkClient(board.endpoints["link"]) as link:
        return link.command("diag").data, fetch_events(link)


def test_weld_latch_survives_a_damaged_controller_state_on_the_board(tmp_path):
    state = tmp_path / "flash"
    board = RunningBoard(state)
    plant = Plant(board.endpoints["plant"])
    try:
        wait_booted(plant)
        assert plant.do(do="contactor_fault", kind="welded")["ok"]
        end = time.monotonic() + 10
        while time.monotonic() < end and "V2G-011" not in diag_of(board)[0]["errors"]:
            time.sleep(0.2)
        assert plant.do(do="contactor_restore")["ok"]
        d, _ = diag_of(board)
        assert "V2G-011" in d["errors"] and d["storage"]["damaged"] == []
    finally:
        plant.port.close()
        assert board.stop() == 0
    ctl = state / "state" / "controller.json"
    assert unsealed_json(ctl)["weld"] is True
    # one field changed on the stopped board's flash: the latch is cleared in the file
    ctl.write_bytes(ctl.read_bytes().replace(b'"weld": true', b'"weld": false'))
    board = RunningBoard(state)
    plant = Plant(board.endpoints["plant"])
    try:
        wait_booted(plant)
        d, events = diag_of(board)
        assert "V2G-011" in d["errors"] and "V2G-020" in d["errors"], d["errors"]
        assert d["storage"]["damaged"] == ["state/controller.json"]
        rep = [e for e in events if e[1] == "V2G-020"]
        assert rep and "state/controller.json" in rep[-1][3] and "other copy is used" in rep[-1][3], rep
        text = subprocess.run([str(Path(sys.executable).with_name("v2g-diag")), "--port",
                               board.endpoints["link"], "--all"], capture_output=True, text=True,
                              timeout=60).stdout
        assert "stored state: DAMAGED state/controller.json" in text, text
    finally:
        plant.port.close()
        assert board.stop() == 0
    # now both copies: the station assumes the weld and the lost host until an operator clears
    (state / "state" / "controller.json").unlink()
    (state / "state" / "controller.json.bak").write_bytes(b"")
    board = RunningBoard(state)
    plant = Plant(board.endpoints["plant"])
    try:
        wait_booted(plant)
        d, events = diag_of(board)
        assert {"V2G-011", "V2G-020", "V2G-101"} <= set(d["errors"]), d["errors"]
        assert d["mode"] in ("fault", "charge_only") and d["limits"]["discharge_ma"] == 0, d
        rep = [e for e in events if e[1] == "V2G-020"]
        assert "assumed until an operator clears" in rep[-1][3], rep
    finally:
        plant.port.close()
        assert board.stop() == 0


def test_a_power_cut_while_mirroring_never_leaves_the_journal_ahead_of_the_settings(tmp_path):
    """The virtual board's flash reaches the state folder in write order: cut the power the
    moment the journal that records a config_set is on disk; the settings file it depends on
    is there too."""
    from app import storage
    state = tmp_path / "flash"
    # the board's VM dies right after its mirror has put a journal naming the plant's txn in place
    board = RunningBoard(state, env={"V2G_VBOARD_CUT_AFTER": "state/journal.json:plant-"})
    plant = Plant(board.endpoints["plant"])
    try:
        wait_booted(plant)
        r = plant.do(do="config", MIN_SOC_THRESHOLD=30)
        assert r["ok"] is True, r
        journal = state / "state" / "journal.json"
        end = time.monotonic() + 10
        while time.monotonic() < end and not (journal.exists() and r["txn"].encode() in journal.read_bytes()):
            time.sleep(0.05)
    finally:
        plant.port.close()
        board.kill()
    txns = [row[0] for row in unsealed_json(journal)["txns"]]
    assert r["txn"] in txns
    settings = state / "v2g_vars.json"
    assert settings.exists(), "journal on flash says applied, the settings file is not there"
    assert json.loads(settings.read_text())["MIN_SOC_THRESHOLD"] == 30
    storage.unseal((state / "state" / "controller.json").read_bytes())
