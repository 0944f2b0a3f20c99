"""`v2g image`: merge a MicroPython .hex with our littlefs filesystem; read it back."""

import hashlib
import json

import pytest
from click.testing import CliRunner
from intelhex import IntelHex
from littlefs import LittleFS, UserContext

from host_tools import flash, image, slim, vm
from host_tools.commands.image import cli
from signing import keys

BOARD = flash.load_board("pyboard")
FS = BOARD["filesystem"]
# the pyboard build's block device: 224 blocks from 0x08004000, then 128 from 0x080E0000
SEGMENTS = [(0x08004000, 224 * 512), (0x080E0000, 128 * 512)]


def base_hex(path, extra=()):
    """A stand-in MicroPython image: isr vector in sector 0, text from sector 5."""
    ih = IntelHex()
    ih.frombytes(bytes(range(256)) * 16, offset=0x08000000)
    ih.frombytes(b"\x5a" * 10000, offset=0x08020000)
    for addr, data in extra:
        ih.frombytes(data, offset=addr)
    ih.start_addr = {"EIP": 0x08000001}
    ih.write_hex_file(str(path))
    return ih


def test_image_holds_exactly_the_expected_files(tmp_path):
    base = base_hex(tmp_path / "mp.hex")
    cfg = tmp_path / "site.json"
    cfg.write_text(json.dumps({"MAX_CHARGE_AMPS": 16, "MAX_DISCHARGE_AMPS": 16}))
    _, pub, key = keys.write_keypair(tmp_path / "fota.pem")
    out = tmp_path / "factory.hex"
    res = CliRunner().invoke(cli, ["--board", "pyboard", "--base", str(tmp_path / "mp.hex"), "-o", str(out),
                                   "--config", str(cfg), "--pubkey", str(pub)])
    assert res.exit_code == 0, res.output
    assert "176 KiB littlefs at 0x08004000-0x0801FFFF + 0x080E0000-0x080EFFFF" in res.output

    merged = IntelHex(str(out))
    # the base is untouched
    for lo, hi in base.segments():
        assert merged.tobinstr(start=lo, end=hi - 1) == base.tobinstr(start=lo, end=hi - 1)
    assert merged.start_addr == {"EIP": 0x08000001}

    # mount the region independently, with the geometry the board's build uses
    region = bytearray(b"".join(bytes(merged.tobinarray(start=a, size=n)) for a, n in SEGMENTS))
    assert region[8:16] == b"littlefs"     # what MicroPython's autodetect looks for
    fs = LittleFS(context=UserContext(buffer=region), block_size=512, block_count=352,
                  read_size=32, prog_size=32, lookahead_size=32, mount=False)
    fs.mount()
    found = {}
    for root, _dirs, names in fs.walk("/"):
        for n in names:
            p = (root.rstrip("/") + "/" + n).lstrip("/")
            with fs.open(p, "rb") as f:
                found[p] = f.read()
    plan = flash.prepare("pyboard", config=str(cfg), pubkey=str(pub))
    assert set(found) == set(plan.files)
    assert {p: hashlib.sha256(d).digest() for p, d in found.items()} == \
        {p: hashlib.sha256(d).digest() for p, d in plan.files.items()}
    assert json.loads(found["v2g_vars.json"]) == {"MAX_CHARGE_AMPS": 16, "MAX_DISCHARGE_AMPS": 16}
    assert found["update_key.bin"] == keys.device_public_key(key)
    assert "board/hal.mpy" in found and found["board/hal.mpy"][:1] == b"M"
    # run from source on the board: stored without comments and docstrings, line for line
    assert found["main.py"] == slim.slim((vm.FIRMWARE / "main.py").read_bytes())
    assert image.read_back(out, "pyboard") == found
    # littlefs disk version 2.0: what every MicroPython VfsLfs2 build mounts (2.1 needs littlefs 2.6+)
    assert fs.fs_stat().disk_version == 0x00020000
    fs.unmount()
    old_reader = LittleFS(context=UserContext(buffer=region), block_size=512, block_count=352,
                          read_size=32, prog_size=32, lookahead_size=32, disk_version=0x00020000, mount=False)
    old_reader.mount()
    assert old_reader.fs_stat().disk_version == 0x00020000


def test_a_filesystem_newer_than_disk_version_2_0_is_refused_on_read_back(tmp_path, monkeypatch):
    base_hex(tmp_path / "mp.hex")
    out = tmp_path / "factory.hex"
    monkeypatch.setattr(image, "DISK_VERSION", 0x00020001)     # littlefs-python's own default
    image.build("pyboard", tmp_path / "mp.hex", out)
    monkeypatch.setattr(image, "DISK_VERSION", 0x00020000)
    with pytest.raises(image.ImageError, match="does not mount as littlefs disk version 2.0"):
        image.read_back(out, "pyboard")


def test_overlap_with_the_filesystem_is_refused_naming_addresses(tmp_path):
    base_hex(tmp_path / "mp.hex", extra=[(0x0800A000, b"\x01" * 256)])
    out = tmp_path / "factory.hex"
    res = CliRunner().invoke(cli, ["--board", "pyboard", "--base", str(tmp_path / "mp.hex"), "-o", str(out)])
    assert res.exit_code != 0
    assert "0x0800A000-0x0800A0FF inside the filesystem 0x08004000-0x0801FFFF" in res.output
    assert not out.exists()


def test_overlap_with_the_update_partition_and_outside_flash_refused(tmp_path):
    base_hex(tmp_path / "mp.hex", extra=[(0x0807FF00, b"\x02" * 0x200), (0x080DFFF0, b"\x04" * 0x20),
                                         (0x080FFFF0, b"\x05" * 16), (0x08100000, b"\x03" * 16)])
    with pytest.raises(image.ImageError) as e:
        image.build("pyboard", tmp_path / "mp.hex", tmp_path / "f.hex")
    msg = str(e.value)
    assert "0x08080000-0x080800FF inside the update partition 0x08080000-0x080DFFFF" in msg
    assert "0x080E0000-0x080E000F inside the filesystem 0x080E0000-0x080EFFFF" in msg
    assert "0x080FFFF0-0x080FFFFF inside the rest of sector 11" in msg
    assert "0x08100000-0x0810000F outside the flash 0x08000000-0x080FFFFF" in msg


def test_bad_config_refused_before_writing(tmp_path):
    base_hex(tmp_path / "mp.hex")
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"MAX_CHARGE_AMPS": 40}))   # the pyboard's relay is 32 A
    out = tmp_path / "factory.hex"
    res = CliRunner().invoke(cli, ["--board", "pyboard", "--base", str(tmp_path / "mp.hex"), "-o", str(out),
                                   "--config", str(cfg)])
    assert res.exit_code != 0 and "V2G-400" in res.output and "MAX_CHARGE_AMPS" in res.output
    assert not out.exists()


def test_board_without_flash_map_is_refused(tmp_path):
    base_hex(tmp_path / "mp.hex")
    with pytest.raises(image.ImageError, match="board sim has no factory image layout"):
        image.build("sim", tmp_path / "mp.hex", tmp_path / "f.hex")


def test_board_json_limits_match_the_hal():
    """board.json repeats BOARD_LIMITS of the board's HAL for the host; they must agree."""
    import ast
    from host_tools import vm
    for name in flash.known_boards():
        tree = ast.parse((vm.BOARDS / name / "hal.py").read_text())
        limits = None
        for node in tree.body:     # the module-level literal
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BOARD_LIMITS" for t in node.targets):
                limits = ast.literal_eval(node.value)
        assert limits is not None, name
        assert flash.config_limits(flash.load_board(name)) == {k: tuple(v) for k, v in limits.items()}, name
