"""`v2g-diag --all` against the running virtual board, text and JSON."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from host_tools import diag as D
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
    # the default 500 ms meter poll is slower than the 160 ms stages of the default grid profile
    assert any("METER_POLL_MS 500" in n for n in r["config_notes"])
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


def test_unanswered_tries_are_counted_and_retried_with_the_same_txn():
    from host_tools.link import CommandResult, LinkTimeout

    class Silent:
        def __init__(self, misses):
            self.misses, self.txns = misses, []

        def command(self, op, args, txn, timeout, retries):
            self.txns.append(txn)
            if len(self.txns) <= self.misses:
                raise LinkTimeout("no result")
            return CommandResult(txn, True, None, "ok", {})

    lk = D._Counted(Silent(2), 0.1)
    assert lk.command("diag").ok and lk.timeouts == 2
    assert len(set(lk.lk.txns)) == 1                   # a retry never applies a command twice
    dead = D._Counted(Silent(9), 0.1)
    with pytest.raises(LinkTimeout):
        dead.command("diag")
    assert dead.timeouts == 3


def test_summary_without_all(charging):
    out = diag(charging)
    assert out.startswith("firmware ") and "charge 0.0 A by grid" in out and "errors: V2G-507" in out


def test_unreachable_port_is_a_clear_error(tmp_path):
    proc = subprocess.run([V2G_DIAG, "--all", "--port", str(tmp_path / "nope"), "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no answer from the controller" in proc.stderr
