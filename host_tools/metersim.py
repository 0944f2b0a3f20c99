"""Eastron SDM630 / SDM120 energy meter simulator: a Modbus RTU slave on a serial port.

Built on pymodbus' simulator datastore (SimDevice/SimData); it runs its own asyncio
loop in a thread so the plant model (or a test) can push new values at any time:

    sim = MeterSim("/dev/pts/7", model="SDM630", unit=1, baud=38400)
    sim.start()
    sim.update(v1=230.0, i1=16.0, p1=3680.0, hz=50.0, import_kwh=12.5)
    sim.fault = "crc"            # None, "timeout", "crc" or "exception"
    sim.exception_code = 4
    sim.stop()

Like a real meter and unlike pymodbus' default, it stays silent for other unit ids
(pymodbus alone would answer exception 04 for an unknown id). Values are float32,
high word first, in the meters' own units (V, A, W, Hz, kWh).

Run alone: python -m host_tools.metersim --port /dev/pts/N [--model SDM120] [--unit 1]
[--baud 9600]. The baud defaults to the firmware's METER_BAUD default (38400): a meter
simulator on a real serial adapter must run at the controller's METER_BAUD.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import threading
import time

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

DEFAULT_BAUD = 38400  # the firmware's METER_BAUD default (firmware/core/config.py)
N_REGS = 0x50  # 0x0000..0x004F: every value either model exposes for a snapshot

# Input register address of each value (Eastron's 3xxxx numbering minus 30001).
SDM630_REGS = {
    "v1": 0x00, "v2": 0x02, "v3": 0x04,
    "i1": 0x06, "i2": 0x08, "i3": 0x0A,
    "p1": 0x0C, "p2": 0x0E, "p3": 0x10,
    "pf1": 0x1E, "pf2": 0x20, "pf3": 0x22,
    "p_total": 0x34, "pf_total": 0x3E,
    "hz": 0x46, "import_kwh": 0x48, "export_kwh": 0x4A,
}
SDM120_REGS = {
    "v1": 0x00, "i1": 0x06, "p1": 0x0C, "pf1": 0x1E,
    "hz": 0x46, "import_kwh": 0x48, "export_kwh": 0x4A,
}
MODELS = {"SDM630": SDM630_REGS, "SDM120": SDM120_REGS}
FAULTS = (None, "timeout", "crc", "exception")


class MeterSim:
    def __init__(self, port: str, model: str = "SDM630", unit: int = 1, baud: int = DEFAULT_BAUD):
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, not {model!r}")
        if not 1 <= unit <= 247:
            raise ValueError(f"unit must be 1..247, not {unit}")
        self.port = port
        self.model = model
        self.unit = unit
        self.baud = baud
        self.regmap = MODELS[model]
        self._regs = [0] * N_REGS
        self._lock = threading.Lock()
        self._fault: str | None = None
        self.exception_code = int(ExcCodes.DEVICE_FAILURE)
        self.requests = 0  # requests addressed to us
        self.replies = 0  # replies actually sent (after fault injection)
        self.foreign = 0  # requests for other unit ids, left unanswered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusSerialServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.update(v1=230.0, hz=50.0)
        if model == "SDM630":
            self.update(v2=230.0, v3=230.0)

    # -- values -------------------------------------------------------------
    def update(self, **values: float) -> None:
        """Set any of the model's values (SI units, kWh for energy); unknown names are refused whole.

        On the SDM630, p_total follows p1+p2+p3 unless given.
        """
        for k in values:
            if k not in self.regmap:
                raise ValueError(f"{self.model} has no value {k!r}; it has {sorted(self.regmap)}")
        with self._lock:
            for k, v in values.items():
                self._put(self.regmap[k], float(v))
            if self.model == "SDM630" and "p_total" not in values and {"p1", "p2", "p3"} & values.keys():
                total = sum(self._get(self.regmap[p]) for p in ("p1", "p2", "p3"))
                self._put(self.regmap["p_total"], total)

    def value(self, name: str) -> float:
        with self._lock:
            return self._get(self.regmap[name])

    def _put(self, reg: int, v: float) -> None:
        hi, lo = struct.unpack(">HH", struct.pack(">f", v))
        self._regs[reg] = hi
        self._regs[reg + 1] = lo

    def _get(self, reg: int) -> float:
        return struct.unpack(">f", struct.pack(">HH", self._regs[reg], self._regs[reg + 1]))[0]

    # -- faults -------------------------------------------------------------
    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, kind: str | None) -> None:
        if kind not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {kind!r}")
        self._fault = kind

    async def _action(self, func_code, start_address, address, count, registers, set_values):
        # Called by pymodbus for every valid request to our unit: refresh its view of
        # the registers from the live values, then answer or refuse.
        self.requests += 1
        if func_code != 4 or set_values:
            return ExcCodes.ILLEGAL_FUNCTION  # the meter's values are input registers only
        if self._fault == "exception":
            return ExcCodes(self.exception_code)
        with self._lock:
            registers[0:N_REGS] = self._regs
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if data and data[0] != self.unit:
            self.foreign += 1
            return b""  # a request for another meter on the line: not ours to answer
        if self._fault == "timeout":
            return b""  # stop answering
        if self._fault == "crc" and len(data) >= 2:
            data = data[:-1] + bytes([data[-1] ^ 0xA5])
        if data:
            self.replies += 1
        return data

    # -- running ------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> "MeterSim":
        self._thread = threading.Thread(target=self._run, name="metersim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"meter simulator did not start on {self.port}")
        if self._error:
            raise RuntimeError(f"meter simulator could not open {self.port}: {self._error}")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        device = SimDevice(
            id=self.unit,
            simdata=[SimData(address=0, count=N_REGS, values=0, datatype=DataType.REGISTERS)],
            action=self._action,
        )
        # id 0 catches every other unit id; its replies are dropped in _trace_packet, so
        # the line stays silent as with a real meter (pymodbus alone answers exception 04).
        others = SimDevice(id=0, simdata=[SimData(address=0, count=N_REGS, values=0,
                                                  datatype=DataType.REGISTERS)])
        self._server = ModbusSerialServer(
            [device, others], port=self.port, baudrate=self.baud, bytesize=8, parity="N", stopbits=1,
            ignore_missing_devices=True, trace_packet=self._trace_packet,
        )
        await self._server.serve_forever(background=True)
        self._ready.set()
        await self._server.serving

    def stop(self) -> None:
        if self._loop and self._server and self._thread and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            try:
                fut.result(timeout=5)
            except Exception:
                pass
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class PacedLine:
    """An RS-485 line at `baud` between an in-process controller port and a meter on a pty.

    A pseudo-terminal moves bytes as fast as the kernel copies them and ignores the baud
    rate. This line gives every byte its time on the one shared (half-duplex) wire,
    bits_per_char / baud, and hands it to the other side only once its stop bit is
    through, so the meter sees a request and the controller a reply when a UART would.

    Meter side: `line.meter_port`, a pty path for MeterSim or any Modbus RTU slave.
    Controller side: the line itself offers the board HAL's rs485 interface (open, write,
    tx_done, readinto, rx_idle_us), so the firmware's MeterTask runs on it unchanged.
    `line.spans` records (request start, last reply byte) per request, host clock.
    """

    def __init__(self, baud: int = DEFAULT_BAUD, bits_per_char: int = 10):
        if not 1200 <= baud <= 115200:
            raise ValueError(f"baud must be 1200..115200, not {baud}")
        if bits_per_char not in (10, 11):
            raise ValueError(f"bits_per_char must be 10 (8N1) or 11 (8E1/8N2), not {bits_per_char}")
        import collections
        import os
        import tty

        self.baud = baud
        self.char_s = bits_per_char / baud
        self._fd, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._fd, False)
        self.meter_port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._wire_free = 0.0
        self._tx_end = 0.0
        self._to_meter: collections.deque = collections.deque()  # (due, byte)
        self._to_ctl: collections.deque = collections.deque()    # (due, byte)
        self.spans: list[list[float]] = []
        self._rx_end: float | None = None      # when the last byte handed over had arrived
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-line", daemon=True)
        self._thread.start()

    def _slots(self, n: int, now: float) -> list[float]:
        # the wire carries one byte at a time, whichever side sends it
        start = max(now, self._wire_free)
        due = [start + (i + 1) * self.char_s for i in range(n)]
        self._wire_free = due[-1]
        return due

    # -- the controller's side: the HAL rs485 interface ---------------------
    def open(self, baud: int) -> None:
        if baud != self.baud:
            raise ValueError(f"the line runs at {self.baud} baud; the controller asked for {baud}")

    def write(self, buf, n: int) -> None:
        import os

        data = bytes(buf[:n])
        with self._lock:
            now = time.monotonic()
            due = self._slots(len(data), now)
            self._to_meter.extend(zip(due, data))
            self._tx_end = due[-1]
            self.spans.append([due[0] - self.char_s, None])
        os.write(self._wake_w, b"w")

    def tx_done(self) -> bool:
        return time.monotonic() >= self._tx_end

    def readinto(self, buf) -> int:
        now = time.monotonic()
        n = 0
        with self._lock:
            q = self._to_ctl
            while q and q[0][0] <= now and n < len(buf):
                self._rx_end = q[0][0]
                buf[n] = q.popleft()[1]
                n += 1
        return n

    def rx_idle_us(self) -> int | None:
        """ticks_us() (below) of the end of the last byte read: what a UART's idle interrupt tells."""
        return None if self._rx_end is None else int(self._rx_end * 1_000_000) & 0x3FFFFFFF

    # -- the relay ----------------------------------------------------------
    def _run(self) -> None:
        import os
        import select

        while not self._stop.is_set():
            with self._lock:
                nxt = self._to_meter[0][0] if self._to_meter else None
            wait = 0.05 if nxt is None else max(0.0, nxt - time.monotonic())
            try:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [], wait)
            except (OSError, ValueError):
                return   # closed under us: stop() is running
            now = time.monotonic()
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            if self._fd in ready:
                try:
                    data = os.read(self._fd, 4096)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    with self._lock:
                        due = self._slots(len(data), now)
                        self._to_ctl.extend(zip(due, data))
                        if self.spans:
                            self.spans[-1][1] = due[-1]
            out = bytearray()
            with self._lock:
                q = self._to_meter
                while q and q[0][0] <= now:
                    out.append(q.popleft()[1])
            if out:
                try:
                    os.write(self._fd, bytes(out))
                except OSError:
                    return

    def close(self) -> None:
        import os

        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        for fd in (self._fd, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ticks_us() -> int:
    """A MicroPython-style microsecond tick (wraps at 2**30) from the host clock (time.monotonic)."""
    return (time.monotonic_ns() // 1000) & 0x3FFFFFFF


def drive_snapshot(fd: int, reader, timeout_s: float = 5.0) -> bool:
    """Run one firmware MeterReader snapshot over a pty/serial file descriptor under CPython.

    This is the shell's byte pump (UART <-> ModbusMaster) for tests and the bench.
    Returns True if a complete snapshot replaced reader.reading.
    """
    import os

    master = reader.master
    if not reader.start(time.monotonic_ns() // 1_000_000):
        raise RuntimeError("meter reader busy")
    deadline = time.monotonic() + timeout_s
    done = False
    while reader.busy():
        if time.monotonic() > deadline:
            raise TimeoutError("snapshot did not finish; the master's own timeout should have ended it")
        n = master.tx_ready(ticks_us())
        if n:
            os.write(fd, bytes(master.tx[:n]))
            master.sent(ticks_us())
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            data = b""
        if data:
            master.feed(data, len(data), ticks_us())
        r = master.poll(ticks_us())
        if r != 1:  # modbus.BUSY
            done = reader.on_result(r, time.monotonic_ns() // 1_000_000)
        elif not data:
            time.sleep(0.0002)
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Eastron SDM630/SDM120 Modbus RTU meter simulator")
    ap.add_argument("--port", required=True, help="serial port or pseudo-terminal, e.g. /dev/pts/7")
    ap.add_argument("--model", default="SDM630", choices=sorted(MODELS))
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                    help="line speed, the controller's METER_BAUD (default %(default)s)")
    args = ap.parse_args(argv)
    with MeterSim(args.port, args.model, args.unit, args.baud):
        print(f"{args.model} unit {args.unit} answering on {args.port} at {args.baud} baud; Ctrl-C stops")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
