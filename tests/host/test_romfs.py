"""The firmware in a ROMFS partition: the image `v2g flash` and `v2g image` build for a board
with one (pybd_sf6), and its deploy over the REPL.

The image is read back with a reader written here from MicroPython's description of the
format (extmod/vfs_rom.c; header d2 cd 31, base-128 varints, directory and file records), not
with host_tools.romfs, so a writer bug cannot hide behind the same reader.

The deploy runs against the virtual board with a stand-in partition (fake_romfs_boot.py):
the MicroPython VM has no ROMFS, so `vfs.rom_ioctl` and the mount at /rom are a mock there,
the one part of this path no real component can run. Everything else is real: mpremote's
transport, the flasher, the compiled firmware, the controller started from the unpacked /rom.
The board is a copy of boards/sim with a "romfs" section in its board.json (sim_romfs), since
the PYBD-SF6 HAL needs `machine` and `pyb`.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from intelhex import IntelHex

from host_tools import flash as F
from host_tools import image, vm
from host_tools.commands.flash import cli as flash_cli
from host_tools.commands.image import cli as image_cli
from host_tools.link import LinkClient
from vboard_fixture import RunningBoard

HERE = Path(__file__).resolve().parent
ROM_SIZE = 0x40000          # fake_romfs_boot.py's partition


# ------------------------------------------------------------------ an independent reader

def _varint(buf, pos):
    value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value = value << 7 | byte & 0x7F
        if byte < 0x80:
            return value, pos


def read_romfs(buf):
    """{path: bytes}; asserts the layout MicroPython's VfsRom expects."""
    assert buf[:3] == b"\xd2\xcd\x31", "ROMFS header"
    length, pos = _varint(buf, 3)
    assert (pos + length) % 2 == 0, "the image is padded to an even length"
    files = {}

    def walk(pos, end, prefix):
        while pos < end:
            kind, pos = _varint(buf, pos)
            size, pos = _varint(buf, pos)
            nxt = pos + size
            if kind in (4, 5):               # directory, file: name first
                nlen, pos = _varint(buf, pos)
                name = buf[pos:pos + nlen].decode("ascii")
                pos += nlen
                if kind == 4:
                    walk(pos, nxt, prefix + name + "/")
                else:
                    dkind, pos = _varint(buf, pos)
                    dlen, pos = _varint(buf, pos)
                    assert dkind == 2, "file data stored verbatim"
                    files[prefix + name] = buf[pos:pos + dlen]
            else:
                assert kind == 1, "only padding besides directories and files"
            pos = nxt

    walk(pos, pos + length, "")
    return files


def compiled_modules(board):
    info = F.load_board(board)
    return {p: d for p, d in F.compile_tree(board, info["mpy_arch"]).items() if p not in F.SOURCE_ONLY}


# ------------------------------------------------------------------ the image

def test_pybd_sf6_image_holds_every_module_byte_for_byte():
    plan = F.prepare("pybd_sf6")
    modules = compiled_modules("pybd_sf6")
    assert read_romfs(plan.romfs) == modules
    # every firmware module and the board's HAL with the pyboard HAL it builds on
    for path in ("core/controller.mpy", "app/station.mpy", "board/hal.mpy", "board/pins.mpy",
                 "board/pyboard/hal.mpy"):
        assert path in modules
    assert "board/pyboard/pins.mpy" not in modules        # the PYBD's pin map is board/pins
    # the read-write filesystem keeps only what MicroPython runs by name
    assert sorted(plan.files) == ["boot.py", "main.py"]


def test_the_image_is_what_mpremote_romfs_build_writes(tmp_path):
    from mpremote.romfs import make_romfs
    modules = compiled_modules("pybd_sf6")
    for path, data in modules.items():
        (tmp_path / "tree" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / path).write_bytes(data)
    assert F.prepare("pybd_sf6").romfs == make_romfs(str(tmp_path / "tree"), mpy_cross=False)


def test_pybd_sf6_board_file_matches_micropythons_build():
    info = F.load_board("pybd_sf6")
    assert info["mpy_arch"] == "armv7emdp"           # Cortex-M7 with the double-precision FPU
    rom = info["romfs"]
    # ports/stm32/boards/PYBD_SF6/f767.ld: FLASH_ROMFS ORIGIN 0x90000000 LENGTH 1024K; only
    # PART1 enabled, so vfs.rom_ioctl's partition 0
    assert (F.int_of(rom["start"]), F.int_of(rom["size"]), rom["partition"]) == (0x90000000, 1 << 20, 0)
    assert len(F.prepare("pybd_sf6").romfs) < F.int_of(rom["size"])
    assert info["micropython"]["min_version"] == "1.25.0"


# ------------------------------------------------------------------ the deploy

@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A private firmware/ and boards/ with the test board sim_romfs, and a boot.py that first
    sets up the stand-in partition (the board's C start-up on a real board)."""
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(vm.FIRMWARE, root / "firmware", ignore=ignore)
    shutil.copytree(vm.BOARDS, root / "boards", ignore=ignore)
    sim = root / "boards" / "sim_romfs"
    shutil.copytree(root / "boards" / "sim", sim)
    info = json.loads((sim / "board.json").read_text())
    info.update(name="sim_romfs", romfs={"partition": 0, "start": "0x0", "size": hex(ROM_SIZE),
                                         "erase_block": 4096})
    (sim / "board.json").write_text(json.dumps(info))
    hal = sim / "hal.py"
    hal.write_text(hal.read_text().replace("BOARD_NAME = 'sim'", "BOARD_NAME = 'sim_romfs'", 1))
    boot = root / "firmware" / "boot.py"
    boot.write_text("exec(open('state/fake_rom.py').read())\n" + boot.read_text())
    monkeypatch.setattr(vm, "ROOT", root)
    monkeypatch.setattr(vm, "FIRMWARE", root / "firmware")
    monkeypatch.setattr(vm, "BOARDS", root / "boards")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


def romfs_board(state, with_partition=True, extra=None):
    """A virtual board whose flash holds the partition's stand-in and boot.py (and extra files)."""
    (state / "state").mkdir(parents=True)
    if with_partition:
        shutil.copy(HERE / "fake_romfs_boot.py", state / "state" / "fake_rom.py")
        shutil.copy(vm.FIRMWARE / "boot.py", state / "boot.py")
    for path, data in (extra or {}).items():
        (state / path).parent.mkdir(parents=True, exist_ok=True)
        (state / path).write_bytes(data)
    return RunningBoard(state)


def run(*args):
    return CliRunner().invoke(flash_cli, list(args), catch_exceptions=False)


def hello(board):
    with LinkClient(board.endpoints["link"], heartbeat_s=None) as lk:
        return lk.hello(timeout=5), lk.command("diag").data["uptime_ms"]


def test_flash_deploys_the_romfs_image_and_the_controller_runs_from_it(tree, tmp_path):
    stale = {"core/pilot.mpy": b"M\x06old", "core/pilot.py": b"X = 1\n"}   # an earlier flash's copies
    board = romfs_board(tmp_path / "flash", extra=stale)
    try:
        cfg = tmp_path / "site.json"
        cfg.write_text(json.dumps({"MAX_CHARGE_AMPS": 16, "MAX_DISCHARGE_AMPS": 10}))
        res = run("--port", board.repl, "--board", "sim_romfs", "--config", str(cfg),
                  "--link", board.endpoints["link"])
        assert res.exit_code == 0, res.output
        plan = F.prepare("sim_romfs", config=str(cfg))
        assert "wrote the ROMFS image (new, {:,} B)".format(len(plan.romfs)) in res.output
        assert "removed core/pilot.mpy (not in the new firmware)" in res.output
        assert "removed core/pilot.py (not in the new firmware)" in res.output
        assert "firmware {} for board sim_romfs imported".format(F.firmware_version()) in res.output
        assert "host link: hello fw {} board sim_romfs".format(F.firmware_version()) in res.output
        # the partition holds the image; the read-write filesystem only the files run by name
        with F.Board(board.repl, interrupt=False) as b:
            assert b.rom_sha(0, len(plan.romfs)) == hashlib.sha256(plan.romfs).hexdigest()
            files = b.hashes()
            where = b.exec("import app.station, core.pilot\nprint(app.station.__file__, core.pilot.__file__)")
        assert sorted(p for p in files if not p.startswith("state/") and p != "sim_board.json") == \
            ["boot.py", "main.py", "v2g_vars.json"]
        assert where.split() == ["/rom/app/station.mpy", "/rom/core/pilot.mpy"]
        got, _ = hello(board)
        assert got["board"] == "sim_romfs"

        # a reflash with nothing changed: no write, no reset, the same run of the controller
        (boots, up) = (got["boot_count"], hello(board)[1])
        again = run("--port", board.repl, "--board", "sim_romfs", "--config", str(cfg))
        assert again.exit_code == 0, again.output
        assert "nothing changed: nothing written, the running controller was not interrupted" in again.output
        assert "ROMFS" not in again.output
        got, up2 = hello(board)
        assert got["boot_count"] == boots and up2 > up
    finally:
        board.stop()


def test_a_changed_module_rewrites_the_image_and_main_py_last(tree, tmp_path):
    board = romfs_board(tmp_path / "flash")
    try:
        assert run("--port", board.repl, "--board", "sim_romfs").exit_code == 0
        pilot = tree / "firmware" / "core" / "pilot.py"
        pilot.write_text(pilot.read_text() + "\nROMFS_MARK = 7\n")
        res = run("--port", board.repl, "--board", "sim_romfs")
        assert res.exit_code == 0, res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith(("wrote", "copied", "removed"))]
        assert lines == ["wrote the ROMFS image (changed, {:,} B)".format(len(F.prepare("sim_romfs").romfs)),
                         "copied main.py (rewritten after the ROMFS image, {:,} B)".format(
                             len(F.prepare("sim_romfs").files["main.py"]))]
        assert board.mpremote("exec", "import core.pilot; print(core.pilot.ROMFS_MARK)").stdout.strip() == "7"
    finally:
        board.stop()


def test_a_board_without_romfs_is_refused_before_anything_is_written(tree, tmp_path):
    board = romfs_board(tmp_path / "flash", with_partition=False,
                        extra={"main.py": b"print('old')\n"})
    try:
        res = CliRunner().invoke(flash_cli, ["--port", board.repl, "--board", "sim_romfs"])
        assert res.exit_code != 0
        assert "has no ROMFS (no vfs.rom_ioctl)" in res.output and "1.25" in res.output
        with F.Board(board.repl, interrupt=False) as b:
            assert b.exec("print(open('main.py').read())").strip() == "print('old')"
    finally:
        board.stop()


def test_an_image_larger_than_the_partition_is_refused_on_the_host(tree):
    path = tree / "boards" / "sim_romfs" / "board.json"
    info = json.loads(path.read_text())
    info["romfs"]["size"] = "0x1000"
    path.write_text(json.dumps(info))
    with pytest.raises(F.FlashError, match=r"ROMFS image \([\d,]+ B\) does not fit the board's 4,096 B partition"):
        F.prepare("sim_romfs")


# ------------------------------------------------------------------ v2g image

def base_hex(path, extra=()):
    """A stand-in MicroPython build for the PYBD: mboot in sector 0, the application from 0x08008000."""
    ih = IntelHex()
    ih.frombytes(b"\xa5" * 4096, offset=0x08000000)
    ih.frombytes(b"\x5a" * 20000, offset=0x08008000)
    for addr, data in extra:
        ih.frombytes(data, offset=addr)
    ih.start_addr = {"EIP": 0x08008001}
    ih.write_hex_file(str(path))
    return ih


def test_v2g_image_puts_the_romfs_image_at_the_partition(tmp_path):
    base = base_hex(tmp_path / "mp.hex")
    out = tmp_path / "factory.hex"
    res = CliRunner().invoke(image_cli, ["--board", "pybd_sf6", "--base", str(tmp_path / "mp.hex"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    merged = IntelHex(str(out))
    for lo, hi in base.segments():
        assert merged.tobinstr(start=lo, end=hi - 1) == base.tobinstr(start=lo, end=hi - 1)
    assert merged.start_addr == {"EIP": 0x08008001}
    rom = F.prepare("pybd_sf6").romfs
    assert merged.tobinstr(start=0x90000000, size=len(rom)) == rom
    assert read_romfs(merged.tobinstr(start=0x90000000, size=len(rom))) == compiled_modules("pybd_sf6")
    # the same image as a file for mpremote romfs deploy
    assert (tmp_path / "factory.romfs").read_bytes() == rom
    assert image.read_back(out, "pybd_sf6") == compiled_modules("pybd_sf6")


def test_v2g_image_refuses_settings_it_cannot_hold_and_a_base_inside_the_partition(tmp_path):
    base_hex(tmp_path / "mp.hex")
    cfg = tmp_path / "site.json"
    cfg.write_text(json.dumps({"MAX_CHARGE_AMPS": 16}))
    res = CliRunner().invoke(image_cli, ["--board", "pybd_sf6", "--base", str(tmp_path / "mp.hex"),
                                         "-o", str(tmp_path / "f.hex"), "--config", str(cfg)])
    assert res.exit_code != 0 and "read-write filesystem" in res.output and "v2g flash" in res.output
    assert not (tmp_path / "f.hex").exists()
    base_hex(tmp_path / "bad.hex", extra=[(0x90000100, b"\x01" * 16)])
    with pytest.raises(image.ImageError, match=r"0x90000100-0x9000010F inside the ROMFS partition"):
        image.build("pybd_sf6", tmp_path / "bad.hex", tmp_path / "f.hex")


def test_dry_run_names_the_image_write(tree, tmp_path):
    board = romfs_board(tmp_path / "flash")
    try:
        res = run("--port", board.repl, "--board", "sim_romfs", "--dry-run")
        assert res.exit_code == 0, res.output
        assert "would write the ROMFS image (new" in res.output
        with F.Board(board.repl, interrupt=False) as b:
            assert b.rom_sha(0, 3) == ""                   # still blank
    finally:
        board.stop()

