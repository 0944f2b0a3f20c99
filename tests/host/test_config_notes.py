"""The host shows the controller's own notes on settings that do less than they read."""

import subprocess
import sys
from pathlib import Path

from host_tools import flash as F

V2G = str(Path(sys.executable).with_name("v2g"))


def test_notes_come_from_the_firmware_rules():
    sim = F.load_board("sim")
    slow = F.config_notes({"GRID_PROFILE": "IEEE1547_CAT_II_60HZ", "METER_POLL_MS": 500}, sim)
    assert any("METER_POLL_MS 500 exceeds the 160 ms" in n for n in slow)
    fast = F.config_notes({"GRID_PROFILE": "IEEE1547_CAT_II_60HZ", "METER_POLL_MS": 100}, sim)
    assert not any("exceeds" in n for n in fast)
    assert F.config_notes({"METER_POLL_MS": 1}, sim) == []   # refused settings have no notes


def test_flash_dry_run_prints_the_notes_before_touching_a_board(tmp_path):
    cfg = tmp_path / "v2g_vars.json"
    cfg.write_text('{"METER_POLL_MS": 1000}')
    # nothing listens on that port: the notes come from the host, before the board is opened
    proc = subprocess.run([V2G, "flash", "--port", "socket://127.0.0.1:9", "--board", "sim",
                           "--config", str(cfg), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "note: METER_POLL_MS 1000 exceeds" in proc.stderr


def test_board_without_a_cooling_loop_takes_the_cooling_keys_and_says_they_do_nothing():
    sim = F.load_board("sim")
    bare = dict(sim, cooling=None)             # a board file that says it has no cooling loop
    assert F.config_limits(bare)["cooling"] is False and "cooling" not in F.config_limits(sim)
    values = {"COOLING_ON_AMPS": 20, "COOLING_UNCOOLED_AMPS": 10}
    assert F.validate_config_text('{"COOLING_ON_AMPS": 20}', bare) == b'{"COOLING_ON_AMPS":20}'
    notes = F.config_notes(values, bare)
    assert any("no cooling loop" in n and "COOLING_FEEDBACK_S" in n for n in notes)
    assert not any("cooling" in n for n in F.config_notes(values, sim))
