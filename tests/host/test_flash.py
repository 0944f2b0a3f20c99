"""`v2g flash` against the virtual board, through the real mpremote transport and pyserial."""

import hashlib
import json
import shutil
import time

import pytest
from click.testing import CliRunner

from host_tools import flash as F
from host_tools import vm
from host_tools.commands.flash import cli
from host_tools.link import LinkClient
from host_tools.vboard import WIRING_FILE
from signing import keys
from vboard_fixture import RunningBoard


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A private copy of firmware/ and boards/ so a test can change a file."""
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(vm.FIRMWARE, root / "firmware", ignore=ignore)
    shutil.copytree(vm.BOARDS, root / "boards", ignore=ignore)
    monkeypatch.setattr(vm, "ROOT", root)
    monkeypatch.setattr(vm, "FIRMWARE", root / "firmware")
    monkeypatch.setattr(vm, "BOARDS", root / "boards")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


@pytest.fixture
def blank(tmp_path):
    b = RunningBoard(tmp_path / "flash", "--blank")
    yield b
    b.stop()


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def on_board(board):
    """{path: sha256} as the board reports it (this stops the running controller)."""
    with F.Board(board.repl) as b:
        return b.hashes()


def test_full_flash_into_blank_board_then_the_controller_answers(blank):
    res = run("--port", blank.repl, "--board", "sim", "--link", blank.endpoints["link"])
    assert res.exit_code == 0, res.output
    version = F.firmware_version()
    assert "firmware {} for board sim imported".format(version) in res.output
    assert "host link: hello fw {} board sim".format(version) in res.output
    with LinkClient(blank.endpoints["link"], heartbeat_s=None) as lk:
        hello = lk.hello(timeout=5)
        assert hello["fw"] == version and hello["board"] == "sim"
        assert lk.command("status").ok
    files = on_board(blank)
    plan = F.prepare("sim")
    assert {p: h for p, h in files.items() if not p.startswith("state/") and p != WIRING_FILE} == \
        {p: hashlib.sha256(d).hexdigest() for p, d in plan.files.items()}
    # modules are compiled; only the two files MicroPython runs by name stay source
    assert sorted(p for p in files if p.endswith(".py")) == ["boot.py", "main.py"]
    assert "core/controller.mpy" in files and "board/hal.mpy" in files
    assert "manifest.mpy" not in files


def test_incremental_flash_copies_only_the_changed_file(tree, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    again = run("--port", blank.repl, "--board", "sim")
    assert again.exit_code == 0
    assert "copied" not in again.output
    assert not any(ln.startswith("0 file(s) unchanged") for ln in again.output.splitlines())
    pilot = tree / "firmware" / "core" / "pilot.py"
    pilot.write_text(pilot.read_text() + "\nFLASH_TEST_MARK = 1\n")
    res = run("--port", blank.repl, "--board", "sim")
    assert res.exit_code == 0, res.output
    copied = [ln for ln in res.output.splitlines() if ln.startswith("copied ")]
    assert copied == ["copied core/pilot.mpy (changed, {:,} B)".format(
        len(F.prepare("sim").files["core/pilot.mpy"]))]
    assert blank.mpremote("exec", "import core.pilot; print(core.pilot.FLASH_TEST_MARK)").stdout.strip() == "1"


def test_dry_run_lists_and_changes_nothing(tree, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    before = on_board(blank)
    limits = tree / "firmware" / "core" / "limits.py"
    limits.write_text(limits.read_text() + "\nDRY_RUN_MARK = 2\n")
    res = run("--port", blank.repl, "--board", "sim", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "would copy core/limits.mpy (changed" in res.output
    assert F.prepare("sim").installs in res.output          # what goes where, said before the list
    assert "dry run: nothing written" in res.output
    assert on_board(blank) == before


def test_tree_provisioned_as_source_is_replaced_and_stale_files_removed(tmp_path):
    board = RunningBoard(tmp_path / "flash")      # the working tree copied as .py files
    try:
        res = run("--port", board.repl, "--board", "sim")
        assert res.exit_code == 0, res.output
        assert "removed core/controller.py (not in the new firmware)" in res.output
        files = on_board(board)
        assert not [p for p in files if p.endswith(".py") and p not in ("main.py", "boot.py")]
        assert not [p for p in files if p.startswith("can/")]     # the DBC stays on the host
        assert not [p for p in files if p.startswith("state/")]     # the controller's own files
    finally:
        board.stop()


def test_bad_config_is_refused_before_anything_is_copied(tmp_path, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    before = on_board(blank)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"MAX_CHARGE_AMPS": 200, "METER_BAUD": 1234, "RESERVE_MARGIN": 30}))
    res = CliRunner().invoke(cli, ["--port", blank.repl, "--board", "sim", "--config", str(bad)])
    assert res.exit_code != 0
    assert "V2G-400" in res.output and "MAX_CHARGE_AMPS" in res.output and "METER_BAUD" in res.output
    assert "RESERVE_MARGIN" not in res.output
    assert on_board(blank) == before


def test_board_limits_narrow_the_config_range():
    text = json.dumps({"MAX_CHARGE_AMPS": 40, "MAX_DISCHARGE_AMPS": 10})
    assert json.loads(F.validate_config_text(text, F.load_board("sim"))) == {
        "MAX_CHARGE_AMPS": 40, "MAX_DISCHARGE_AMPS": 10}
    with pytest.raises(F.FlashError, match=r"V2G-400.*MAX_CHARGE_AMPS: .*6 to 32"):
        F.validate_config_text(text, F.load_board("pyboard"))


def test_config_is_written_as_the_controller_holds_it_or_refused_in_one_line():
    sim = F.load_board("sim")
    # the value the controller holds, as exact decimal text: 0.1 + 0.2 is written as 0.3
    text = '{"FREQ_RESPONSE_S": 0.30000000000000004, "MIN_SOC_THRESHOLD": 40, "MAX_DISCHARGE_AMPS": 10}'
    out = F.validate_config_text(text, sim).decode()
    assert out == '{"FREQ_RESPONSE_S":0.3,"MAX_DISCHARGE_AMPS":10,"MIN_SOC_THRESHOLD":40}'
    for value in ("74.9999999", "32.0000001", "1e-7"):
        key = "EVSE_TEMP_DERATE_C" if value.startswith("74") else "MAX_DISCHARGE_AMPS"
        with pytest.raises(F.FlashError, match=r"^V2G-400 .*{}: value .* is finer than the 0\.\d+ [AC] step".format(key)):
            F.prepare("sim", config_text='{"%s": %s}' % (key, value))
    with pytest.raises(F.FlashError, match=r"MIN_SOC_THRESHOLD: given more than once \(again at line 3\)"):
        F.validate_config_text('{"MIN_SOC_THRESHOLD": 40,\n "PHASES": 1,\n "MIN_SOC_THRESHOLD": 10}', sim)
    with pytest.raises(F.FlashError, match=r"not valid JSON at line 2 column 26: Expecting"):
        F.validate_config_text('{"MIN_SOC_THRESHOLD": 40,\n "MAX_DISCHARGE_AMPS": 10.}', sim)
    with pytest.raises(F.FlashError) as e:
        F.validate_config_text('{"MAX_DISCHARGE_AMPS": 1e308}', sim)
    assert len(str(e.value)) < 120 and "1e+308" in str(e.value)


def test_unknown_board_is_named(tmp_path):
    with pytest.raises(F.FlashError, match="unknown board 'nope' \\(known: .*pyboard.*sim"):
        F.prepare("nope")


def test_config_and_public_key_land_and_the_controller_uses_them(tmp_path, blank):
    _, pub, key = keys.write_keypair(tmp_path / "fota.pem")
    cfg = tmp_path / "site.json"
    cfg.write_text(json.dumps({"MAX_CHARGE_AMPS": 16, "MAX_DISCHARGE_AMPS": 10,
                               "GRID_PROFILE": "EN50549_50HZ"}))
    res = run("--port", blank.repl, "--board", "sim", "--config", str(cfg), "--pubkey", str(pub),
              "--link", blank.endpoints["link"])
    assert res.exit_code == 0, res.output
    assert "copied v2g_vars.json (new" in res.output and "copied update_key.bin (new, 65 B)" in res.output
    with LinkClient(blank.endpoints["link"], heartbeat_s=None) as lk:
        diag = lk.command("diag").data
        got = lk.command("config_get").data
    assert diag["config_file_keys"] == ["GRID_PROFILE", "MAX_CHARGE_AMPS", "MAX_DISCHARGE_AMPS"]
    assert got["values"]["MAX_CHARGE_AMPS"] == 16 and got["values"]["GRID_PROFILE"] == "EN50549_50HZ"
    key_on_board = blank.mpremote("exec", "import binascii; print(binascii.hexlify(open('update_key.bin','rb').read()).decode())")
    assert bytes.fromhex(key_on_board.stdout.strip()) == keys.device_public_key(key)


def test_unreachable_port_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(cli, ["--port", str(tmp_path / "no-such-tty"), "--board", "sim"])
    assert res.exit_code != 0 and "cannot open" in res.output


def test_new_factory_firmware_removes_an_installed_update(tree, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    blank.mpremote("exec", "import os\nos.mkdir('slots'); os.mkdir('slots/a')\n"
                   "open('slots/a/x.py','w').write('X = 1')\n"
                   "open('slots/a.sums','w').write('')\n"
                   "open('update.json','w').write('{\"active\": \"a\"}')")
    unchanged = run("--port", blank.repl, "--board", "sim")
    assert unchanged.exit_code == 0 and "update.json" in on_board(blank)   # nothing new: kept
    pilot = tree / "firmware" / "core" / "pilot.py"
    pilot.write_text(pilot.read_text() + "\nNEW_FACTORY = 1\n")
    res = run("--port", blank.repl, "--board", "sim")
    assert res.exit_code == 0, res.output
    files = on_board(blank)
    assert "update.json" not in files and not any(p.startswith("slots/") for p in files)


def set_version(tree, version):
    station = tree / "firmware" / "app" / "station.py"
    text = station.read_text()
    assert "FW_VERSION = '{}'".format(F.firmware_version()) in text
    station.write_text(text.replace("FW_VERSION = '{}'".format(F.firmware_version()),
                                    "FW_VERSION = '{}'".format(version), 1))


def test_a_new_version_is_imported_and_then_confirmed_running(tree, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    set_version(tree, "0.1.99")
    res = run("--port", blank.repl, "--board", "sim", "--link", blank.endpoints["link"])
    assert res.exit_code == 0, res.output
    assert "copied app/station.mpy (changed" in res.output
    assert "firmware 0.1.99 for board sim imported" in res.output
    # the version the running controller reports after the reset, at the REPL and by hello
    assert "controller running firmware 0.1.99 (asked at the REPL)" in res.output
    assert "host link: hello fw 0.1.99 board sim" in res.output


def test_settings_or_key_alone_keep_an_installed_update(tmp_path, tree, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    blank.mpremote("exec", "import os\nos.mkdir('slots'); os.mkdir('slots/a')\n"
                   "open('slots/a/x.py','w').write('X = 1')\n"
                   "open('slots/a.sums','w').write('')\n"
                   "open('update.json','w').write('{\"active\": \"a\"}')")
    cfg = tmp_path / "site.json"
    cfg.write_text(json.dumps({"MAX_CHARGE_AMPS": 16, "MAX_DISCHARGE_AMPS": 10}))
    res = run("--port", blank.repl, "--board", "sim", "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert [ln for ln in res.output.splitlines() if ln.startswith(("copied", "removed"))] == \
        ["copied v2g_vars.json (new, {} B)".format(len(F.validate_config_text(cfg.read_text(), F.load_board("sim"))))]
    assert "from update slot a (the installed update was kept" in res.output
    _, pub, _ = keys.write_keypair(tmp_path / "fota.pem")
    res = run("--port", blank.repl, "--board", "sim", "--pubkey", str(pub))
    assert res.exit_code == 0, res.output
    assert "copied update_key.bin (new, 65 B)" in res.output and "removed" not in res.output
    files = on_board(blank)
    assert "update.json" in files and "slots/a/x.py" in files


def test_diff_removes_update_state_only_for_firmware_changes():
    plan = F.Plan("sim", "armv7emsp", "1", {"core/a.mpy": b"A", F.CONFIG_FILE: b"{}", F.KEY_FILE: b"K"},
                  ("core",))
    installed = {"update.json": "0" * 64, "slots/a/core/a.mpy": "1" * 64}
    same = {"core/a.mpy": F.sha(b"A"), **installed}
    assert F.diff(plan, same).remove == []                                   # settings + key new
    assert F.diff(plan, {**same, F.CONFIG_FILE: "2" * 64, F.KEY_FILE: F.sha(b"K")}).remove == []
    changed = F.diff(plan, {**same, "core/a.mpy": "3" * 64, "update.json.bak": "5" * 64})
    assert changed.remove == ["slots/a/core/a.mpy", "update.json", "update.json.bak"]
    stale = F.diff(plan, {**same, "core/old.mpy": "4" * 64})                 # a module removed
    assert stale.remove == ["core/old.mpy", "slots/a/core/a.mpy", "update.json"]


def boot_count(board):
    with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
        return lk.hello(timeout=5)["boot_count"]


def test_dry_run_leaves_the_running_controller_alone(tree, blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    before = boot_count(blank)
    limits = tree / "firmware" / "core" / "limits.py"
    limits.write_text(limits.read_text() + "\nDRY_RUN_MARK = 3\n")
    res = run("--port", blank.repl, "--board", "sim", "--dry-run")
    assert res.exit_code == 0, res.output
    assert boot_count(blank) == before                       # no reset
    assert "would copy core/limits.mpy (changed" in res.output
    assert "the running controller was not interrupted" in res.output
    with LinkClient(blank.endpoints["link"], heartbeat_s=None) as lk:
        t0 = lk.command("diag").data["uptime_ms"]
        time.sleep(0.5)
        assert lk.command("diag").data["uptime_ms"] > t0     # its control loop still steps


def test_the_import_check_never_reads_a_cached_module(blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    with F.Board(blank.repl) as b:
        # as if main.py had run before the copy: the old module is still in sys.modules
        b.exec("import app.station\napp.station.FW_VERSION = 'cached'")
        assert b.check_import() == (F.firmware_version(), "sim")


def test_a_blank_board_flashed_later_has_its_buses_wired(blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    end = time.monotonic() + 10
    while True:
        with LinkClient(blank.endpoints["link"], heartbeat_s=None) as lk:
            can = lk.command("diag").data["buses"]["can"]
        if isinstance(can, dict) and can.get("tx"):
            break
        assert time.monotonic() < end, "the CAN bus is {!r}".format(can)
        time.sleep(0.3)


def test_a_reflash_with_nothing_changed_writes_nothing_and_leaves_the_controller_running(blank):
    assert run("--port", blank.repl, "--board", "sim").exit_code == 0
    with LinkClient(blank.endpoints["link"], heartbeat_s=None) as lk:
        boots, up = lk.hello(timeout=5)["boot_count"], lk.command("diag").data["uptime_ms"]
    res = run("--port", blank.repl, "--board", "sim", "--link", blank.endpoints["link"])
    assert res.exit_code == 0, res.output
    assert "nothing changed: nothing written, the running controller was not interrupted" in res.output
    assert not [ln for ln in res.output.splitlines() if ln.startswith(("copied", "removed"))]
    assert "host link: hello fw {}".format(F.firmware_version()) in res.output
    with LinkClient(blank.endpoints["link"], heartbeat_s=None) as lk:
        assert lk.hello(timeout=5)["boot_count"] == boots                 # no reset
        assert lk.command("diag").data["uptime_ms"] > up                  # the same run, still stepping


# What only tests and the simulated board use: a board must not carry it (the simulated
# board plays heartbeat loss and update power cuts itself, boards/sim/).
TEST_HOOKS = ("fota_fault", "fault injection", "_Frozen", "power_cut", "hb_dropped", "heartbeat_loss",
              "sim_hb_lost", "set_grid", "host_command", "scenario_run")


@pytest.mark.parametrize("board", ["pyboard", "pybd_sf6"])
def test_the_files_a_board_gets_carry_no_test_hook(board):
    files = F.firmware_files(board)
    assert any(dest == "app/update.py" for _, dest in files)      # the installer is among them
    found = []
    for src, dest in files:
        text = src.read_text()
        found += ["{}: {}".format(dest, hook) for hook in TEST_HOOKS if hook in text]
    assert found == []


# -- a board whose image holds the firmware frozen (pyboard) -------------------------------------

def test_pyboard_plan_says_what_it_installs_and_how_its_frozen_image_is_built():
    whole = F.prepare("pyboard")
    assert "core/controller.mpy" in whole.files and not whole.frozen
    assert whole.installs == "installs: {} compiled module(s) on the filesystem (app/, board/, core/), " \
        "boot.py, main.py".format(len(whole.modules()))
    said = "\n".join(whole.notes)
    assert "make -C ports/stm32 BOARD=PYBV11" in said and "FROZEN_MANIFEST=" in said
    assert "flash with --frozen" in said
    frozen = F.prepare("pyboard", frozen=True)
    # what firmware/manifest.py freezes is not copied; the HAL (not in it) and what MicroPython
    # runs by name are
    assert {"core", "app"} <= set(frozen.frozen)
    assert not any(p.startswith(("core/", "app/")) for p in frozen.files)
    assert "board/hal.mpy" in frozen.files and "main.py" in frozen.files and "boot.py" in frozen.files
    assert frozen.installs.startswith("installs: 3 compiled module(s) on the filesystem (board/)")
    said = "\n".join(frozen.notes)
    assert "expects frozen in the board's image: core/, app/" in said and "FROZEN_MANIFEST=" in said
    # copies of frozen modules left on the board are removed: from /flash they would load into RAM
    board_has = {"core/controller.mpy": "0" * 64, "app/station.mpy": "0" * 64, "state/log.bin": "0" * 64,
                 "main.py": hashlib.sha256(frozen.files["main.py"]).hexdigest()}
    changes = F.diff(frozen, board_has)
    assert changes.remove[:2] == ["app/station.mpy", "core/controller.mpy"]
    assert "main.py" in changes.unchanged and "state/log.bin" not in changes.remove


def test_frozen_is_refused_where_nothing_is_frozen():
    with pytest.raises(F.FlashError, match="sim has no MicroPython build with the firmware frozen in"):
        F.prepare("sim", frozen=True)
    with pytest.raises(F.FlashError, match="pybd_sf6 runs its modules from a ROMFS partition"):
        F.prepare("pybd_sf6", frozen=True)


def test_frozen_flash_onto_an_image_without_them_writes_nothing(blank):
    # the virtual board's MicroPython has no frozen modules: the board is asked before a write
    before = on_board(blank)
    res = CliRunner().invoke(cli, ["--port", blank.repl, "--board", "pyboard", "--frozen"])
    assert res.exit_code != 0
    assert "--frozen: the board's MicroPython image has no frozen core, app (nothing was written)" in res.output
    assert "FROZEN_MANIFEST=" in res.output
    assert on_board(blank) == before


def test_a_frozen_board_gets_the_update_keys_tables_built_on_the_host(tmp_path):
    """A pyboard cannot build the key's comb tables on its 96 KiB heap (the first update of a
    key peaks at about 158 kB): `v2g flash --frozen` writes them beside the key, sealed as the
    controller keeps them, so its first update loads them like any later one."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from core import p256
    from signing import keys

    _, pub, key = keys.write_keypair(tmp_path / "fota.pem")
    point = keys.device_public_key(key)
    plan = F.prepare("pyboard", pubkey=str(pub), frozen=True)
    tab = plan.files[F.KEY_TABLE_FILE]
    assert len(tab) == p256.CACHE_LEN and plan.files[F.KEY_FILE] == point
    tabs = [bytearray(tab[p256.cache_table_offset(i):p256.cache_table_offset(i) + p256.TABLE_LEN])
            for i in range(p256.CACHE_TABLES)]
    assert p256.cache_holds(point, tab[:p256.CACHE_HEAD_LEN], tabs)
    # the tables verify what the key signs, and refuse what it did not
    msg = b"update manifest"
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    pk = p256.PublicKey(point, tabs)
    assert pk.verify(msg, sig) and not pk.verify(msg + b"!", sig)
    # where the modules are on the filesystem, the file would not fit beside them: not written
    assert F.KEY_TABLE_FILE not in F.prepare("pyboard", pubkey=str(pub)).files
    # an external flash or the virtual board's folder has room: the tables go with the key
    for board in ("pybd_sf6", "sim"):
        assert F.prepare(board, pubkey=str(pub)).files[F.KEY_TABLE_FILE] == tab
