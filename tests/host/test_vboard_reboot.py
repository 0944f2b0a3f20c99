"""A controller reset on the virtual board, with the world around it going on: the car stays
plugged, the battery where it was, the grid as it was (the board host keeps the plant), and
scripts keep their ports by the names in the state folder (STATE/<port>.pty)."""

import json
import os
import threading
import time

import pytest

from host_tools.link import LinkClient
from vboard_fixture import PlantPort, RunningBoard, vm_pids

QUICK_GRID = {"GRID_ENTER_SERVICE_DELAY_S": 1, "GRID_RAMP_S": 0}
PORTS = ("repl", "link", "plant", "rs485", "can")


def settings(board, values):
    board.mpremote("exec", "open('v2g_vars.json','w').write({!r})".format(json.dumps(values)))


def wait_for(tel, pred, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        hit = next((s for s in list(tel) if pred(s)), None)
        if hit is not None:
            return hit
        time.sleep(0.1)
    raise AssertionError("telemetry never matched; last: {}".format(tel[-1] if tel else None))


@pytest.fixture
def board(tmp_path):
    b = RunningBoard(tmp_path / "flash")
    yield b
    b.stop()


def test_reboot_while_discharging_keeps_the_car_and_resumes_after_the_enter_service_wait(board):
    state = board.state
    # a script that knows only the state folder: the names lead to the board's ports
    for name in PORTS:
        assert os.readlink(state / (name + ".pty")) == board.endpoints[name], name
    settings(board, QUICK_GRID)
    plant = PlantPort(str(state / "plant.pty"))
    assert plant.do(do="reboot") == {"ok": True, "do": "reboot"}   # boot with those settings
    tel = []
    lock = threading.Lock()

    def on_tel(msg):
        with lock:
            tel.extend(msg["samples"])
    link = LinkClient(str(state / "link.pty"), on_tel=on_tel).open()
    try:
        assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
        assert link.command("soc_target", {"soc_pct": 30}, txn="app-1").ok
        wait_for(tel, lambda s: s["mode"] == "discharging" and s["ma"] < -5000)
        before = plant.state()
        assert before["ma"] < -5000 and before["contactor"] is True

        with lock:
            tel.clear()
        assert plant.do(do="reboot") == {"ok": True, "do": "reboot"}
        # the same port, by the same name, answers from the new boot: the car is still there
        after = plant.state()
        assert after["cp"] == "C", after                     # plugged, S2 closed
        assert before["soc_pm"] - 1 <= after["soc_pm"] <= before["soc_pm"], (before, after)
        assert after["e_out_wh"] >= before["e_out_wh"]
        assert (after["grid_mv"], after["grid_mhz"]) == (before["grid_mv"], before["grid_mhz"])
        assert after["contactor"] is False and after["ma"] == 0   # the reset opened it

        # the new boot waits to enter service (V2G-507): contacts open, no current ...
        first = wait_for(tel, lambda s: "V2G-507" in s["errors"])
        back = wait_for(tel, lambda s: s["t_ms"] > first["t_ms"] and "V2G-507" not in s["errors"])
        with lock:
            waiting = [s for s in tel if first["t_ms"] <= s["t_ms"] < back["t_ms"]]
        assert waiting and all(s["contactor"] is False and s["ma"] == 0 for s in waiting), waiting
        assert back["t_ms"] - first["t_ms"] >= QUICK_GRID["GRID_ENTER_SERVICE_DELAY_S"] * 1000 - 300
        # ... then discharges again toward the target it kept, from the SoC the car kept
        resumed = wait_for(tel, lambda s: s["mode"] == "discharging" and s["ma"] < -5000)
        assert resumed["soc_pm"] <= before["soc_pm"] and resumed["contactor"] is True
        assert link.command("status").data["target_pm"] == 300
        assert plant.state()["e_out_wh"] >= after["e_out_wh"]
    finally:
        link.close()
        plant.port.close()
    assert board.stop() == 0
    assert not any((state / (name + ".pty")).is_symlink() for name in PORTS)


def test_grid_starts_at_the_profiles_nominal_and_the_plant_outlives_a_vm_crash(board):
    settings(board, {"GRID_PROFILE": "EN50549_50HZ", "NOMINAL_VOLTAGE_V": 230})
    plant = PlantPort(str(board.state / "plant.pty"))
    try:
        assert plant.do(do="reboot")["ok"]
        s = plant.state()
        assert (s["grid_mv"], s["grid_mhz"]) == (230000, 50000), s
        for event in ({"do": "plug"}, {"do": "battery_temp", "c": 41}, {"do": "grid", "frequency_hz": 50.2}):
            assert plant.do(**event)["ok"], event
        assert plant.state()["cp"] == "B"
        time.sleep(1.2)      # the plant goes to the host every 0.5 s: a crash loses no more
        old = vm_pids(board.state)
        assert len(old) == 1
        os.kill(old[0], 9)   # the VM dies without a word; the board restarts it
        end = time.monotonic() + 30
        while time.monotonic() < end and vm_pids(board.state) in ([], old):
            time.sleep(0.1)
        s = plant.state()
        assert s["cp"] == "B" and s["grid_mhz"] == 50200 and s["grid_mv"] == 230000, s
    finally:
        plant.port.close()
