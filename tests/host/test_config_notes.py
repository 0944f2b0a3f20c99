"""The host shows the controller's own notes on settings that do less than they read."""

import json
import subprocess
import sys
from pathlib import Path

from host_tools import flash as F

V2G = str(Path(sys.executable).with_name("v2g"))


def test_notes_come_from_the_firmware_rules():
    sim = F.load_board("sim")
    slow = F.config_notes({"GRID_PROFILE": "IEEE1547_CAT_II_60HZ", "METER_BAUD": 2400}, sim)
    assert any("the 160 ms stages of IEEE1547_CAT_II_60HZ can trip" in n for n in slow), slow
    default = F.config_notes({"GRID_PROFILE": "IEEE1547_CAT_II_60HZ"}, sim)
    assert not any("can trip" in n for n in default)
    assert F.config_notes({"METER_POLL_MS": 1}, sim) == []   # refused settings have no notes


def test_flash_dry_run_prints_the_notes_before_touching_a_board(tmp_path):
    cfg = tmp_path / "v2g_vars.json"
    cfg.write_text('{"METER_BAUD": 2400}')
    # nothing listens on that port: the notes come from the host, before the board is opened
    proc = subprocess.run([V2G, "flash", "--port", "socket://127.0.0.1:9", "--board", "sim",
                           "--config", str(cfg), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "note: METER_BAUD 2400 (SDM630)" in proc.stderr


def test_a_value_finer_than_its_step_never_reaches_the_file_and_a_reboot_keeps_the_limits(tmp_path):
    """config_set 40 % / 10 A, then a derate point of 74.9999999: refused; after a restart of
    the virtual board the floor and the discharge ceiling are still 40 % and 10 A."""
    from host_tools.link import LinkClient
    from vboard_fixture import RunningBoard

    state = tmp_path / "board"
    board = RunningBoard(state)
    try:
        with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
            assert lk.command("config_set", {"MIN_SOC_THRESHOLD": 40, "MAX_DISCHARGE_AMPS": 10}).ok
            r = lk.command("config_set", {"EVSE_TEMP_DERATE_C": 74.9999999})
            assert not r.ok and r.code == "V2G-400" and "EVSE_TEMP_DERATE_C" in r.msg, r.msg
            before = lk.command("config_get").data
    finally:
        board.stop()
    json.loads((state / "v2g_vars.json").read_text())      # the file is JSON
    board = RunningBoard(state)
    try:
        with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
            after = lk.command("config_get").data
            diag = lk.command("diag").data
    finally:
        board.stop()
    assert after["values"]["MIN_SOC_THRESHOLD"] == 40 and after["values"]["MAX_DISCHARGE_AMPS"] == 10
    assert after["cfg_hash"] == before["cfg_hash"] and diag["config_file"] == "in use"


def test_a_settings_file_refused_at_boot_keeps_the_stricter_limits_on_the_board(tmp_path):
    from host_tools.link import LinkClient
    from host_tools.vboard import provision
    from vboard_fixture import RunningBoard

    state = tmp_path / "board"
    provision(state)
    # what the old firmware wrote for 74.9999999, after 40 % / 10 A: "75." is not JSON
    text = '{"EVSE_TEMP_DERATE_C":75.,"MAX_DISCHARGE_AMPS":10,"MIN_SOC_THRESHOLD":40}'
    (state / "v2g_vars.json").write_text(text)
    board = RunningBoard(state)
    try:
        with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
            vals = lk.command("config_get").data["values"]
            diag = lk.command("diag").data
            events = lk.command("events").data
    finally:
        board.stop()
    assert diag["config_file"] == "refused"
    assert vals["MIN_SOC_THRESHOLD"] == 40 and vals["MAX_DISCHARGE_AMPS"] <= 10
    assert (state / "v2g_vars.json").read_text() == text     # left for the operator
    assert "stricter than the defaults, in force: MIN_SOC_THRESHOLD 40" in json.dumps(events), events


def test_board_without_a_cooling_loop_takes_the_cooling_keys_and_says_they_do_nothing():
    sim = F.load_board("sim")
    bare = dict(sim, cooling=None)             # a board file that says it has no cooling loop
    assert F.config_limits(bare)["cooling"] is False and "cooling" not in F.config_limits(sim)
    values = {"COOLING_ON_AMPS": 20, "COOLING_UNCOOLED_AMPS": 10}
    assert F.validate_config_text('{"COOLING_ON_AMPS": 20}', bare) == b'{"COOLING_ON_AMPS":20}'
    notes = F.config_notes(values, bare)
    assert any("no cooling loop" in n and "COOLING_FEEDBACK_S" in n for n in notes)
    assert not any("cooling" in n for n in F.config_notes(values, sim))
