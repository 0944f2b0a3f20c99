"""Provision a controller over its REPL: `v2g flash`.

    plan = flash.prepare(board="sim", config="site.json", pubkey="fota.pub.pem")  # host only
    with flash.Board(port) as b:
        report = flash.flash(b, plan)

Steps, each one refusing with a clear reason before the board is touched when it can:
1. validate the settings file with the controller's own rules (firmware/core/config.py, the
   board's narrower limits from boards/<BOARD>/board.json): a bad file is V2G-400 naming
   every key, and nothing is sent to the board;
2. compile every firmware file with mpy-cross for the board's architecture (main.py and
   boot.py stay source: MicroPython runs them by name); results are cached by content;
3. ask the board for the SHA-256 of every file it holds (one script, one round trip) and
   copy only what differs; files of ours the tree no longer has (a `.py` now shipped as
   `.mpy`, a deleted module) are removed, since MicroPython would import a stale `.py`
   before the new `.mpy`. Settings, the update key and the `state/` folder are kept;
4. main.py is removed first and written last, and every file goes to NAME.tmp and is then
   renamed: a board that loses power half-way boots to the REPL with the controller not
   running (outputs in their reset state) instead of running a mix of two versions;
5. check that the new factory firmware imports and reports the expected version, in the
   raw REPL entered with a soft reset (boot.py runs, main.py does not, on every MicroPython
   board) and with every module of ours dropped from sys.modules and any update slot taken
   off sys.path first, so what is imported is the tree just written, never a cached module;
   then reset from the friendly REPL (Ctrl-B, Ctrl-D), which runs boot.py and main.py, watch
   the boot for a traceback, and ask the running controller for its version where the REPL
   is free (the virtual board; on a real board main.py holds the REPL and the version is
   confirmed over the host link, --link).

The board is read without stopping the controller where the REPL is free (raw REPL entered
without Ctrl-C or reset). A dry run, and a reflash where nothing differs, stop there: nothing
is written, nothing is reset, and the running controller is never interrupted. Otherwise the
controller is stopped (Ctrl-C, soft reset in raw REPL) before the first write. On a board
whose main.py holds the REPL it has to be stopped to be read at all; with nothing to write it
is restarted afterwards with a soft reset, and the report says so.

The transport is mpremote's (its Python API: raw REPL exec/eval); the reset and the boot
watch use the same pyserial port directly.
"""

import ast
import base64
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import mpy_check, romfs, slim, vm

CONFIG_FILE = "v2g_vars.json"
KEY_FILE = "update_key.bin"     # 65 bytes: the uncompressed P-256 point 04||X||Y
KEY_TABLE_FILE = "update_key.tab"   # the key's comb tables as app/install.py keeps them
BOARD_PKG = "board"             # boards/<BOARD>/* lands in /board (package `board`)
KEEP_DIRS = ("state",)          # the controller's own files: never compared, never removed
SOURCE_ONLY = ("main.py", "boot.py")
BUILD_ONLY = ("manifest.py",)   # freeze manifests for a MicroPython build, not modules
ROM_AB_ONLY = ("app/install_rom.py",)   # only boards with two ROMFS partitions (board.json) carry it
CHUNK = 2048                    # raw bytes per exec when writing a file


class FlashError(RuntimeError):
    """Provisioning refused or failed; the message says what and why."""


# ------------------------------------------------------------------------------ boards

known_boards = vm.known_boards


def load_board(name):
    """boards/<name>/board.json as a dict (hex strings stay strings; see int_of)."""
    if name not in known_boards():   # a name, never a path
        raise FlashError("unknown board {!r} (known: {})".format(name, ", ".join(known_boards())))
    path = vm.BOARDS / name / "board.json"
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise FlashError("boards/{}/board.json is not valid JSON: {}".format(name, e)) from None
    if info.get("name") != name or not info.get("mpy_arch"):
        raise FlashError("boards/{}/board.json must name the board and its mpy_arch".format(name))
    return info


def int_of(value):
    """Addresses in board.json are written as hex strings ("0x08004000") for people."""
    return int(value, 0) if isinstance(value, str) else int(value)


def config_limits(board_info):
    """The board's narrower config ranges in the form core/config.py takes."""
    out = {}
    for key, rng in (board_info.get("config_limits") or {}).items():
        out[key] = tuple(rng)
    if "cooling" in board_info and not board_info["cooling"]:
        # "cooling": null, a board without a cooling loop: core/config.py BOARD_COOLING
        out["cooling"] = False
    return out


# ------------------------------------------------------------------------------ settings

def config_module():
    """firmware/core/config.py: the very rules the controller applies, imported as the
    firmware's own core.config (once), so that Config.notes() finds core.grid beside it."""
    from core import config as fw_config
    return fw_config


def validate_config_text(text, board_info):
    """The bytes to write as v2g_vars.json: the keys as given, in the controller's canonical
    form (each value as the exact decimal the controller holds, so the file reads back the same
    on the board). Raises FlashError (V2G-400 ...) naming every offending key, the line and
    column of broken JSON, or a key given twice."""
    cfg = config_module()
    try:
        conf = cfg.load_json(text, board=config_limits(board_info))
        data = cfg.parse(text)
    except cfg.ConfigError as e:
        raise FlashError(str(e)) from None
    # Only the keys the installer set: the others stay defaults and show as such in v2g-diag.
    return cfg.canonical({k: conf.values[k] for k in data}).encode()


def config_notes(values, board_info=None):
    """What valid settings cannot do as well as they read (a meter poll slower than the grid
    profile's fastest stage, a clamped droop): the controller's own Config.notes(), as text."""
    fw_config = config_module()
    limits = config_limits(board_info) if board_info is not None else None
    try:
        return fw_config.validate(values, None, limits).notes()
    except fw_config.ConfigError:
        return []


def read_config(path, board_info):
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FlashError("cannot read config file {}: {}".format(path, getattr(e, "strerror", e))) from None
    return validate_config_text(text, board_info)


def read_pubkey(path):
    """The update public key as the controller stores it (65-byte uncompressed point)."""
    from signing import keys
    try:
        return keys.device_public_key(keys.load_public(path))
    except keys.KeyFileError as e:
        raise FlashError("update key: {}".format(e)) from None


def firmware_version():
    """FW_VERSION as written in firmware/app/station.py."""
    tree = ast.parse((vm.FIRMWARE / "app" / "station.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FW_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise FlashError("firmware/app/station.py does not define FW_VERSION")


# ------------------------------------------------------------------------------ the tree

def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "v2g" / "mpy"


def _mpy_cross_version():
    proc = subprocess.run([mpy_check.mpy_cross(), "--version"], capture_output=True, text=True)
    return (proc.stdout + proc.stderr).strip()


def host_only(board_info):
    """Files of a board folder that the host runs (board.json `host_only`), never installed."""
    return tuple((board_info.get("host_only") or {}).get("files", ()))


def firmware_files(board):
    """(source path, path on the board) for every file that goes onto the controller. A board
    whose board.json names a `hal_base` (pybd_sf6: pyboard) also carries that board's HAL
    package as board/<hal_base>/, which its own hal.py builds on."""
    pairs = []
    info = load_board(board)
    # the installer's ROMFS-partition path runs only on a build with two partitions
    rom_only = () if len((info.get("romfs") or {}).get("partitions") or ()) >= 2 else ROM_AB_ONLY
    for src in sorted(vm.FIRMWARE.rglob("*.py")):
        rel = src.relative_to(vm.FIRMWARE).as_posix()
        if "__pycache__" not in src.parts and rel not in BUILD_ONLY + rom_only:
            pairs.append((src, rel))
    base = info.get("hal_base")
    for folder, prefix in [(board, BOARD_PKG + "/")] + ([(base, BOARD_PKG + "/" + base + "/")] if base else []):
        bdir = vm.BOARDS / folder
        for src in sorted(bdir.rglob("*.py")):
            rel = src.relative_to(bdir).as_posix()
            # the base board's pin map stays behind: its HAL reads this board's (board.pins);
            # what only the host runs from the board folder (v2g sim's driver) stays too
            skip = BUILD_ONLY + host_only(info) + (("pins.py",) if folder != board else ())
            if "__pycache__" not in src.parts and rel not in skip:
                pairs.append((src, prefix + rel))
    return pairs


def compile_tree(board, arch, jobs=8):
    """{board path: bytes}: .mpy for modules, source for main.py and boot.py.

    Compiled files are cached under ~/.cache/v2g/mpy by (source, path, arch, mpy-cross
    version), so an incremental flash compiles only what changed."""
    version = _mpy_cross_version()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out, todo = {}, []
    for src, dest in firmware_files(board):
        data = src.read_bytes()
        if dest in SOURCE_ONLY:
            out[dest] = slim.slim(data)     # run from source: comments cost the board's flash
            continue
        key = hashlib.sha256(b"\0".join([data, dest.encode(), arch.encode(), version.encode()])).hexdigest()
        target = dest[:-3] + ".mpy"
        cached = cache / (key + ".mpy")
        if cached.is_file():
            out[target] = cached.read_bytes()
        else:
            todo.append((src, target, cached))

    def build(item):
        src, target, cached = item
        tmp = cached.with_suffix(".tmp{}".format(os.getpid()))
        ok, msg = mpy_check.compile_file(src, tmp, arch)
        if not ok:
            return target, None, msg
        os.replace(tmp, cached)
        return target, cached.read_bytes(), None

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for target, data, err in pool.map(build, todo):
            if data is None:
                raise FlashError("mpy-cross -march={} failed for {}: {}".format(arch, target, err))
            out[target] = data
    return out


@dataclass
class Plan:
    """What goes onto the board: every file with its bytes, built on the host."""
    board: str
    arch: str
    version: str
    files: dict                       # board path -> bytes
    managed: tuple                    # top-level names that are ours to replace/remove
    config_keys: list = field(default_factory=list)
    config_notes: list = field(default_factory=list)   # what the settings cannot do as they read
    romfs: bytes = None               # the ROMFS image of the modules, on a board with a ROM partition
    rom: dict = None                  # board.json "romfs": partition number, size, ...
    frozen: tuple = ()                # top-level names the board's image holds frozen (--frozen): not copied
    notes: list = field(default_factory=list)   # what the board needs for this plan (its image)
    installs: str = ""                # what goes where, in one line

    def modules(self):
        """The compiled modules the plan copies to the filesystem."""
        return sorted(p for p in self.files if p.endswith(".mpy"))


def frozen_names(board):
    """Top-level names (packages, modules) the freeze manifests put into a board's image:
    firmware/manifest.py and, if the board has one, boards/<board>/manifest.py. Read by
    running them against stand-ins for the manifest functions (no MicroPython tree needed)."""
    names = []

    def package(name, files=None, base_path=".", opt=None):
        names.append(name.split("/")[0].split(".")[0])

    def module(name, base_path=".", opt=None):
        names.append(name)

    def ignore(*args, **kwargs):
        pass

    for path in (vm.FIRMWARE / "manifest.py", vm.BOARDS / board / "manifest.py"):
        if path.is_file():
            env = {"package": package, "module": module, "include": ignore, "require": ignore,
                   "freeze": ignore, "options": ignore, "metadata": ignore}
            try:
                exec(compile(path.read_text(), str(path), "exec"), env)
            except Exception as e:   # noqa: BLE001  (a manifest we cannot read is named, not guessed)
                raise FlashError("cannot read the freeze manifest {}: {}".format(path, e)) from None
    return tuple(dict.fromkeys(names))


def frozen_build(board, info):
    """How the board's MicroPython is built with the firmware frozen in (board.json
    "micropython": "build"), for the messages."""
    return (info.get("micropython") or {}).get("build") or \
        "a MicroPython build with FROZEN_MANIFEST={}".format(vm.FIRMWARE / "manifest.py")


def key_tables(point):
    """The update key's comb tables as the controller keeps them in KEY_TABLE_FILE (sealed by
    a digest over the key's point and the tables), computed here with the firmware's own
    core.p256."""
    from core import p256
    x, y = p256.parse_point(point)
    out = []
    p256.run(p256.key_tables_steps(x, y, out, 2))
    return p256.cache_head(point, out[0]) + b"".join(bytes(t) for t in out[0])


def key_files(point, tables=True):
    """The files that give a board its update key: the point, and (tables) the key's comb
    tables, so that its first update loads them instead of building them on its heap (on a
    96 KiB board it cannot: docs/board-budget.md, "The peak while an update runs")."""
    files = {KEY_FILE: point}
    if tables:
        files[KEY_TABLE_FILE] = key_tables(point)
    return files


def _room_for_key_tables(info):
    # a littlefs in the MCU's own flash holds the firmware's modules too and has no room for
    # 24.6 kB more (a frozen image frees it); an external flash or the virtual board's folder has
    return (info.get("filesystem") or {}).get("kind") != "littlefs2"


def prepare(board, config=None, pubkey=None, config_text=None, frozen=False):
    """Build the plan on the host; raises FlashError before anything is sent.

    frozen: the board runs an image with the firmware frozen in (frozen_names()); those
    modules are not copied, and copies of them on the filesystem are removed (MicroPython
    looks in the current folder before .frozen and would load them into RAM again)."""
    info = load_board(board)
    wants_frozen = bool((info.get("micropython") or {}).get("frozen"))
    if frozen and info.get("romfs"):
        raise FlashError("--frozen: board {} runs its modules from a ROMFS partition, which v2g flash "
                         "writes; there is nothing frozen to skip".format(board))
    if frozen and not wants_frozen:
        raise FlashError("--frozen: board {} has no MicroPython build with the firmware frozen in "
                         "(boards/{}/board.json \"micropython\": \"frozen\")".format(board, board))
    files = {}
    config_keys = []
    notes = []
    if config is not None or config_text is not None:
        data = validate_config_text(config_text, info) if config_text is not None else read_config(config, info)
        files[CONFIG_FILE] = data
        config_keys = sorted(json.loads(data))
        notes = config_notes(json.loads(data), info)
    if pubkey is not None:
        files.update(key_files(read_pubkey(pubkey), tables=frozen or _room_for_key_tables(info)))
    compiled = compile_tree(board, info["mpy_arch"])
    image = None
    rom = info.get("romfs")
    if rom:
        # Every compiled module goes into the ROMFS image (run in place from flash); the
        # read-write filesystem keeps what MicroPython runs by name and the settings. Copies
        # of our modules left there from an earlier flash are removed (diff: not in the plan).
        image = romfs.build({p: d for p, d in compiled.items() if p not in SOURCE_ONLY})
        if len(image) > int_of(rom["size"]):
            raise FlashError("the ROMFS image ({:,} B) does not fit the board's {:,} B partition".format(
                len(image), int_of(rom["size"])))
        compiled = {p: d for p, d in compiled.items() if p in SOURCE_ONLY}
    skipped = ()
    if frozen:
        skipped = frozen_names(board)
        compiled = {p: d for p, d in compiled.items()
                    if p in SOURCE_ONLY or p.split("/", 1)[0] not in skipped}
    files.update(compiled)
    managed = sorted({p.name for p in vm.FIRMWARE.iterdir() if p.is_dir() and p.name != "__pycache__"}
                     | set(SOURCE_ONLY) | set(BUILD_ONLY) | {BOARD_PKG})
    plan = Plan(board, info["mpy_arch"], firmware_version(), files, tuple(managed), config_keys, notes,
                romfs=image, rom=rom, frozen=skipped)
    plan.installs, plan.notes = _what_goes_where(plan, info, wants_frozen)
    return plan


def _what_goes_where(plan, info, wants_frozen):
    mods = plan.modules()
    where = sorted({p.split("/", 1)[0] + "/" if "/" in p else p for p in mods})
    src = sorted(p for p in plan.files if p in SOURCE_ONLY)
    if plan.romfs is not None:
        installs = "installs: the compiled modules in the ROMFS image ({:,} B, run in place), {} on the " \
                   "filesystem".format(len(plan.romfs), ", ".join(src))
    else:
        installs = "installs: {} compiled module(s) on the filesystem ({}), {}".format(
            len(mods), ", ".join(where) or "none", ", ".join(src))
    out = []
    if plan.frozen:
        out.append("expects frozen in the board's image: {} (not copied; copies of them on the board are "
                   "removed). The image: {}".format(", ".join(n + "/" for n in plan.frozen if n not in SOURCE_ONLY),
                                                    frozen_build(plan.board, info)))
    elif wants_frozen:
        out.append("board {} needs the firmware frozen into its MicroPython image: from the filesystem "
                   "the modules are loaded into RAM and do not fit its heap (docs/board-budget.md). Build "
                   "the image with {}, then flash with --frozen".format(plan.board, frozen_build(plan.board, info)))
    return installs, out


def sha(data):
    return hashlib.sha256(data).hexdigest()


@dataclass
class Changes:
    copy: list          # (path, reason 'new' | 'changed', size)
    remove: list        # paths of ours the new tree does not have
    unchanged: list
    rom: tuple = None   # (reason, size) when the ROMFS partition must be written

    @property
    def empty(self):
        return not self.copy and not self.remove and not self.rom


# The installer's state (update.json, its .bak copy and their .tmp files) and fault injection.
UPDATE_STATE = ("update.json", "update.json.tmp", "update.json.bak", "update.json.bak.tmp", "fota_fault.json")
SETTINGS_FILES = (CONFIG_FILE, KEY_FILE, KEY_TABLE_FILE)     # not firmware: changing them keeps an update


def diff(plan, on_board, rom_on_board=None):
    """Compare the plan with {path: sha256 hex} read from the board and, on a board with a
    ROMFS partition, the SHA-256 of its first len(plan.romfs) bytes (rom_on_board)."""
    copy, unchanged = [], []
    for path in sorted(plan.files):
        data = plan.files[path]
        have = on_board.get(path)
        if have is None:
            copy.append((path, "new", len(data)))
        elif have != sha(data):
            copy.append((path, "changed", len(data)))
        else:
            unchanged.append(path)
    remove = sorted(p for p in on_board
                    if p not in plan.files and p.split("/", 1)[0] in plan.managed)
    rom = None
    if plan.romfs is not None and rom_on_board != sha(plan.romfs):
        rom = ("changed" if rom_on_board else "new", len(plan.romfs))
    if any(path not in SETTINGS_FILES for path, _, _ in copy) or remove or rom:
        # New factory firmware supersedes any installed update: a confirmed slot would
        # otherwise keep shadowing it at every boot (see docs/updates.md). New settings or a
        # new update key alone leave an installed update where it is.
        remove += sorted(p for p in on_board if p in UPDATE_STATE or p.startswith("slots/"))
    return Changes(copy, remove, unchanged, rom)


def compare(board, plan):
    """diff() of the plan against what the board holds (its files and its ROMFS partition).
    A --frozen plan is refused first when the board's image lacks a package it skips."""
    if plan.frozen:
        packages = [n for n in plan.frozen if not n.endswith(".py")]
        missing = [n for n in packages if n not in board.frozen_packages(packages)]
        if missing:
            raise FlashError("--frozen: the board's MicroPython image has no frozen {} (nothing was "
                             "written). Build it with {}".format(
                                 ", ".join(missing), frozen_build(plan.board, load_board(plan.board))))
    rom = board.rom_sha(plan.rom["partition"], len(plan.romfs)) if plan.romfs is not None else None
    return diff(plan, board.hashes(), rom)


# ------------------------------------------------------------------------------ the board

# Runs on the controller: one line "path sha256hex" per file, state/ skipped.
_HASH_SCRIPT = """
import os, hashlib, binascii
def _v2g_walk(d):
    for e in os.ilistdir(d if d else '.'):
        p = d + '/' + e[0] if d else e[0]
        if e[1] & 0x4000:
            if p not in {keep}:
                _v2g_walk(p)
        else:
            h = hashlib.sha256()
            b = bytearray(1024)
            with open(p, 'rb') as f:
                while True:
                    n = f.readinto(b)
                    if not n:
                        break
                    h.update(b if n == 1024 else b[:n])
            print(p, binascii.hexlify(h.digest()).decode())
_v2g_walk('')
del _v2g_walk
"""


# Runs on the controller: the ROMFS partition's size and the SHA-256 of its first {n} bytes
# ('-' when they do not start with a ROMFS header: nothing deployed yet). mpremote's partition
# query (vfs.rom_ioctl(2, id): the partition as a memoryview); the hash is taken on the board,
# so only 64 hex digits cross the wire.
_ROM_SCRIPT = """
import vfs, hashlib, binascii
if not hasattr(vfs, 'rom_ioctl'):
    print('V2G-ROM none')
else:
    _v2g_d = vfs.rom_ioctl(2, {part})
    if isinstance(_v2g_d, int):
        print('V2G-ROM missing', _v2g_d)
    else:
        _v2g_m = memoryview(_v2g_d)
        _v2g_h = hashlib.sha256(_v2g_m[:min(len(_v2g_m), {n})]).digest()
        print('V2G-ROM', len(_v2g_m), binascii.hexlify(_v2g_h).decode() if bytes(_v2g_m[:3]) == {header!r} else '-')
        del _v2g_m, _v2g_h
    del _v2g_d
"""
ROM_CHUNK = 2048                 # image bytes per exec when writing the partition
ROM_ERASE_STEP = 32768           # bytes erased per call, as mpremote does (one call stays short)


# Runs on the controller: which of {names} import from the image's frozen modules alone.
# Whatever of ours is imported (a running controller's) is set aside and put back after.
_FROZEN_SCRIPT = """
import sys
_v2g_n = {names!r}
_v2g_k = [m for m in sys.modules if m.split('.')[0] in _v2g_n]
_v2g_s = [(m, sys.modules.pop(m)) for m in _v2g_k]
_v2g_p = sys.path[:]
sys.path[:] = ['.frozen']
_v2g_r = []
for _v2g_x in _v2g_n:
    try:
        __import__(_v2g_x)
        _v2g_r.append(_v2g_x)
    except ImportError:
        pass
    if _v2g_x in sys.modules:
        del sys.modules[_v2g_x]
sys.path[:] = _v2g_p
for _v2g_m, _v2g_o in _v2g_s:
    sys.modules[_v2g_m] = _v2g_o
print('V2G-FROZEN', ' '.join(_v2g_r) or '-')
del _v2g_n, _v2g_k, _v2g_s, _v2g_p, _v2g_r, _v2g_x
"""


# Typed at the friendly prompt after the reset: the version the running station reports
# (a slot's manifest version when it runs an update) and the tree it runs from.
_RUN_QUERY = ("import app.run as _r; _s = _r.station; print('V2G-RUN', _s.update.version() if _s else '-', "
              "_s.update.running if _s else '-'); del _r, _s")


class Board:
    """A MicroPython board reached over its REPL with mpremote's transport."""

    RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"

    def __init__(self, port, baudrate=115200, interrupt=True):
        """interrupt=False (dry run): leave a running controller alone when the REPL is free;
        `stopped_controller` then says whether it had to be stopped all the same."""
        self.port = port
        self.baudrate = baudrate
        self.interrupt = interrupt
        self.stopped_controller = False
        self.fresh = False            # in raw REPL after a soft reset: clean module state
        self.t = None
        self._lock = None

    def __enter__(self):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        from host_tools.link import LinkError, PortLock
        try:
            self._lock = PortLock(self.port).acquire()     # the same lock as the link tools
        except LinkError as e:
            raise FlashError(str(e)) from None
        try:
            # a read timeout: on a pty mpremote reads byte by byte and would wait for ever on
            # a port that is not a REPL (the link port, say); with it, its own deadlines apply
            self.t = SerialTransport(self.port, baudrate=self.baudrate, timeout=1)
        except (TransportError, OSError, ValueError) as e:
            self._lock.release()
            raise FlashError("cannot open {}: {}".format(self.port, e)) from None
        try:
            # mpremote prints whatever it read when the raw REPL does not answer: on a port
            # that is not a REPL that is binary noise, so it is kept out of the user's terminal
            with contextlib.redirect_stdout(io.StringIO()):
                self._enter()
        except TransportError as e:
            self.t.close()
            self._lock.release()
            raise FlashError("no MicroPython REPL on {}: {}".format(self.port, e)) from None
        return self

    def _enter(self):
        if self.interrupt:
            # Ctrl-C stops the running controller (mpremote interrupts), then a soft reset
            # in raw REPL gives clean module state; main.py does not run in raw REPL.
            self.t.enter_raw_repl(soft_reset=True)
            self.stopped_controller = True
            self.fresh = True
        elif not self._enter_raw_quietly():
            # main.py holds the REPL (a real board): only Ctrl-C gets to it, which stops
            # the controller; the caller restarts it.
            self.stopped_controller = True
            self.t.serial.write(b"\r\x03")
            time.sleep(0.3)
            self.t.serial.reset_input_buffer()
            self.t.enter_raw_repl(soft_reset=False)

    def __exit__(self, *exc):
        self.close()

    def stop_controller(self):
        """Before a write: stop a controller left running by a quiet entry and get clean
        module state (Ctrl-C, raw REPL, soft reset: boot.py runs, main.py does not)."""
        from mpremote.transport import TransportError
        if self.fresh:
            return
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.t.enter_raw_repl(soft_reset=True)
        except TransportError as e:
            raise FlashError("cannot stop the controller for the write: {}".format(e)) from None
        self.stopped_controller = True
        self.fresh = True

    def _enter_raw_quietly(self, wait_s=1.0):
        """Ctrl-A alone, without Ctrl-C: answered only when the REPL is free (main.py returned
        and the controller runs as a task, as on the virtual board). True if in raw REPL."""
        ser = self.t.serial
        ser.reset_input_buffer()
        ser.write(b"\r\x01")
        # stop at the banner and leave its '>' for exec to read, as enter_raw_repl does
        got = self.t.read_until(1, self.RAW_BANNER, timeout=wait_s, timeout_overall=wait_s)
        if got.endswith(self.RAW_BANNER):
            self.t.in_raw_repl = True
            return True
        return False

    def close(self):
        if self.t is not None:
            try:
                if self.t.in_raw_repl:
                    self.t.exit_raw_repl()
            except Exception:  # noqa: BLE001 - the port may already be gone
                pass
            self.t.close()
            self.t = None
        if self._lock is not None:
            self._lock.release()

    def exec(self, code):
        from mpremote.transport import TransportError
        try:
            return self.t.exec(code).decode(errors="replace")
        except TransportError as e:
            raise FlashError("on the board: {}".format(str(e).strip() or e.__class__.__name__)) from None

    def frozen_packages(self, names):
        """The packages among names the board's image holds frozen."""
        out = self.exec(_FROZEN_SCRIPT.format(names=tuple(names)))
        m = re.search(r"V2G-FROZEN ([^\r\n]*)", out)
        if not m:
            raise FlashError("the board did not say which modules it holds frozen: " + out.strip())
        return [] if m.group(1).strip() == "-" else m.group(1).split()

    def hashes(self):
        out = self.exec(_HASH_SCRIPT.format(keep=repr(KEEP_DIRS)))
        # Entered without Ctrl-C (the controller left running), the raw REPL's "OK" can reach
        # the output ahead of the first line; left there, it hid the first file from the diff
        # (an empty app/__init__.py was never replaced by its .mpy)
        if out.startswith("OK"):
            out = out[2:]
        found = {}
        for line in out.splitlines():
            parts = line.strip().split(" ")
            if len(parts) == 2 and len(parts[1]) == 64:
                found[parts[0]] = parts[1]
        return found

    def _ask_int(self, expr):
        out = self.exec("print('V2G-INT', {})".format(expr))
        m = re.search(r"V2G-INT (-?\d+)", out)
        if not m:
            raise FlashError("the board did not answer {}: {}".format(expr, out.strip()))
        return int(m.group(1))

    def rom_sha(self, part, n):
        """SHA-256 hex of the first n bytes of ROMFS partition `part`, '' if they do not start
        with a ROMFS header. FlashError when the board's MicroPython has no ROMFS, the
        partition is missing or n bytes do not fit it."""
        out = self.exec(_ROM_SCRIPT.format(part=int(part), n=int(n), header=romfs.HEADER))
        m = re.search(r"V2G-ROM (\S+)(?: (\S+))?", out)
        if not m:
            raise FlashError("the board did not answer the ROMFS query: " + out.strip())
        if m.group(1) == "none":
            raise FlashError("the board's MicroPython has no ROMFS (no vfs.rom_ioctl): this board needs "
                             "MicroPython 1.25 or later built with its ROMFS partition (see board.json)")
        if m.group(1) == "missing":
            raise FlashError("the board has no ROMFS partition {} (vfs.rom_ioctl answered {})".format(
                part, m.group(2)))
        size = int(m.group(1))
        if n > size:
            raise FlashError("the ROMFS image ({:,} B) does not fit partition {} ({:,} B)".format(n, part, size))
        return "" if m.group(2) == "-" else m.group(2)

    def rom_deploy(self, part, image, progress=None):
        """Write a ROMFS image to partition `part` as `mpremote romfs deploy` does (vfs.rom_ioctl:
        unmount /rom, erase, write, end), read it back by hash, and mount it at /rom again."""
        self.exec("import vfs, binascii\ntry:\n vfs.umount('/rom')\nexcept OSError:\n pass")
        block = self._ask_int("vfs.rom_ioctl(6, {})".format(part))
        span = len(image)
        if block > 0:
            span = (len(image) + block - 1) // block * block
            step = max(block, ROM_ERASE_STEP // block * block)
        else:
            step = span
        min_write = 4
        for off in range(0, span, step):
            got = self._ask_int("vfs.rom_ioctl(3, {}, {}, {})".format(part, off, min(step, span - off)))
            if got < 0:
                raise FlashError("erasing ROMFS partition {} at offset {} failed (error {})".format(part, off, got))
            min_write = max(min_write, got)
        for off in range(0, len(image), ROM_CHUNK):
            chunk = image[off:off + ROM_CHUNK]
            chunk += b"\xff" * (-len(chunk) % min_write)      # whole write units; 0xFF leaves erased flash as it is
            got = self._ask_int("vfs.rom_ioctl(4, {}, {}, binascii.a2b_base64({!r}))".format(
                part, off, base64.b64encode(chunk)))
            if got < 0:
                raise FlashError("writing ROMFS partition {} at offset {} failed (error {})".format(part, off, got))
            if progress:
                progress(min(ROM_CHUNK, len(image) - off))
        self.exec("vfs.rom_ioctl(5, {})".format(part))    # end of write (not every port needs it)
        if self.rom_sha(part, len(image)) != sha(image):
            raise FlashError("ROMFS partition {} does not read back as written".format(part))
        # MicroPython mounts /rom at boot; the import check before the reset needs it now
        self.exec("import sys\nvfs.mount(vfs.VfsRom(vfs.rom_ioctl(2, {})), '/rom')\n"
                  "if '/rom' not in sys.path:\n sys.path.insert(0, '/rom')".format(part))

    def makedirs(self, dirs):
        if not dirs:
            return
        self.exec("import os\nfor d in {!r}:\n try:\n  os.mkdir(d)\n except OSError:\n  pass".format(sorted(dirs)))

    def remove(self, paths):
        if paths:
            self.exec("import os\nfor p in {!r}:\n try:\n  os.remove(p)\n except OSError:\n  pass"
                      .format(list(paths)))

    def put(self, path, data, progress=None):
        """Write path atomically: NAME.tmp, then rename over NAME."""
        tmp = path + ".tmp"
        self.exec("import binascii, os\n_v2g_f = open({!r}, 'wb')".format(tmp))
        for i in range(0, len(data), CHUNK):
            chunk = data[i:i + CHUNK]
            self.exec("_v2g_f.write(binascii.a2b_base64({!r}))".format(base64.b64encode(chunk)))
            if progress:
                progress(len(chunk))
        self.exec("_v2g_f.close()\ndel _v2g_f\nos.rename({!r}, {!r})".format(tmp, path))

    def check_import(self):
        """Import the new factory firmware on the board (not started): its version and board
        name, or FlashError. Anything of ours still imported (main.py ran, or an earlier
        check) and an update slot boot.py put on sys.path are dropped first, so what is
        checked is the factory tree just written."""
        out = self.exec(
            "import sys\n"
            "for _m in [m for m in sys.modules if m.split('.')[0] in ('app', 'core', 'board')]:\n"
            "    del sys.modules[_m]\n"
            "sys.path[:] = [p for p in sys.path if not p.startswith('slots/')]\n"
            "import app.station, board.hal\n"
            "print('V2G-FW', app.station.FW_VERSION, board.hal.BOARD_NAME)")
        m = re.search(r"V2G-FW (\S+) (\S+)", out)
        if not m:
            raise FlashError("the firmware did not report its version: " + out.strip())
        return m.group(1), m.group(2)

    def reset_and_watch(self, wait_s=10.0):
        """Soft reset from the friendly REPL (runs boot.py and main.py on every MicroPython
        board) and watch the boot. Returns (prompt_seen, text)."""
        ser = self.t.serial
        ser.timeout = 0.1                # mpremote opens the port blocking
        self.t.exit_raw_repl()           # Ctrl-B: friendly REPL
        time.sleep(0.05)
        ser.reset_input_buffer()
        ser.write(b"\x04")               # Ctrl-D at the prompt: soft reset
        got = b""
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            got += ser.read(ser.in_waiting or 1)
            if b"soft reboot" in got and got.rstrip().endswith(b">>>"):
                return True, got.decode(errors="replace")
            if b"Traceback" in got and got.rstrip().endswith(b">>>"):
                break
        return got.rstrip().endswith(b">>>"), got.decode(errors="replace")

    def friendly_query(self, line, marker, timeout=5.0):
        """Type one line at the friendly prompt (the controller keeps running on boards where
        main.py returns, like the virtual board) and return the output line with marker."""
        ser = self.t.serial
        ser.timeout = 0.1
        ser.reset_input_buffer()
        ser.write(line.encode() + b"\r")
        got = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got += ser.read(ser.in_waiting or 1)
            # the answer is a line of its own; the echo of the typed line starts with >>>
            m = re.search(r"(?m)^" + re.escape(marker) + r"[^\r\n]*\r?\n", got.decode(errors="replace"))
            if m:
                return m.group(0).strip()
        return None

    def running_version(self, timeout=5.0):
        """(version, tree) of the controller running now, asked at the friendly prompt:
        tree is 'factory' or the update slot it runs from. None if it did not answer (not
        started within timeout)."""
        end = time.monotonic() + timeout
        while True:
            line = self.friendly_query(_RUN_QUERY, "V2G-RUN", max(0.5, end - time.monotonic()))
            parts = (line or "").split()
            if len(parts) == 3 and parts[1] != "-":
                return parts[1], parts[2]
            if time.monotonic() >= end:
                return None
            time.sleep(0.2)   # the controller task has not built its station yet


# ------------------------------------------------------------------------------ flashing

@dataclass
class Report:
    changes: Changes
    dry_run: bool = False
    imported_version: str = None
    board_name: str = None
    running: str = None               # what the boot check saw, in words
    running_version: str = None       # the version the running controller reports (REPL)
    running_tree: str = None          # 'factory' or the update slot it runs from
    restarted: bool = False           # the controller had to be stopped to read the board; restarted
    untouched: bool = False           # nothing differed: nothing written, no reset
    seconds: float = 0.0
    copy_seconds: float = 0.0         # compare + copy only (what mpremote fs cp -r does)
    bytes_sent: int = 0

    def lines(self):
        out = []
        if self.changes.rom:
            why, size = self.changes.rom
            out.append("{} the ROMFS image ({}, {:,} B)".format("would write" if self.dry_run else "wrote", why, size))
        for path, why, size in self.changes.copy:
            out.append("{} {} ({}, {:,} B)".format("would copy" if self.dry_run else "copied", path, why, size))
        for path in self.changes.remove:
            out.append("{} {} (not in the new firmware)".format("would remove" if self.dry_run else "removed", path))
        out.append("{} file(s) unchanged".format(len(self.changes.unchanged)))
        return out


def flash(board, plan, dry_run=False, progress=None, wait_s=10.0, changes=None):
    """Bring the board to the plan. progress(n_bytes) is called as bytes go out; changes is
    compare(board, plan) if the caller has it already. With dry_run, or when nothing
    differs (report.untouched), nothing is written and a controller that kept running is left
    alone; one that had to be stopped to read the board is restarted (report.restarted).
    Otherwise the controller is stopped (board.stop_controller) before the first write."""
    t0 = time.monotonic()
    if changes is None:
        changes = compare(board, plan)
    report = Report(changes, dry_run)
    if dry_run or changes.empty:
        # Nothing to write: the board is left as it is. A controller that had to be stopped
        # to read the board (main.py holds the REPL) is restarted; one that kept running
        # (the REPL was free) is not touched: no reset, no import check.
        report.untouched = not dry_run
        if board.stopped_controller:
            _restart(board, report, wait_s)
            report.restarted = True
        report.seconds = time.monotonic() - t0
        return report
    board.stop_controller()
    if changes.rom and "main.py" in plan.files and "main.py" not in [p for p, _, _ in changes.copy]:
        # main.py is off the board while the ROMFS partition is rewritten (see step 4), so it
        # is written again last
        changes.copy.append(("main.py", "rewritten after the ROMFS image", len(plan.files["main.py"])))
    if not changes.empty:
        copying = [p for p, _, _ in changes.copy]
        if "main.py" in copying:
            board.remove(["main.py"])     # see step 4 in the module docstring
        dirs = set()
        for p in copying:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        board.makedirs(sorted(dirs, key=lambda d: d.count("/")))
        board.remove(changes.remove)
        if changes.rom:
            board.rom_deploy(plan.rom["partition"], plan.romfs, progress)
            report.bytes_sent += len(plan.romfs)
        for path in sorted(copying, key=lambda p: p == "main.py"):
            board.put(path, plan.files[path], progress)
            report.bytes_sent += len(plan.files[path])
    report.copy_seconds = time.monotonic() - t0
    version, name = board.check_import()
    if version != plan.version or name != plan.board:
        raise FlashError("the board reports firmware {} for board {}, expected {} for {}"
                         .format(version, name, plan.version, plan.board))
    report.imported_version, report.board_name = version, name
    _restart(board, report, wait_s)
    if report.running_tree == "factory" and report.running_version != plan.version:
        raise FlashError("after the reset the controller runs firmware {}, expected {}"
                         .format(report.running_version, plan.version))
    report.seconds = time.monotonic() - t0
    return report


def _restart(board, report, wait_s):
    """Reset from the friendly REPL, watch the boot, and ask the controller what it runs."""
    prompt, text = board.reset_and_watch(wait_s)
    if "Traceback" in text:
        tail = text[text.index("Traceback"):].strip()
        raise FlashError("the controller failed to start after the reset:\n" + tail)
    if not prompt:
        # main.py holds the REPL, as on a real board: the version is confirmed over the host
        # link (--link); the import check before the reset is what the REPL can tell
        report.running = "booted without error; main.py holds the REPL (confirm the version with --link)"
        return
    # main.py returned to the prompt (the virtual board runs the controller as a task)
    got = board.running_version()
    if got is None:
        raise FlashError("after the reset the controller is not running (no station at the REPL)")
    report.running_version, report.running_tree = got
    if report.running_tree == "factory":
        report.running = "controller running firmware {} (asked at the REPL)".format(report.running_version)
    else:
        report.running = ("controller running firmware {} from update slot {} (the installed update "
                          "was kept; asked at the REPL)".format(report.running_version, report.running_tree))


def confirm_link(url, expected_version, timeout=10.0):
    """Ask the running controller over its host link for its hello; returns it. With
    expected_version None any version is taken (a reflash that changed nothing)."""
    from host_tools.link import LinkClient, LinkError
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            with LinkClient(url, heartbeat_s=None) as lk:
                hello = lk.hello(timeout=2.0)
            if expected_version is not None and hello.get("fw") != expected_version:
                raise FlashError("the controller says firmware {} over the link, expected {}"
                                 .format(hello.get("fw"), expected_version))
            return hello
        except LinkError as e:
            last = e
            time.sleep(0.3)
    raise FlashError("no hello from the controller on {}: {}".format(url, last))
