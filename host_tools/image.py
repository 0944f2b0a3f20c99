"""Factory image: the board's MicroPython `.hex` with a littlefs filesystem already on it.

    summary = image.build("pyboard", "MICROPYTHON.hex", "FACTORY.hex", config=..., pubkey=...)
    files = image.read_back("FACTORY.hex", "pyboard")     # {path: bytes}, mounted with littlefs

The filesystem holds what `v2g flash` would put on the board (the compiled firmware, the
validated v2g_vars.json, update_key.bin), formatted with the geometry the board's MicroPython
build uses (boards/<BOARD>/board.json, `filesystem`), and placed at its offset in flash.
The base image may not put a single byte in the filesystem region or the update partition,
nor outside the flash: such an overlap is refused with the addresses named.

A board with a ROMFS partition (board.json `romfs`: pybd_sf6) gets the ROMFS image `v2g flash`
deploys instead, at the partition's address (the PYBD's memory-mapped QSPI flash), and the
same image beside the .hex as OUT.romfs for `mpremote romfs deploy`. Its read-write filesystem
is in an SPI flash outside the address space, so main.py, boot.py, the settings and the key
are not in the image: the first `v2g flash` writes them (and finds the partition up to date).
"""

from intelhex import IntelHex
from littlefs import LittleFS, UserContext
from littlefs.errors import LittleFSError

from host_tools import flash, romfs


# littlefs on-disk version written into the image. littlefs-python 0.19 (littlefs 2.11) writes
# 2.1 (0x00020001) unless told otherwise; littlefs before v2.6, in MicroPython builds before
# its update, refuses to mount 2.1 ("Invalid version"). 2.0 mounts on every VfsLfs2 build (old
# and new; a newer littlefs upgrades it on its first write), so the image is pinned to 2.0 and
# read back as an old build would read it.
DISK_VERSION = 0x00020000


class ImageError(RuntimeError):
    """The image cannot be built as asked; the message names what and where."""


def geometry(board_info):
    fs = board_info.get("filesystem") or {}
    if fs.get("kind") != "littlefs2" or not board_info.get("flash"):
        raise ImageError("board {} has no factory image layout (board.json needs a littlefs2 "
                         "'filesystem' and a 'flash' map)".format(board_info["name"]))
    geo = {k: fs[k] for k in ("block_size", "block_count", "read_size", "prog_size",
                              "lookahead_size", "name_max")}
    # The block device may be split over flash segments (block n lies in the first segment
    # while n < its block count, then in the next): [(address, blocks), ...]
    geo["segments"] = [(flash.int_of(sg["start"]), sg["blocks"]) for sg in fs["segments"]]
    if sum(n for _, n in geo["segments"]) != geo["block_count"]:
        raise ImageError("boards/{}/board.json: the segments do not add up to block_count".format(
            board_info["name"]))
    geo["offset"] = geo["segments"][0][0]
    return geo


def fs_regions(geo):
    """[(start, end)] of the filesystem in flash."""
    return [(a, a + n * geo["block_size"]) for a, n in geo["segments"]]


def new_fs(geo, buffer=None):
    ctx = UserContext(buffsize=geo["block_size"] * geo["block_count"]) if buffer is None \
        else UserContext(buffer=bytearray(buffer))
    return LittleFS(context=ctx, block_size=geo["block_size"], block_count=geo["block_count"],
                    read_size=geo["read_size"], prog_size=geo["prog_size"],
                    lookahead_size=geo["lookahead_size"], name_max=geo["name_max"],
                    disk_version=DISK_VERSION, mount=buffer is None), ctx


def fs_image(files, geo):
    """The littlefs region as bytes, holding files ({path: bytes})."""
    fs, ctx = new_fs(geo)
    for path in sorted(files):
        parent = path.rpartition("/")[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        try:
            with fs.open(path, "wb") as f:
                f.write(files[path])
        except LittleFSError as e:
            raise ImageError("the files do not fit the {} KiB filesystem ({}: {})".format(
                geo["block_size"] * geo["block_count"] // 1024, path, e)) from None
    fs.unmount()
    return bytes(ctx.buffer)


def _span(a, b):
    return "0x{:08X}-0x{:08X}".format(a, b - 1)


def check_base(base, info, geo):
    """Refuse a base image that writes into our regions or outside the flash."""
    fl = info["flash"]
    flash_lo = flash.int_of(fl["start"])
    flash_hi = flash_lo + flash.int_of(fl["size"])
    reserved = [("filesystem", lo, hi) for lo, hi in fs_regions(geo)]
    up = info.get("update_partition")
    if up:
        s = flash.int_of(up["start"])
        reserved.append(("update partition", s, s + flash.int_of(up["size"])))
    for r in info.get("reserved") or ():
        reserved.append((r["name"], flash.int_of(r["start"]), flash.int_of(r["end"])))
    problems = []
    for lo, hi in base.segments():
        for a, b in ((lo, min(hi, flash_lo)), (max(lo, flash_hi), hi)):
            if a < b:
                problems.append("base image has data at {} outside the flash {}".format(
                    _span(a, b), _span(flash_lo, flash_hi)))
        for name, rlo, rhi in reserved:
            a, b = max(lo, rlo), min(hi, rhi)
            if a < b:
                problems.append("base image has data at {} inside the {} {}".format(
                    _span(a, b), name, _span(rlo, rhi)))
    if problems:
        raise ImageError("overlapping regions refused: " + "; ".join(problems))


def _rom_region(info):
    rom = info["romfs"]
    start = flash.int_of(rom["start"])
    return start, start + flash.int_of(rom["size"])


def _rom_regions(info):
    """Every ROMFS partition (romfs.partitions on a board with two), else the one."""
    parts = info["romfs"].get("partitions") or []
    if not parts:
        return [_rom_region(info)]
    return [(flash.int_of(p["start"]), flash.int_of(p["start"]) + flash.int_of(p["size"])) for p in parts]


def _read_base(base_hex):
    try:
        base = IntelHex(str(base_hex))
    except Exception as e:  # noqa: BLE001 - intelhex raises several kinds
        raise ImageError("cannot read base image {}: {}".format(base_hex, e)) from None
    if not base.segments():
        # an empty file parses as Intel HEX too; a factory image without MicroPython never boots
        raise ImageError("base image {} holds no data: expected the board's MicroPython firmware".format(
            base_hex))
    return base


def build_romfs(board, info, base_hex, out_hex, config=None, pubkey=None):
    """The factory image of a board whose firmware runs from a ROMFS partition."""
    if config is not None or pubkey is not None:
        raise ImageError("board {}: the settings and the update key go on the board's read-write "
                         "filesystem, which is not in the image ({}); install them with v2g flash "
                         "--config/--pubkey after programming".format(board, info["filesystem"].get("kind")))
    base = _read_base(base_hex)
    lo, hi = _rom_region(info)
    fl = info["flash"]
    flash_lo = flash.int_of(fl["start"])
    flash_hi = flash_lo + flash.int_of(fl["size"])
    problems = []
    regions = _rom_regions(info)
    for a, b in base.segments():
        inside = [(rlo, rhi) for rlo, rhi in regions if max(a, rlo) < min(b, rhi)]
        for rlo, rhi in inside:
            # the update's partition too: an image there would be taken for a staged update
            problems.append("base image has data at {} inside the ROMFS partition {}".format(
                _span(max(a, rlo), min(b, rhi)), _span(rlo, rhi)))
        if not inside and (a < flash_lo or b > flash_hi):
            problems.append("base image has data at {} outside the flash {}".format(
                _span(a, b), _span(flash_lo, flash_hi)))
    if problems:
        raise ImageError("overlapping regions refused: " + "; ".join(problems))
    plan = flash.prepare(board)
    merged = IntelHex()
    merged.merge(base, overlap="error")
    part = IntelHex()
    part.frombytes(plan.romfs, offset=lo)
    merged.merge(part, overlap="error")
    if base.start_addr:
        merged.start_addr = base.start_addr
    merged.write_hex_file(str(out_hex))
    rom_file = str(out_hex)[:-4] + ".romfs" if str(out_hex).lower().endswith(".hex") else str(out_hex) + ".romfs"
    with open(rom_file, "wb") as f:
        f.write(plan.romfs)
    return {"board": board, "version": plan.version, "files": sorted(romfs.read(plan.romfs)),
            "romfs_region": (lo, hi), "romfs_bytes": len(plan.romfs), "romfs_file": rom_file,
            "left_for_flash": sorted(plan.files)}


def build(board, base_hex, out_hex, config=None, pubkey=None):
    info = flash.load_board(board)
    if info.get("romfs"):
        return build_romfs(board, info, base_hex, out_hex, config, pubkey)
    geo = geometry(info)
    base = _read_base(base_hex)
    check_base(base, info, geo)
    plan = flash.prepare(board, config=config, pubkey=pubkey)
    region = fs_image(plan.files, geo)
    merged = IntelHex()
    merged.merge(base, overlap="error")
    part = IntelHex()
    pos = 0
    for lo, hi in fs_regions(geo):
        part.frombytes(region[pos:pos + hi - lo], offset=lo)
        pos += hi - lo
    merged.merge(part, overlap="error")
    if base.start_addr:
        merged.start_addr = base.start_addr
    merged.write_hex_file(str(out_hex))
    return {"board": board, "version": plan.version, "files": sorted(plan.files),
            "fs_regions": fs_regions(geo), "fs_bytes": len(region),
            "payload_bytes": sum(len(d) for d in plan.files.values())}


def read_back(hex_path, board):
    """Mount the filesystem region of a factory image (or read its ROMFS partition); return
    {path: bytes}."""
    info = flash.load_board(board)
    ih = IntelHex(str(hex_path))
    if info.get("romfs"):
        lo, hi = _rom_region(info)
        region = bytes(ih.tobinarray(start=lo, size=hi - lo))
        try:
            return romfs.read(region)
        except romfs.RomfsError as e:
            raise ImageError("the ROMFS partition in {}: {}".format(hex_path, e)) from None
    geo = geometry(info)
    region = b"".join(bytes(ih.tobinarray(start=lo, size=hi - lo)) for lo, hi in fs_regions(geo))
    fs, _ = new_fs(geo, buffer=region)
    try:
        fs.mount()
    except LittleFSError as e:
        raise ImageError("the filesystem in {} does not mount as littlefs disk version {}.{} "
                         "(what every MicroPython VfsLfs2 build reads): {}".format(
                             hex_path, DISK_VERSION >> 16, DISK_VERSION & 0xFFFF, e)) from None
    out = {}
    for root, _dirs, names in fs.walk("/"):
        for n in names:
            path = (root.rstrip("/") + "/" + n).lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    fs.unmount()
    return out
