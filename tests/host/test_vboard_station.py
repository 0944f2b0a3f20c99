"""The controller running on the virtual board in real time, driven as a station is:
the plant port plays the EV and grid, the host link (host_tools.link) plays the host."""

import json
import threading
import time

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


def wait_for(tel, pred, timeout=15):
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
    host = plant.do(do="setpoint", soc_target_pct=50, txn="t")
    assert host["ok"] is False and "link" in host["error"]
    state = plant.do(do="state")["state"]
    assert state["cp"] == "B"
    plant.port.write(b"this is not json\n")
    assert json.loads(plant.port.readline())["ok"] is False
