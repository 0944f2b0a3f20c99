"""Field buses: the SDM630 poll cycle over RS-485 and the CAN codec's speed in the VM.

Meter: the firmware's MeterTask (CPython) runs at its real step period, 50 ms, against
the pymodbus meter simulator over a line paced to 9600 baud 8N1: a pseudo-terminal
whose relay (host_tools.metersim.PacedLine) gives each byte its 1.04 ms on the one
shared wire and tells, as a UART's idle interrupt would, when the last byte arrived.
Measured: how often voltage and frequency are read (the cycle reads V, f and one further
block of a snapshot, one transaction per step: 150 ms at most) and how often a snapshot
completes (METER_POLL_MS, 500 ms), against the line's limit for one block: request +
reply + the two 3.5-character silences (computed), which must leave the meter time to
answer within the step. A bare pty, which ignores the baud rate, is timed as well: that
figure is software only.

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
from core.controller import CONTROL_PERIOD_MS  # noqa: E402

BAUD = 9600
POLL_MS = 500  # METER_POLL_MS default: one snapshot must fit well inside it


def wire_time_ms(blocks=mm.BLOCKS_SDM630, baud=BAUD):
    """The line's limit for one snapshot: request + reply + t3.5 silences, every block."""
    m = modbus.ModbusMaster(baud, 200)
    return sum(m.wire_time_us(count) for _start, count in blocks) / 1000.0


def block_time_ms(count=mm.BLOCKS_SDM630[0][1], baud=BAUD):
    """The line's limit for one read of `count` registers (the voltage block by default)."""
    return modbus.ModbusMaster(baud, 200).wire_time_us(count) / 1000.0


def paced_cycle(seconds=4.0, model="SDM630", in_steps=False):
    """MeterTask stepped every CONTROL_PERIOD_MS on a 9600-baud paced line, real time.

    Returns ({block start: [step times its request left, ms]}, [snapshot completion times, ms])
    after a one-second warm-up; in_steps: the steps' numbers instead of their times (what the
    task decided, free of the host's lateness: a step that comes late is followed by one that
    catches up, which would make a gap in ms look shorter than the task made it).
    """
    from app.meter import MeterTask
    from core import config
    from core.controller import Inputs
    from host_tools.metersim import MeterSim, PacedLine, ticks_us

    cfg = config.validate({"METER_MODEL": model, "METER_BAUD": BAUD})
    with PacedLine(cfg.meter_baud) as line:
        sim = MeterSim(line.meter_port, model=model, unit=cfg.meter_address, baud=cfg.meter_baud).start()
        try:
            sim.update(v1=230.0, i1=16.0, p1=3680.0, hz=50.0, import_kwh=10.0)
            task = MeterTask(line, cfg, ticks_us)
            inputs = Inputs()
            sent, snaps = {}, []
            period = CONTROL_PERIOD_MS / 1000.0
            t_start = t_next = time.monotonic()
            step = 0
            while time.monotonic() - t_start < seconds + 1.0:
                now_ms = (time.monotonic_ns() // 1_000_000) & 0x3FFFFFFF
                step += 1
                stamp = step if in_steps else now_ms
                tx = task.tx_bytes
                seq = task.reader.reading.seq
                task.step(now_ms, inputs, cfg)
                warm = time.monotonic() - t_start >= 1.0
                if warm and task.tx_bytes != tx:
                    m = task.master
                    sent.setdefault((m.tx[2] << 8) | m.tx[3], []).append(stamp)
                if warm and task.reader.reading.seq != seq:
                    snaps.append(stamp)
                t_next += period
                time.sleep(max(0.0, t_next - time.monotonic()))
            if inputs.meter_mv != 230000 or inputs.meter_mhz != 50000:
                raise RuntimeError("paced-line reads gave wrong values: {} mV {} mHz".format(
                    inputs.meter_mv, inputs.meter_mhz))
            if task.reader.snapshots_failed or task.master.stats.timeouts:
                raise RuntimeError("reads failed on the paced line: " + (task.failure() or "?"))
            return sent, snaps
        finally:
            sim.stop()


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


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
    limit = block_time_ms()
    out.append(("SDM630 voltage block at 9600 8N1: request + reply of {} registers + two t3.5 (computed); "
                "the meter answers within the step if it takes <= {} ms".format(
                    mm.BLOCKS_SDM630[0][1], CONTROL_PERIOD_MS - round(limit)), round(limit, 1), "ms",
                "<= {} ms ({} ms step - METER_REPLY_MS)".format(CONTROL_PERIOD_MS - mm.METER_REPLY_MS,
                                                               CONTROL_PERIOD_MS),
                limit <= CONTROL_PERIOD_MS - mm.METER_REPLY_MS))
    try:
        sent, snaps = paced_cycle()
        for start, what in ((mm.REG_V_L1, "voltage"), (mm.REG_FREQ, "frequency")):
            gaps = sorted(_gaps(sent[start]))
            p90 = gaps[len(gaps) * 9 // 10]
            out.append(("SDM630 {} read every, 90th percentile of {}: MeterTask at its {} ms step, 9600-baud "
                        "paced pty, pymodbus meter (real time on this host)".format(what, len(gaps), CONTROL_PERIOD_MS),
                        p90, "ms", "<= 3 steps ({} ms, host steps jitter a few ms)".format(3 * CONTROL_PERIOD_MS),
                        (p90 + CONTROL_PERIOD_MS // 2) // CONTROL_PERIOD_MS <= 3))
            out.append(("SDM630 {} read every, worst (a late host step or reply stretches one cycle)".format(what),
                        gaps[-1], "ms", "info", None))
        gaps = _gaps(snaps)
        out.append(("SDM630 snapshot (current, power, energy) every, median of {}: same line".format(len(gaps)),
                    _median(gaps), "ms", "METER_POLL_MS {} ms +- one cycle (150 ms)".format(POLL_MS),
                    abs(_median(gaps) - POLL_MS) <= 3 * CONTROL_PERIOD_MS))
    except Exception as e:  # the row says what failed rather than hiding it
        out.append(("SDM630 poll cycle over the paced line: " + str(e)[:80], None, "ms", "<= 150 ms", False))
    try:
        pty = pty_snapshot_ms()
        out.append(("SDM630 snapshot over a bare pty: firmware master (CPython) + pymodbus, baud not enforced "
                    "(software only)", round(pty, 1), "ms", "info", None))
    except Exception as e:
        out.append(("SDM630 snapshot over a bare pty: " + str(e)[:60], None, "ms", "info", False))
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
