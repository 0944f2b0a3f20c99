"""FOTA throughput over the host link, against the 115200-baud line rate.

A pseudo-terminal has no baud rate: bytes pass as fast as the two processes move them. So
two figures are measured on the virtual board (firmware on the MicroPython VM, in-process
host_tools.vboard) with a signed bundle of the firmware tree:

1. paced: the host holds its writes to 115200 baud (10 bits a byte, frames as sent:
   CBOR + CRC-32 + COBS + delimiter), as a UART would. Throughput = bundle bytes / wall time
   from the first chunk to the last acknowledgement; the figure is that rate as a share of
   the line rate (11 520 bytes/s). It includes the framing overhead, the chunk results'
   turnaround and the controller's 50 ms control step, which serves the link.
2. unpaced: the same push without pacing: how fast the controller takes chunks when the
   line is not the limit (bounded by window x chunk per 50 ms step); it must stay well above
   the line rate for figure 1 to hold. The VM runs plain bytecode about 15x faster than an
   STM32F405, so this says nothing precise about the board's CPU; see docs/updates.md.

The framing efficiency (bundle bytes / frame bytes) is the ceiling of figure 1.

Beside the measurement, a model of the pyboard's intake (not measured: the HAL runs only on
the board): the control step drains the link UART's buffer once per CONTROL_PERIOD_MS, so the
board takes at most buffer bytes x steps per second, which must exceed the line rate, and the
buffer must hold a whole window of the largest frames.

3. controller cost of one chunk: link deframing (COBS, CRC, CBOR), SHA-256, the file write
   and the reply, timed inside the VM (run mode) and scaled by 15 for an STM32F405; it must
   stay below the chunk's own time on the wire (about 83 ms at 115200 baud) for figure 1 to
   hold on the board.
"""

import re
import tempfile
import time
from pathlib import Path

from host_tools import fota, vboard, vm
from host_tools.link import LinkClient
from signing import bundle as sb
from signing import keys

BAUD = 115200
LINE_BPS = BAUD / 10
GOAL = 0.85


def _bundle(key, limit=120_000):
    comps, total = [], 0
    for src, dst in ((vm.FIRMWARE / "core", "core"), (vm.FIRMWARE / "app", "app")):
        for p in sorted(src.glob("*.py")):
            data = p.read_bytes()
            if total + len(data) > limit:
                break
            comps.append(("{}/{}".format(dst, p.name), data))
            total += len(data)
    return sb.sign(key, comps, 1, "bench", "sim", 0)


VM_CHUNK_COST = """
import time, hashlib
from app import update
from core import link as L
u = update.Updater('sim', root='/bench/', running='factory')
data = open('/bench/b.v2gb', 'rb').read()
n = 8 + int.from_bytes(data[4:8], 'big')
u.command('fota_begin', {'size': len(data), 'id': hashlib.sha256(data[:n]).digest()[:16]}, 0)
off = 0
while off < n:   # the head, with the signature check: not timed
    off = u.command('fota_chunk', {'off': off, 'data': data[off:off + 960]}, 0)[3]['next']
while u.dl.job is not None:   # the key load and the signature, one slice per control step
    u.tick(0, 0)
frames = []
while off < len(data):
    frames.append(L.encode_frame(L.cmd('b%d' % off, 'fota_chunk', {'off': off, 'data': data[off:off + 960]})))
    off += 960
out = []
lk = L.Link(out.append)
t = time.ticks_us()
for fr in frames:
    for msg in lk.feed(fr):
        lk.send(L.res_from(msg['txn'], u.command(msg['op'], msg['args'], 0)))
dt = time.ticks_diff(time.ticks_us(), t)
assert u.command('fota_finish', {'reboot': False}, 0)[0]
print('US_PER_CHUNK', dt // len(frames))
"""
HAL_PYBOARD = vm.BOARDS / "pyboard" / "hal.py"


def _hal_const(name):
    m = re.search(r"^{} = const\((\d+)\)".format(name), HAL_PYBOARD.read_text(), re.M)
    if not m:
        raise RuntimeError("{} not found in {}".format(name, HAL_PYBOARD))
    return int(m.group(1))


def model_rows():
    """The pyboard's link intake, modelled from its HAL constants (no board measured)."""
    vm.firmware_sys_path()
    from core.controller import CONTROL_PERIOD_MS
    buf = _hal_const("LINK_BUF")
    window = _hal_const("LINK_WINDOW_FRAMES") * _hal_const("LINK_FRAME_WIRE")
    steps = 1000 // CONTROL_PERIOD_MS
    intake = buf * steps
    return [
        ("FOTA pyboard link intake, MODEL ({} B buffer x {} steps/s)".format(buf, steps),
         round(100 * intake / LINE_BPS), "% of line rate", "> 100 %", intake > LINE_BPS),
        ("FOTA pyboard link buffer against one window, MODEL ({} x {} B frames)".format(
            fota.DEFAULT_WINDOW, _hal_const("LINK_FRAME_WIRE")), buf, "bytes",
         ">= {}".format(window), buf >= window and _hal_const("LINK_WINDOW_FRAMES") >= fota.DEFAULT_WINDOW),
    ]


BOARD_FACTOR = 15          # VM bytecode speed / STM32F405 (docs: micropython-vm notes)
CHUNK_WIRE_MS = 1024 / LINE_BPS * 1000


def _vm_chunk_us(data, key, tmp):
    d = Path(tmp) / "bench"
    d.mkdir()
    (d / "b.v2gb").write_bytes(data)
    (d / "update_key.bin").write_bytes(keys.device_public_key(key))
    out = vm.run_micropython(VM_CHUNK_COST, mounts=vm.firmware_mounts("sim", extra=[(d, "/bench")]),
                             timeout=300)
    for line in out.splitlines():
        if line.startswith("US_PER_CHUNK"):
            return int(line.split()[1])
    raise RuntimeError("no timing from the VM: " + out[-300:])


def _push(link, data, window, pace):
    rep = fota.transfer(link, data, window=window, pace_baud=pace)
    r = link.command("fota_abort", {})
    assert r.ok, r.msg
    return rep


def rows():
    key = keys.generate()
    data = _bundle(key)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        vboard.provision(state)
        (state / "update_key.bin").write_bytes(keys.device_public_key(key))
        board = vboard.VirtualBoard(state)
        eps = board.start()
        try:
            with LinkClient(eps["link"], heartbeat_s=1.0) as link:
                link.hello(10)
                paced = _push(link, data, fota.DEFAULT_WINDOW, BAUD)
                free = _push(link, data, fota.DEFAULT_WINDOW, None)
        finally:
            board.stop()
        chunk_us = _vm_chunk_us(data, key, tmp)
    board_ms = chunk_us * BOARD_FACTOR / 1000
    paced_bps = paced.size / paced.transfer_s
    share = paced_bps / LINE_BPS
    framing = paced.sent_bytes / paced.wire_bytes
    free_bps = free.size / free.transfer_s
    return [
        ("FOTA throughput at 115200 baud, paced ({} kB bundle, window {})".format(
            len(data) // 1000, fota.DEFAULT_WINDOW), round(100 * share, 1), "% of line rate",
         ">= 85 %", share >= GOAL),
        ("FOTA framing efficiency (bundle bytes / frame bytes)", round(100 * framing, 1), "%",
         "ceiling of the above", None),
        ("FOTA intake unpaced over the pty (virtual board)", round(free_bps / 1000, 1), "kB/s",
         "> 11.5 kB/s line rate", free_bps > LINE_BPS),
        ("FOTA controller cost per 960-byte chunk, VM", round(chunk_us / 1000, 2), "ms", "", None),
        ("FOTA controller cost per chunk, STM32F405 estimate (VM x {})".format(BOARD_FACTOR),
         round(board_ms, 1), "ms", "< {:.0f} ms (chunk time on the wire)".format(CHUNK_WIRE_MS),
         board_ms < CHUNK_WIRE_MS),
    ] + model_rows()


if __name__ == "__main__":
    t = time.monotonic()
    for r in rows():
        print(r)
    print("took {:.1f} s".format(time.monotonic() - t))
