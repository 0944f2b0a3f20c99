"""Firmware update end to end on the virtual board: push, reboot, trial, confirmation,
refusals, trial failures and power cuts.

The board runs in-process (host_tools.vboard.VirtualBoard) so that a test can cut its power
(kill the VM; the board then boots again, as after a watchdog reset). Its files are the
state folder, mirrored from the VM about every 0.3 s. To cut the power at a precise step,
the simulated board's flash dies at that step (fota_fault.json, read by boards/sim/power_cut.py
at boot, one-shot) and the power is cut once the mirror has caught up with the files as they
stand there.

The bundles are signed here (signing/) from the working tree's firmware with a changed
version string; the new firmware runs from the slot. Most carry only the app package, the
one that changes (app/station.py holds the version): the slot's app/ shadows the factory's,
core/ and board/ come from the factory tree (docs/updates.md). The board takes about one
1 kB chunk a control step, so the whole tree (core/, app/, board/ = boards/sim: 0.5 MB)
takes half a minute to send; one test sends it.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from host_tools import flash, fota, mpy_check, vboard, vm
from host_tools.link import LinkClient
from signing import bundle as sb
from signing import keys

OLD = "0.1.0"          # app/station.py FW_VERSION: the factory firmware
FAST = {"healthy_s": 2, "trial_s": 20}
WHOLE = ("core", "app", "board")
APP = ("app",)


def wait_until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "{} not within {} s".format(what, timeout)
        time.sleep(0.1)


def firmware_tree(version, station_patch=None, packages=APP):
    """The firmware as bundle components: (name, bytes) for the packages named (of core/,
    app/, board/)."""
    out = []
    host_only = flash.host_only(flash.load_board("sim"))     # v2g sim's driver: not on a board
    for src, dst in ((vm.FIRMWARE / "core", "core"), (vm.FIRMWARE / "app", "app"),
                     (vm.BOARDS / "sim", "board")):
        if dst not in packages:
            continue
        for p in sorted(src.glob("*.py")):
            if dst == "board" and p.name in host_only:
                continue
            data = p.read_bytes()
            if dst == "app" and p.name == "station.py":
                data = data.replace(b"FW_VERSION = '0.1.0'", "FW_VERSION = '{}'".format(version).encode())
                if station_patch:
                    data = station_patch(data)
            out.append(("{}/{}".format(dst, p.name), data))
    return out


@pytest.fixture(scope="module")
def key():
    return keys.generate()


@pytest.fixture(scope="module")
def new_bundle(key, tmp_path_factory):
    # compiled, as v2g flash lays the firmware: a third of the source's bytes on the line
    tree = compiled(firmware_tree("0.2.0"), tmp_path_factory.mktemp("new"))
    return sb.sign(key, tree, 5, "0.2.0", "sim", 1)


def compiled(components, tmp):
    """The components as the board takes them from `v2g flash`: each module through mpy-cross
    for the board's architecture (the whole tree as source is over a slot's 512 KiB)."""
    arch = flash.load_board("sim")["mpy_arch"]
    out = []
    for name, data in components:
        src = tmp / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        mpy = src.with_suffix(".mpy")
        subprocess.run([mpy_check.mpy_cross(), "-march=" + arch, "-s", name, "-o", str(mpy), str(src)],
                       check=True, capture_output=True)
        out.append((name[:-3] + ".mpy", mpy.read_bytes()))
    return out


@pytest.fixture(scope="module")
def whole_bundle(key, tmp_path_factory):
    tree = compiled(firmware_tree("0.2.0", packages=WHOLE), tmp_path_factory.mktemp("whole"))
    return sb.sign(key, tree, 5, "0.2.0", "sim", 1)


def give_key(state, key, tables=True):
    """The update key as `v2g flash --pubkey` lays it on a virtual board: with its comb tables,
    so the first update does not build them (350 control steps); tables=False: the board
    builds them itself."""
    for name, data in flash.key_files(keys.device_public_key(key), tables).items():
        (state / name).write_bytes(data)


class Board:
    """A virtual board with the factory firmware and the update key, its host link open."""

    def __init__(self, state, key, fault=None, tables=True):
        self.state = state
        self.lay_files(key, tables)
        if fault:
            (state / "fota_fault.json").write_text(json.dumps({"step": fault}))
        self.vb = vboard.VirtualBoard(state)
        self.eps = self.vb.start()
        self.hellos = []
        self.link = LinkClient(self.eps["link"], heartbeat_s=0.5)
        self.link.subscribe("hello", lambda m: self.hellos.append(m) if "fw" in m else None)
        self.link.open()
        self.hello(30)

    def lay_files(self, key, tables):
        vboard.provision(self.state)
        give_key(self.state, key, tables)

    def hello(self, timeout=30, after=None):
        """The next hello (a boot), or the current firmware's answer."""
        n = len(self.hellos) if after is None else after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.hellos) > n:
                return self.hellos[-1]
            if after is None:
                try:
                    return self.link.hello(1.0)
                except Exception:  # noqa: BLE001 - still booting
                    pass
            time.sleep(0.1)
        raise AssertionError("the board did not boot: no hello within {} s".format(timeout))

    def fw(self):
        return self.link.hello(3.0)["fw"]

    def status(self):
        return fota.status(self.link)

    def update_state(self):
        return json.loads((self.state / "update.json").read_text())

    def cut_power(self):
        """Cut the power once the files are mirrored; returns the hello of the next boot."""
        self.vb.sync()
        n = len(self.hellos)
        self.vb.power_cut()
        return self.hello(40, after=n)

    def wait_fault_hit(self, timeout=30):
        deadline = time.monotonic() + timeout
        while (self.state / "fota_fault.json").exists():
            assert time.monotonic() < deadline, "the fault step was never reached"
            time.sleep(0.1)

    def events(self):
        from host_tools import diag
        return [e[1] for e in diag.fetch_events(self.link)]     # every page of the log

    def close(self):
        self.link.close()
        self.vb.stop()


@pytest.fixture
def board(tmp_path, key):
    b = Board(tmp_path / "state", key)
    yield b
    b.close()


@pytest.fixture
def make_board(tmp_path, key):
    made = []

    def make(fault=None, tables=True):
        b = Board(tmp_path / "state{}".format(len(made)), key, fault, tables)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def confirmed_new(b, version="0.2.0"):
    st = fota.wait_trial_end(b.link, 60)
    assert st["version"] == version and st["running"] == st["active"] != "factory", st
    assert b.fw() == version
    return st


# -- the update itself ------------------------------------------------------------------------

def test_push_reboot_trial_confirm_and_report(make_board, key, whole_bundle):
    board = make_board(tables=False)      # the key alone: the board builds its tables
    assert board.fw() == OLD and not (board.state / flash.KEY_TABLE_FILE).exists()
    seen = []
    rep = fota.push(board.link, whole_bundle, progress=lambda d, t: seen.append(d), **FAST)
    assert rep.size == len(whole_bundle) and rep.resumed_from == 0 and seen[-1] == len(whole_bundle)
    # while the controller checks the head between its control steps, the sender asks with one
    # chunk at a time (held_waits), not the rest of the bundle to be held and sent again
    chunks = -(-len(whole_bundle) // fota.chunk_size(len(whole_bundle), board.link.max_frame))
    assert rep.held_waits > 0 and rep.go_backs == 0, rep
    assert rep.frames <= chunks + rep.held_waits + fota.DEFAULT_WINDOW, rep
    assert rep.slot == "a" and rep.version == "0.2.0"
    assert rep.running["running"] == "a" and rep.running["active"] == "a"
    assert rep.running["version"] == "0.2.0" and board.fw() == "0.2.0"
    st = board.update_state()
    assert st["seq"] == 5 and st["sec"] == 1 and st["pending"] is None   # counters raised
    assert board.link.command("diag", {}).data["fw"] == "0.2.0"
    # the tables the board built and kept are those the host computes for `v2g flash`
    tab = (board.state / flash.KEY_TABLE_FILE).read_bytes()
    assert tab == flash.key_tables(keys.device_public_key(key))
    # the next update goes to the other slot; the running one stays. It carries the app
    # package alone: core/ and board/ come from the factory tree
    b2 = sb.sign(key, firmware_tree("0.3.0"), 6, "0.3.0", "sim", 1)
    rep = fota.push(board.link, b2, **FAST)
    assert rep.slot == "b" and board.fw() == "0.3.0"
    assert (board.state / "slots" / "a" / "app" / "station.mpy").exists()
    assert (board.state / "slots" / "a" / "core" / "controller.mpy").exists()
    assert (board.state / "slots" / "b" / "app" / "station.py").exists()
    assert not (board.state / "slots" / "b" / "core").exists()


def test_the_update_history_is_in_the_event_log_and_a_refusal_is_one_event(board, key, new_bundle):
    from host_tools import diag
    n = len(diag.fetch_events(board.link))
    bad = bytearray(new_bundle)
    bad[20] ^= 1                        # the key id: refused at the head, with chunks in flight
    with pytest.raises(fota.FotaError):
        fota.push(board.link, bytes(bad), window=8, **FAST)
    # V2G-110 (a slow host link round trip) comes and goes with the host machine's load
    evs = [diag.event_dict(e) for e in diag.fetch_events(board.link)[n:]]
    evs = [e for e in evs if e["code"] != "V2G-110"]
    assert [e["code"] for e in evs] == ["V2G-601"], evs
    assert diag.event_kind(evs[0]) == "update"
    fota.push(board.link, new_bundle, **FAST)
    hist = [e for e in map(diag.event_dict, diag.fetch_events(board.link)) if diag.event_kind(e) == "update"]
    assert [e["msg"] for e in hist[1:]] == [
        "update 0.2.0 installed in slot a (sequence 5) over 0.1.0: pending its trial",
        "update 0.2.0 confirmed in slot a (sequence 5)"]
    assert hist[2]["boot"] == hist[1]["boot"] + 1     # installed, reset, confirmed on the next boot


def _refused_untouched(b, data, code, what):
    before = b.status()
    with pytest.raises(fota.FotaError) as e:
        fota.push(b.link, data, **FAST)
    assert e.value.code == code and what in str(e.value), str(e.value)
    after = b.status()
    assert after["running"] == before["running"] and after["version"] == before["version"]
    assert after["active"] == before["active"] and after["pending"] is None and "dl" not in after
    assert b.fw() == before["version"]


def test_every_refusal_leaves_the_running_firmware(board, key, new_bundle):
    n = 8 + int.from_bytes(new_bundle[4:8], "big")
    bad_sig = bytearray(new_bundle)
    bad_sig[n - 5] ^= 1
    _refused_untouched(board, bytes(bad_sig), "V2G-601", "signature")
    bad_body = bytearray(new_bundle)
    bad_body[n + 5000] ^= 1
    _refused_untouched(board, bytes(bad_body), "V2G-601", "digest")
    other = sb.sign(key, firmware_tree("0.2.0"), 5, "0.2.0", "pyboard", 1)
    _refused_untouched(board, other, "V2G-601", "board")
    stranger = sb.sign(keys.generate(), firmware_tree("0.2.0"), 5, "0.2.0", "sim", 1)
    _refused_untouched(board, stranger, "V2G-601", "kid")
    fota.push(board.link, new_bundle, **FAST)               # sequence 5, counter 1 installed
    _refused_untouched(board, new_bundle, "V2G-602", "rollback")
    older = sb.sign(key, firmware_tree("0.1.9"), 9, "0.1.9", "sim", 0)
    _refused_untouched(board, older, "V2G-602", "security counter")
    assert board.fw() == "0.2.0"


def test_endless_stream_refused(board, new_bundle):
    fota.transfer(board.link, new_bundle)
    r = board.link.command("fota_chunk", {"off": len(new_bundle), "data": b"\0" * 500})
    assert not r.ok and r.code == "V2G-601" and r.msg.startswith("trailing")
    st = board.status()
    assert "dl" not in st and st["pending"] is None and board.fw() == OLD


def test_cli_json_report(board, new_bundle, tmp_path):
    from click.testing import CliRunner

    from host_tools.commands.fota import cli
    path = tmp_path / "u.v2gb"
    bad = bytearray(new_bundle)
    bad[-1] ^= 1
    path.write_bytes(bytes(bad))
    board.link.close()     # the command opens the port itself
    res = CliRunner().invoke(cli, ["--port", board.eps["link"], "--json", str(path)])
    assert res.exit_code == 1, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["ok"] is False and out["code"] == "V2G-601" and "digest" in out["error"]


# -- trial failures revert (V2G-603) ------------------------------------------------------------

def _crash(data):
    return data.replace(b"        self.hal = hal\n", b"        raise RuntimeError('broken build')\n", 1)


def _hang(data):
    # hangs after 2 s of running. A hang blocks the VM's file mirror too, so on the virtual
    # board a write made just before it would be lost (on a board it is on flash at once):
    # the 2 s let boot.py's count of the try reach the state folder first.
    return data.replace(b"    def tick(self, now_ms):\n",
                        b"    def tick(self, now_ms):\n"
                        b"        self._n = getattr(self, '_n', 0) + 1\n"
                        b"        while self._n > 40:\n            pass\n", 1)


@pytest.mark.parametrize("patch", [_crash, _hang], ids=["crash", "hang"])
def test_crashing_or_hanging_trial_reverts(board, key, patch):
    bad = sb.sign(key, firmware_tree("0.2.0", patch), 5, "0.2.0", "sim", 1)
    fota.transfer(board.link, bad)
    # a health check longer than the 3 s each trial boot gets here: on a busy machine the
    # hanging build's 40 steps take longer than 2 s, and with FAST's 2 s it confirmed first
    fota.finish(board.link, tries=2, healthy_s=10, trial_s=20)
    # two trial boots that never start the station: the watchdog (a power cut here) resets
    for _ in range(2):
        time.sleep(3)
        assert not board.hellos or board.hellos[-1]["fw"] in (OLD, "0.2.0")
        n = len(board.hellos)
        board.vb.power_cut()
    hello = board.hello(40, after=n)
    assert hello["fw"] == OLD
    st = board.status()
    assert st["running"] == "factory" and st["pending"] is None and st["seq"] == 0
    assert "V2G-603" in board.events()


def _import_crash(data):
    return data + b"\nraise RuntimeError('slot code broken at import')\n"


def test_trial_failing_at_import_reverts_by_itself(board, key):
    # app/station.py of the slot raises while main.py imports the application, before any HAL
    # exists: main.py's guard resets the board (no power cut from the test), boot.py counts
    # each try and reverts after the second
    bad = sb.sign(key, firmware_tree("0.2.0", _import_crash), 5, "0.2.0", "sim", 1)
    fota.transfer(board.link, bad)
    n = len(board.hellos)
    fota.finish(board.link, tries=2, **FAST)
    hello = board.hello(60, after=n)
    assert hello["fw"] == OLD
    st = board.status()
    assert st["running"] == "factory" and st["pending"] is None and st["seq"] == 0
    assert board.vb.boots == 4           # start, finish, two trial resets of its own
    assert "V2G-603" in board.events()


def test_failed_health_check_reverts(board, new_bundle):
    fota.transfer(board.link, new_bundle)
    n = len(board.hellos)
    boots = board.vb.boots
    fota.finish(board.link, tries=1, trial_s=5, healthy_s=2)
    board.link.close()                 # no host: the trial never sees a healthy link
    # the trial boot, then (5 s on) the reset into the reverted firmware: the second boot
    wait_until(lambda: board.vb.boots >= boots + 2, 60, "the reset after the failed trial")
    board.link = LinkClient(board.eps["link"], heartbeat_s=0.5).open()
    assert board.hello(30)["fw"] == OLD
    st = board.status()
    assert st["running"] == "factory" and st["pending"] is None
    assert board.events().count("V2G-603") >= 1
    assert n >= 1


# -- a damaged confirmed slot falls back (V2G-604) ---------------------------------------------

def test_damaged_confirmed_slot_falls_back_to_the_factory_firmware(board, new_bundle):
    fota.push(board.link, new_bundle, **FAST)
    confirmed_new(board)
    board.vb.sync()               # the confirmation is in the state folder
    # flash damage in the running slot, then a reset: boot.py finds the module cut short
    # against the slot's file list before importing it (a .mpy cut short hangs MicroPython's
    # loader), records the failed start and runs the factory firmware on the same boot
    station = board.state / "slots" / "a" / "app" / "station.mpy"
    data = station.read_bytes()
    station.write_bytes(data[:len(data) // 2])
    boots = board.vb.boots
    n = len(board.hellos)
    board.vb.power_cut()
    hello = board.hello(60, after=n)
    assert hello["fw"] == OLD
    assert board.vb.boots == boots + 1     # no boot into the damaged slot
    st = board.status()
    assert st["running"] == "factory" and st["active"] == "factory" and st["pending"] is None
    assert st["seq"] == 5 and st["sec"] == 1                  # the counters stay where they were
    fs = st["failed_start"]
    assert fs == {"slot": "a", "version": "0.2.0", "reason": "app/station.mpy damaged"}, fs
    from host_tools import diag
    events = diag.fetch_events(board.link)       # every page of the log
    v604 = [e for e in events if e[1] == "V2G-604"]
    assert len(v604) == 1 and "slot a (0.2.0) failed to start" in v604[0][3], events
    time.sleep(2)
    assert board.vb.boots == boots + 1 and board.fw() == OLD   # it stays up: no reset loop


# -- power cuts: the board boots the old or the new firmware, never neither -----------------

def test_power_cut_during_transfer(board, new_bundle):
    # 8 chunks in flight overrun the board's 4 kB receive buffer: the lost ones are sent again
    # from the last acknowledged offset
    fota.transfer(board.link, new_bundle, window=8, stop_at=len(new_bundle) // 2)
    assert board.cut_power()["fw"] == OLD
    dl = board.status()["dl"]
    assert 0 < dl["next"] <= len(new_bundle) // 2 + 1000
    rep = fota.push(board.link, new_bundle, **FAST)
    assert rep.resumed_from == dl["next"]
    confirmed_new(board)


def test_power_cut_during_write(make_board, new_bundle):
    b = make_board("write")
    with pytest.raises(fota.FotaError):
        fota.transfer(b.link, new_bundle, timeout=2, max_timeouts=1)
    b.wait_fault_hit()
    assert b.cut_power()["fw"] == OLD
    rep = fota.push(b.link, new_bundle, **FAST)
    assert 0 < rep.resumed_from < len(new_bundle)
    confirmed_new(b)


def test_power_cut_during_state_update(make_board, new_bundle):
    b = make_board("state")
    fota.transfer(b.link, new_bundle)
    with pytest.raises(fota.FotaError):
        fota.finish(b.link, **FAST)
    b.wait_fault_hit()
    b.vb.sync()
    assert (b.state / "update.json.tmp").exists()
    assert b.update_state()["pending"] is None
    assert b.cut_power()["fw"] == OLD
    rep = fota.push(b.link, new_bundle, **FAST)
    assert rep.resumed_from == len(new_bundle)
    confirmed_new(b)


def test_power_cut_during_trial_boot(make_board, new_bundle):
    b = make_board("trial")
    fota.transfer(b.link, new_bundle)
    n = len(b.hellos)
    fota.finish(b.link, **FAST)
    assert b.hello(40, after=n)["fw"] == "0.2.0"       # on trial, not confirming
    b.wait_fault_hit()
    assert b.update_state()["tries"] == 2
    assert b.cut_power()["fw"] == "0.2.0"              # the next try
    assert b.status()["tries"] == 1
    confirmed_new(b)


def test_power_cut_during_confirmation(make_board, new_bundle):
    b = make_board("confirm")
    fota.transfer(b.link, new_bundle)
    n = len(b.hellos)
    fota.finish(b.link, **FAST)
    assert b.hello(40, after=n)["fw"] == "0.2.0"
    b.wait_fault_hit()
    b.vb.sync()
    assert (b.state / "update.json.tmp").exists() and b.update_state()["pending"] == "a"
    assert b.cut_power()["fw"] == "0.2.0"              # not confirmed yet: trial again
    st = confirmed_new(b)
    assert st["seq"] == 5


def test_no_slot_files_survive_as_running_after_cut_in_transfer_files(board, new_bundle):
    # a cut with a half-written slot: boot.py must not pick the incomplete slot
    fota.transfer(board.link, new_bundle, stop_at=len(new_bundle) - 2000)
    assert board.cut_power()["fw"] == OLD
    assert board.status()["running"] == "factory"
    assert Path(board.state / "slots" / "a").is_dir()


# -- from the bridge: OCPP UpdateFirmware ----------------------------------------------------

def test_bridge_updater_reports_firmware_status(board, key, new_bundle, tmp_path):
    import asyncio

    from host_tools.bridge.alink import AsyncLink
    good = tmp_path / "good.v2gb"
    good.write_bytes(new_bundle)
    forged = tmp_path / "forged.v2gb"
    forged.write_bytes(sb.sign(keys.generate(), firmware_tree("0.2.0"), 5, "0.2.0", "sim", 1))
    board.link.close()

    async def run():
        alink = AsyncLink(board.eps["link"], heartbeat_s=0.5)
        await alink.open()
        try:
            update = fota.bridge_updater(alink, **FAST)
            seen = {}
            for name, path in (("forged", forged), ("missing", tmp_path / "none.v2gb"), ("good", good)):
                seen[name] = []

                async def report(status, lst=seen[name]):
                    lst.append(status)
                await update({"location": path.as_uri()}, report)
            return seen
        finally:
            await alink.close()
    seen = asyncio.run(run())
    # L01: the signature is checked before anything is installed
    assert seen["forged"] == ["Downloading", "Downloaded", "InvalidSignature"]
    assert seen["missing"] == ["Downloading", "DownloadFailed"]
    assert seen["good"] == ["Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting",
                            "Installed"]
    board.link = LinkClient(board.eps["link"], heartbeat_s=0.5).open()
    assert board.fw() == "0.2.0"
