"""A serial-line CAN (Lawicel / slcan) adapter on a pseudo-terminal, joined to an in-process bus.

    bus = CanBus(bitrate=500000)
    bus.attach(lambda frame: ...)              # the firmware's CAN port, the plant, a logger...
    ep = SlcanEndpoint(bus).start()
    # any slcan client now joins the bus, e.g. python-can:
    #   can.Bus(interface="slcan", channel=ep.port_name, bitrate=500000, sleep_after_open=0)

Protocol spoken (ASCII commands ending in CR; reply CR = ok, BEL = error):
  O / L / C       open, open listen-only, close
  S0..S8          bit rate 10k,20k,50k,100k,125k,250k,500k,750k,1M (only while closed)
  sxxyy           SJA1000 BTR0/BTR1 (accepted, bit rate treated as unknown)
  tiiil<data>     11-bit frame      Tiiiiiiiil<data>  29-bit frame
  riiil           11-bit remote     Riiiiiiiil        29-bit remote
  V / N           version "V1013", serial number "NV2G0"
  F               status flags as two hex digits (0x80 bus error: bit rate differs from the bus)
  Z0 / Z1         time stamps off/on: received frames carry 4 hex digits of ms (0..59999)
A sent frame is acknowledged with "z" (11-bit) or "Z" (29-bit) as Lawicel adapters do.
Frames from the bus reach the client only while the channel is open and its bit rate
matches the bus; the endpoint's own frames never come back to it.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from typing import Callable, NamedTuple

BITRATES = {0: 10000, 1: 20000, 2: 50000, 3: 100000, 4: 125000, 5: 250000, 6: 500000, 7: 750000, 8: 1000000}
OK = b"\r"
BELL = b"\x07"
VERSION = b"V1013"
SERIAL = b"NV2G0"
FLAG_BUS_ERROR = 0x80
FLAG_RX_OVERRUN = 0x08
MAX_LINE = 64  # the longest valid command (T + 8 id + 1 dlc + 16 data) is 26 characters


class CanFrame(NamedTuple):
    can_id: int
    data: bytes = b""
    extended: bool = False
    remote: bool = False
    dlc: int | None = None  # remote frames carry a length and no data

    @property
    def length(self) -> int:
        return self.dlc if self.dlc is not None else len(self.data)


def check_frame(f: CanFrame) -> None:
    """Raise ValueError naming what is wrong with a classic CAN frame."""
    limit = 0x1FFFFFFF if f.extended else 0x7FF
    if not 0 <= f.can_id <= limit:
        raise ValueError(f"CAN id 0x{f.can_id:X} out of range for a {'29' if f.extended else '11'}-bit frame")
    if len(f.data) > 8 or not 0 <= f.length <= 8:
        raise ValueError(f"CAN frame length {f.length} out of 0..8")
    if f.remote and f.data:
        raise ValueError("a remote frame carries no data")


class CanBus:
    """An in-process CAN bus: every attached listener gets every frame except its own."""

    def __init__(self, bitrate: int = 500000):
        self.bitrate = bitrate
        self._listeners: list[tuple[int, Callable[[CanFrame], None]]] = []
        self._lock = threading.Lock()
        self._next = 1
        self.frames = 0

    def attach(self, callback: Callable[[CanFrame], None]) -> int:
        """Add a listener; returns the handle to send with and to detach."""
        with self._lock:
            h = self._next
            self._next += 1
            self._listeners.append((h, callback))
            return h

    def detach(self, handle: int) -> None:
        with self._lock:
            self._listeners = [(h, cb) for h, cb in self._listeners if h != handle]

    def send(self, frame: CanFrame, sender: int = 0) -> None:
        check_frame(frame)
        with self._lock:
            targets = [cb for h, cb in self._listeners if h != sender]
            self.frames += 1
        for cb in targets:
            cb(frame)


def format_frame(f: CanFrame, stamp_ms: int | None = None) -> bytes:
    """The slcan text of a frame, CR included."""
    if f.extended:
        head = ("R" if f.remote else "T") + f"{f.can_id:08X}"
    else:
        head = ("r" if f.remote else "t") + f"{f.can_id:03X}"
    text = head + str(f.length) + ("" if f.remote else f.data.hex().upper())
    if stamp_ms is not None:
        text += f"{stamp_ms % 60000:04X}"
    return text.encode() + OK


def parse_frame(cmd: bytes) -> CanFrame:
    """Parse a t/T/r/R command (without CR); ValueError says what is wrong."""
    kind = chr(cmd[0])
    ext = kind in "TR"
    idlen = 8 if ext else 3
    text = cmd.decode("ascii")
    if len(text) < 1 + idlen + 1:
        raise ValueError("frame command too short")
    try:
        can_id = int(text[1:1 + idlen], 16)
        dlc = int(text[1 + idlen], 10)
    except ValueError:
        raise ValueError("frame id or length is not hex/decimal") from None
    if dlc > 8:
        raise ValueError(f"length {dlc} out of 0..8")
    rest = text[2 + idlen:]
    if kind in "rR":
        if rest:
            raise ValueError("remote frame with data")
        f = CanFrame(can_id, b"", ext, True, dlc)
    else:
        if len(rest) != 2 * dlc:
            raise ValueError(f"{len(rest)} data digits for length {dlc}")
        try:
            data = bytes.fromhex(rest)
        except ValueError:
            raise ValueError("data is not hex") from None
        f = CanFrame(can_id, data, ext, False, None)
    check_frame(f)
    return f


class SlcanEndpoint:
    """The adapter side of an slcan link on a new pseudo-terminal (port_name = its /dev/pts/N)."""

    def __init__(self, bus: CanBus):
        self.bus = bus
        self._fd, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line editing before the client opens it
        os.set_blocking(self._fd, False)
        self.port_name = os.ttyname(self._slave)
        self.is_open = False
        self.listen_only = False
        self.bitrate: int | None = None
        self.timestamps = False
        self.flags = 0
        self.stats = {"rx_cmds": 0, "errors": 0, "to_bus": 0, "from_bus": 0, "dropped": 0}
        self._buf = bytearray()
        self._wlock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = bus.attach(self._from_bus)
        self._t0 = time.monotonic()

    # -- bus -> client ------------------------------------------------------
    def _matched(self) -> bool:
        return self.bitrate is None or self.bitrate == self.bus.bitrate

    def _from_bus(self, f: CanFrame) -> None:
        if not self.is_open:
            return
        if not self._matched():
            self.stats["dropped"] += 1
            return
        stamp = int((time.monotonic() - self._t0) * 1000) if self.timestamps else None
        self._write(format_frame(f, stamp))
        self.stats["from_bus"] += 1

    def _write(self, data: bytes) -> None:
        with self._wlock:
            view = memoryview(data)
            deadline = time.monotonic() + 1.0
            while view:
                try:
                    n = os.write(self._fd, view)
                    view = view[n:]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        self.flags |= FLAG_RX_OVERRUN  # client not reading: frames lost
                        self.stats["dropped"] += 1
                        return
                    time.sleep(0.001)
                except OSError:
                    return

    # -- client -> adapter --------------------------------------------------
    def handle_command(self, cmd: bytes) -> bytes:
        """One command line without its CR -> the reply bytes. Public for tests."""
        self.stats["rx_cmds"] += 1
        if not cmd:
            return OK
        c = chr(cmd[0])
        try:
            if c in "tTrR":
                if not self.is_open or self.listen_only:
                    raise ValueError("channel not open for sending")
                f = parse_frame(cmd)
                if self._matched():
                    self.bus.send(f, self._handle)
                    self.stats["to_bus"] += 1
                else:
                    self.flags |= FLAG_BUS_ERROR  # nobody acknowledges at a different bit rate
                    raise ValueError("bit rate differs from the bus")
                return (b"Z" if f.extended else b"z") + OK
            if c in "OL" and len(cmd) == 1:
                if self.is_open:
                    raise ValueError("already open")
                self.is_open, self.listen_only = True, c == "L"
                return OK
            if c == "C" and len(cmd) == 1:
                self.is_open = False  # closing a closed channel is harmless (clients do it first)
                return OK
            if c == "S" and len(cmd) == 2:
                if self.is_open:
                    raise ValueError("bit rate while open")
                n = int(cmd[1:2].decode(), 10)
                if n not in BITRATES:
                    raise ValueError("unknown bit rate")
                self.bitrate = BITRATES[n]
                return OK
            if c == "s" and len(cmd) == 5:
                if self.is_open:
                    raise ValueError("bit timing while open")
                int(cmd[1:].decode(), 16)
                self.bitrate = -1  # custom timing: will not match the bus's nominal rate
                return OK
            if c == "V" and len(cmd) == 1:
                return VERSION + OK
            if c == "N" and len(cmd) == 1:
                return SERIAL + OK
            if c == "F" and len(cmd) == 1:
                flags, self.flags = self.flags, 0
                return b"F%02X" % flags + OK
            if c == "Z" and len(cmd) == 2 and cmd[1:2] in (b"0", b"1"):
                if self.is_open:
                    raise ValueError("time stamps while open")
                self.timestamps = cmd[1:2] == b"1"
                return OK
            raise ValueError("unknown command")
        except ValueError:
            self.stats["errors"] += 1
            return BELL

    def _run(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self._fd], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self._fd, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                # EIO: no client has the pty open right now; wait for one
                time.sleep(0.05)
                continue
            for b in data:
                if b == 0x0D:
                    reply = self.handle_command(bytes(self._buf))
                    self._buf.clear()
                    self._write(reply)
                elif b == 0x0A:
                    continue  # tolerate CR LF from terminals
                else:
                    self._buf.append(b)
                    if len(self._buf) > MAX_LINE:
                        self._buf.clear()
                        self.stats["errors"] += 1
                        self._write(BELL)

    def wait_open(self, timeout: float = 2.0) -> bool:
        """Wait until a client has opened the channel (clients do not wait for the reply)."""
        end = time.monotonic() + timeout
        while not self.is_open and time.monotonic() < end:
            time.sleep(0.002)
        return self.is_open

    def start(self) -> "SlcanEndpoint":
        self._thread = threading.Thread(target=self._run, name="slcan", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        self.bus.detach(self._handle)
        for fd in (self._fd, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
