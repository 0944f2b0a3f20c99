"""Field buses: one SDM630 snapshot over RS-485 and the CAN codec's speed in the VM.

Meter: the firmware Modbus master runs under CPython and reads the pymodbus meter
simulator over a pseudo-terminal pair. A pty moves bytes as fast as the kernel
copies them and ignores the baud rate, so the measured time is protocol + Python
overhead, not wire time. The physical floor for the same bytes at 9600 baud 8N1
(10 bits per character) is computed beside it: request + reply + the 3.5-character
silences, for both transactions; a real SDM630 adds its own reply latency on top
(Eastron does not publish it; tens of ms is typical), so the wire floor is a lower bound.

CAN: frames decoded (checksum, counter, range checks, unpack) per second by the
receiver in the MicroPython VM. The VM runs plain bytecode about 10-20x faster
than an STM32F405 at 168 MHz (shared notes); divide by about 15 for the board.
"""

import os
import time
import tty

from host_tools import vm

vm.firmware_sys_path("sim")

from core import meter_map as mm  # noqa: E402
from core import modbus  # noqa: E402

BAUD = 9600
POLL_MS = 500  # METER_POLL_MS default: one snapshot must fit well inside it
CONTROL_PERIOD_MS = 50


def wire_time_ms(blocks=mm.BLOCKS_SDM630, baud=BAUD):
    m = modbus.ModbusMaster(baud, 200)
    return sum(m.wire_time_us(count) for _start, count in blocks) / 1000.0


def pty_snapshot_ms(n=20):
    from host_tools.metersim import MeterSim, drive_snapshot

    fd, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(fd, False)
    sim = MeterSim(os.ttyname(slave), model="SDM630", unit=1, baud=BAUD).start()
    try:
        sim.update(v1=230.0, i1=16.0, p1=3680.0, hz=50.0, import_kwh=10.0)
        rd = mm.MeterReader(modbus.ModbusMaster(BAUD, 300), mm.SDM630, 1)
        drive_snapshot(fd, rd)  # warm up
        times = []
        for _ in range(n):
            t = time.perf_counter()
            ok = drive_snapshot(fd, rd)
            times.append((time.perf_counter() - t) * 1000)
            if not ok:
                raise RuntimeError("snapshot failed during the benchmark")
        times.sort()
        return times[len(times) // 2]
    finally:
        sim.stop()
        os.close(fd)
        os.close(slave)


VM_CODE = """
import time
from core import can_msgs as cm
tx = cm.CanTx()
o = tx.vcu_power_request
frames = []
# BMS status frames with advancing counters, built by the firmware's own packer
s = cm.BmsStatus()
for i in range(16):
    s.soc_pm = 500 + i; s.counter = i; s.pack_voltage_mv = 400000; s.pack_current_ma = -20000
    s.temp_max_dc = 250
    d = bytearray(8); cm.pack_bms_status(s, d); frames.append(d)
rx = cm.CanRx()
N = 20000
t0 = time.ticks_ms()
for i in range(N):
    rx.feed(0x601, frames[i & 15], 8, i)
dt = time.ticks_diff(time.ticks_ms(), t0)
assert rx.stats.rx_ok == N, rx.stats.rx_ok
print(N, dt)
"""


def vm_can_decode():
    out = vm.run_micropython(VM_CODE, timeout=120)
    n, dt = (int(x) for x in out.strip().splitlines()[-1].split())
    dt = max(dt, 1)
    return n * 1000.0 / dt, dt * 1000.0 / n


def rows():
    out = []
    wire = wire_time_ms()
    out.append(("SDM630 snapshot wire floor at 9600 8N1 (2 requests, 54+6 registers, t3.5 gaps; computed)",
                round(wire, 1), "ms", "< {} ms poll".format(POLL_MS), wire < POLL_MS))
    try:
        pty = pty_snapshot_ms()
        out.append(("SDM630 snapshot over a pty: firmware master (CPython) + pymodbus (baud not enforced)",
                    round(pty, 1), "ms", "info", None))
        out.append(("pty time / wire floor (below 1: the pty measures software, not the line)",
                    round(pty / wire, 3), "ratio", "info", None))
    except Exception as e:  # the row says what failed rather than hiding it
        out.append(("SDM630 snapshot over a pty: " + str(e)[:60], None, "ms", "info", False))
    try:
        fps, us = vm_can_decode()
        out.append(("BMS status frames decoded per second, MicroPython VM", round(fps), "frames/s",
                    ">= 1000 (10 frames/100 ms x 100 margin)", fps >= 1000))
        out.append(("us per decoded frame, MicroPython VM (x~15 for an STM32F405)", round(us, 2), "us",
                    "< {} us (1 % of a control step at x15)".format(CONTROL_PERIOD_MS * 10 // 15),
                    us * 15 < CONTROL_PERIOD_MS * 10))
    except vm.VmMissing as e:
        out.append(("CAN decode in the MicroPython VM: " + str(e)[:60], None, "frames/s", "info", None))
    return out


if __name__ == "__main__":
    for r in rows():
        print(r)
