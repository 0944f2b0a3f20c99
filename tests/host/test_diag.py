"""`v2g-diag --all` against the running virtual board, text and JSON."""

import html.parser
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
    # at the defaults (38400 baud: voltage and frequency within 100 ms) the default profile's
    # stages are all met and none is decided on a single reading: nothing to note
    assert r["config_notes"] == []
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
    # V2G-101 joins V2G-507 once the board has run HEARTBEAT_TIMEOUT_S with no host: either way
    assert out.startswith("firmware ") and "charge 0.0 A by grid" in out
    assert "V2G-507" in out.split("errors: ", 1)[1]


def test_unreachable_port_is_a_clear_error(tmp_path):
    proc = subprocess.run([V2G_DIAG, "--all", "--port", str(tmp_path / "nope"), "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no answer from the controller" in proc.stderr


def test_measurements_each_with_its_age(charging):
    r = json.loads(diag(charging, "--all", "--json"))
    m = r["measurements"]
    assert m["grid"]["mv"][0] == 240000 and m["grid"]["mhz"] == 60000
    assert 0 <= m["grid"]["age_ms"] < 3000 and 0 <= m["bms"]["age_ms"] < 3000
    assert m["bms"]["soc_pm"] > 0 and m["bms"]["temp_dc"] == 250 and m["evse"]["temp_dc"] == 250
    assert m["pilot"]["state"] == "C" and m["contactor"] == {"age_ms": 0, "command": False, "feedback": False}
    assert {"import_wh", "export_wh", "mw_total"} <= set(m["grid"])
    out = diag(charging, "--all")
    section = out.split("[measurements]", 1)[1].split("\n\n", 1)[0]
    for what in ("grid voltage", "grid frequency", "current", "power", "energy registers", "EV SoC",
                 "battery temperature", "EVSE temperature", "pilot", "contactor"):
        line = next(ln for ln in section.splitlines() if ln.strip().startswith(what))
        assert "ms old" in line or "this control step" in line, line
    assert "240.0 V" in section and "60.000 Hz" in section and "commanded open  feedback open" in section


def test_events_of_this_boot_carry_the_host_clock(charging):
    before = time.time()
    r = json.loads(diag(charging, "--all", "--json"))
    after = time.time()
    assert "host's clock" in r["clock"]["note"]
    up = r["clock"]["controller_uptime_ms"] / 1000
    for e in r["events"]:
        t = time.mktime(time.strptime(e["wall_clock"][:19], "%Y-%m-%dT%H:%M:%S"))
        # the event happened between the boot and now, by this host's clock (1 s rounding)
        assert before - up - 2 <= t <= after + 1, e
    text = diag(charging, "--all")
    assert r["events"][0]["wall_clock"][:19] in text


def test_an_event_raised_after_the_uptime_was_read_is_not_a_wrap_in_the_past():
    """diag reads the uptime, then the log: an event raised in between has t_ms past the
    uptime it is dated against. It is a few ms ahead, not 2**30 ms (12.4 days) back."""
    read_at = 1_800_000_000.0
    assert D.wall_clock(read_at, 10_427, 1, 10_500, 1) == read_at + 0.073
    assert D.wall_clock(read_at, 10_427, 1, 9_427, 1) == read_at - 1.0
    # across the controller's tick wrap: an event 1 s before a wrap, read 0.5 s after it
    assert D.wall_clock(read_at, 500, 1, (1 << 30) - 500, 1) == read_at - 1.0
    assert D.wall_clock(read_at, 500, 0, 400, 1) is None      # an earlier boot has no clock


def test_a_refused_read_leaves_no_event_and_a_refused_change_one(charging):
    # the refusals alone are counted: the board has no host, so V2G-101 and its mode change
    # may join the log meanwhile on a slow machine
    def refusals(evs):
        return [e for e in evs if e[1] == "V2G-400"]
    with LinkClient(charging.endpoints["link"], heartbeat_s=None) as lk:
        n = len(refusals(D.fetch_events(lk)))
        r = lk.command("config_get", {"keys": ["MAX_CHARGE_AMPZ"]})
        assert not r.ok and r.code == "V2G-400"
        assert len(refusals(D.fetch_events(lk))) == n
        assert not lk.command("config_set", {"<b>X</b>": 1}).ok
        ref = refusals(D.fetch_events(lk))
    assert len(ref) == n + 1 and "refused config_set" in ref[-1][3]


class _Html(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.h2, self.tables, self.text = [], [], [], [], []

    VOID = ("meta", "br", "hr", "img", "link", "input")

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] == "h2":
            self.h2.append(data)
        elif self.stack and self.stack[-1] in ("td", "th"):
            self.tables[-1][-1][-1] += data


def test_html_report_is_one_well_formed_self_contained_page(charging):
    with LinkClient(charging.endpoints["link"], heartbeat_s=None) as lk:
        lk.command("config_set", {"<script>alert(1)</script>": 1})    # a refusal naming markup
    # the JSON first: the page, read after it, has every event it has (the log only grows, or
    # stays at its ring's size), whatever the charging station logs in between
    r = json.loads(diag(charging, "--all", "--json"))
    page = diag(charging, "--all", "--html")
    p = _Html()
    p.feed(page)
    p.close()
    assert not p.stack
    assert p.h2 == ["Firmware", "Measurements", "Limits", "Active errors", "Events", "Update history",
                    "Settings", "Statistics", "Update slots"]
    # self-contained: nothing is loaded from elsewhere, nothing runs
    assert not {"script", "link", "img", "iframe"} & set(p.tags) and "src=" not in page
    events = next(t for t in p.tables if t[0][:3] == ["boot", "t (ms)", "wall clock (host)"])
    assert len(events) - 1 >= len(r["events"])              # a header, then a row per event
    assert any("<script>alert(1)</script>" in "".join(row) for row in events)   # shown as text
    assert any(row[0] == "charge" and row[2] == "grid" for t in p.tables for row in t)


def test_the_repl_port_is_named_as_such(charging):
    proc = subprocess.run([V2G_DIAG, "--port", charging.endpoints["repl"], "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "MicroPython REPL, not the host link" in proc.stderr, proc.stderr


def test_reset_causes_in_words():
    assert D.reset_text("watchdog", "sim", {}) == "watchdog"
    assert "brown-out" in D.reset_text("power_on", "pyboard", {})
    assert "brown-out" not in D.reset_text("power_on", "sim", {})
    assert D.reset_text("soft_reset", "sim", {"trial": True, "version": "0.2.0"}).endswith(
        "this boot runs update 0.2.0 on trial")


def test_the_virtual_board_tells_a_soft_reset_from_a_power_up(tmp_path, monkeypatch):
    from board import hal as sim_hal
    monkeypatch.chdir(tmp_path)          # the board's flash
    h = sim_hal.Hal(ports=sim_hal.MemoryPorts())
    assert h.reset_cause() == "power_on"
    h.reset()
    assert sim_hal.Hal(ports=sim_hal.MemoryPorts()).reset_cause() == "soft_reset"
    assert sim_hal.Hal(ports=sim_hal.MemoryPorts()).reset_cause() == "power_on"   # told once


def test_a_silent_link_after_mpremote_says_the_controller_is_stopped(tmp_path):
    # mpremote stops the controller at the REPL (Ctrl-C); the link then stays silent
    b = RunningBoard(tmp_path / "flash")
    try:
        LinkClient(b.endpoints["link"], heartbeat_s=None).open().close()   # up and answering
        b.mpremote("ls")
        proc = subprocess.run([V2G_DIAG, "--port", b.endpoints["link"], "--timeout", "1"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert "nothing came back at all" in proc.stderr and "mpremote reset" in proc.stderr, proc.stderr
    finally:
        b.stop()


def test_a_broken_settings_file_is_reported_whole(tmp_path):
    # the V2G-400 at boot names line and column and the parser's words, not a cut-off text
    from host_tools import vboard
    state = tmp_path / "flash"
    vboard.provision(state)
    (state / "v2g_vars.json").write_text('{\n  "MAX_CHARGE_AMPS": 16\n  "PHASES": 1\n}\n')
    b = RunningBoard(state)
    try:
        r = json.loads(diag(b, "--all", "--json"))
    finally:
        b.stop()
    ev = next(e for e in r["events"] if e["code"] == "V2G-400")
    assert "settings file refused" in ev["msg"], ev["msg"]
    # the event's text is bounded; the report carries the reason whole
    why = r["config_file"]["refused_because"]
    assert r["config_file"]["state"] == "refused" and "..." not in why and "MAX_CHARGE_AMPS" in why, why
