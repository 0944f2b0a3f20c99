"""The host shows the controller's own notes on settings that do less than they read."""

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
