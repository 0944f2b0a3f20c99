"""`v2g-diag --all` against the running virtual board, text and JSON."""

import json
import os
import select
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest
import serial

from core import link as fw_link
from host_tools import diag as D
from host_tools.link import LinkClient, LinkTimeout
from vboard_fixture import RunningBoard

V2G_DIAG = str(Path(sys.executable).with_name("v2g-diag"))


def plant(port, event):
    port.write((json.dumps(event) + "\n").encode())
    end = time.monotonic() + 10
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < end:
        line += port.read(1)
    reply = json.loads(line)
    assert reply["ok"], reply
    return reply


@pytest.fixture(scope="module")
def charging(tmp_path_factory):
    """A board with the EV plugged in and asking for charge, still inside the grid profile's
    enter-service delay after boot (V2G-507), so the limits are held at 0 A by the grid."""
    b = RunningBoard(tmp_path_factory.mktemp("diag") / "flash")
    with serial.Serial(b.endpoints["plant"], timeout=0.2) as p:
        plant(p, {"do": "plug"})
        plant(p, {"do": "ev_ready"})
    time.sleep(2.5)
    yield b
    b.stop()


def diag(board, *args):
    proc = subprocess.run([V2G_DIAG, "--port", board.endpoints["link"], *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_text_report_has_every_section(charging):
    out = diag(charging, "--all")
    for section in ("[firmware]", "[config]", "[limits]", "[errors]", "[events]", "[statistics]", "[update]"):
        assert section in out, section
    assert "board              sim" in out
    assert "stored state: every file read whole at boot" in out
    assert "MAX_CHARGE_AMPS" in out and "default" in out
    assert "set by grid" in out and "V2G-507" in out
    assert "host link, controller side:" in out and "frames_ok" in out
    assert "meter (RS-485):" in out and "CAN (VCU/BMS):" in out
    assert "running            factory" in out and "pending            None" in out   # update slots


def test_json_report_matches_the_controller(charging):
    r = json.loads(diag(charging, "--all", "--json"))
    assert set(r) >= {"firmware", "config", "limits", "errors", "events", "statistics", "update"}
    fw = r["firmware"]
    assert fw["board"] == "sim" and fw["fw"] and fw["boot_count"] >= 1
    assert fw["cp_state"] == "C" and fw["contactor"] is False
    assert {"code": "V2G-507", "meaning": r["errors"][0]["meaning"]} in r["errors"]
    assert r["errors"][0]["meaning"]
    assert r["limits"]["charge_ma"] == 0 and r["limits"]["charge_source"] == "grid"
    assert any(e["code"] == "V2G-507" and e["on"] for e in r["events"])
    keys = {c["key"]: c for c in r["config"]}
    assert keys["MAX_CHARGE_AMPS"]["value"] == 32 and keys["MAX_CHARGE_AMPS"]["source"] == "default"
    assert r["statistics"]["link_controller"]["frames_ok"] >= 4
    assert r["statistics"]["link_host"]["frames_ok"] >= 4
    assert r["update"]["running"] == "factory" and r["update"]["pending"] is None
    # at the defaults the 160 ms stages of the default grid profile trip on one reading
    assert any("the 160 ms stages of IEEE1547_CAT_II_60HZ trip on the first reading" in n
               for n in r["config_notes"])
    assert all(e["boot"] == fw["boot_count"] for e in r["events"])


def test_bus_counters_at_zero_are_shown_and_host_link_counts_timeouts(charging):
    r = json.loads(diag(charging, "--all", "--json"))
    can = r["statistics"]["can"]
    assert set(D.CAN_COUNTERS) <= set(can)                              # every counter
    assert can["tx"] > 0 and can["bad_checksum"] == 0 and can["tx_refused"] == 0
    assert "bms_age_ms" in can
    host = r["statistics"]["link_host"]
    assert host["timeouts"] == 0 and host["crc_errors"] == 0 and host["frames_ok"] >= 5
    assert r["statistics"]["board"]["can_port"]["vehicle"] == "plant"
    out = diag(charging, "--all")
    assert "    bad_checksum       0" in out and "    timeouts           0" in out
    assert "  board, can_port:" in out


def test_zero_fill_keeps_texts_and_extra_keys():
    assert D.with_zeros("plant model", D.METER_COUNTERS) == "plant model"
    got = D.with_zeros({"timeouts": 3, "failure": "meter unit 1: timeout"}, D.METER_COUNTERS)
    assert got["timeouts"] == 3 and got["crc_errors"] == 0 and got["snap_ok"] == 0
    assert list(got)[-1] == "failure"


class Slow:
    """The firmware's link on the far side of a pty, answering each hello and each txn only
    from its third try on (`misses`: tries left unanswered); every command try is recorded."""

    def __init__(self, fd, misses=2):
        self.fd, self.misses = fd, misses
        self.link = fw_link.Link(lambda buf: os.write(fd, bytes(buf)))
        self.tries = []          # (op, txn) of every command try received
        self.hellos = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            for msg in self.link.feed(os.read(self.fd, 4096)):
                if fw_link.is_hello_request(msg):
                    self.hellos += 1
                    if self.hellos > self.misses:
                        self.link.send(fw_link.hello("0.1.0-test", "pty", "c0ffee", "power_on", 1))
                elif msg["t"] == "cmd":
                    self.tries.append((msg["op"], msg["txn"]))
                    if msg["op"] != "mute" and self.tries.count((msg["op"], msg["txn"])) > self.misses:
                        self.link.send(fw_link.res(msg["txn"], True, data={"op": msg["op"]}))


def test_unanswered_tries_are_counted_and_retried_with_the_same_txn():
    master, slave = os.openpty()
    tty.setraw(slave)
    ctl = Slow(master)
    try:
        with LinkClient(os.ttyname(slave), heartbeat_s=None) as lk:
            assert D._hello(lk, 0.2)["fw"] == "0.1.0-test" and ctl.hellos == 3
            assert lk.stats["timeouts"] == 2
            assert D._cmd(lk, "diag", timeout=0.2) == {"op": "diag"}
            assert [op for op, _ in ctl.tries] == ["diag"] * 3
            assert len({txn for _, txn in ctl.tries}) == 1    # a retry never applies a command twice
            assert lk.stats["timeouts"] == 4                    # what the report shows as link_host
            with pytest.raises(LinkTimeout):
                D._cmd(lk, "mute", timeout=0.2)
            assert lk.stats["timeouts"] == 7
    finally:
        ctl.stop.set()
        ctl.thread.join(timeout=2)
        os.close(slave)
        os.close(master)


def test_summary_without_all(charging):
    out = diag(charging)
    assert out.startswith("firmware ") and "charge 0.0 A by grid" in out and "errors: V2G-507" in out


def test_unreachable_port_is_a_clear_error(tmp_path):
    proc = subprocess.run([V2G_DIAG, "--all", "--port", str(tmp_path / "nope"), "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no answer from the controller" in proc.stderr
