"""Host side of the controller link: framing, heartbeats, commands, subscriptions.

Wire format and message set: docs/host-link.md (link version 1). Each frame is
COBS(CBOR(message) + CRC-32 little-endian) + 0x00.

Design: one thread-based client (`LinkClient`), because the users are CLI
tools (console, diagnostics, FOTA, bench) and a bridge that already runs its
own asyncio loop can call the blocking `command()` through
`loop.run_in_executor`. Threads:
- the reader thread reads the port, deframes, answers nothing itself, wakes
  waiting `command()` calls and runs subscriber callbacks (keep them short;
  an exception in one is logged and counted, never kills the reader);
- the heartbeat thread sends "hb" every `heartbeat_s`; each "hback" gives the
  round trip, which is sent back to the controller as "rtt".

The wire contract itself is the controller's: message checks, COBS, CRC-32 and the
receiving state machine are firmware/core/link.py, core/cobs.py and core/crc32.py,
imported here as `core` (host_tools/tree.py). The host adds only what the
controller does not need: cbor2 to encode what it sends (canonical=True; for the
link's text-keyed maps these are the same bytes as core.cbor's), threads, retries
and subscriptions.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import cbor2
import serial
from core import cobs, crc32, decfrac
from core.cbor import Tag
from core import link as core_link

log = logging.getLogger(__name__)

VERSION = core_link.VERSION
MAX_FRAME = core_link.MAX_FRAME  # CBOR + CRC bytes, before COBS
TXN_MAX_LEN = core_link.TXN_MAX_LEN
STAT_NAMES = core_link.STAT_NAMES
# hb host_ms is the host clock within 30 bits: a small int on the board, which echoes it
# without allocating; the round trip is taken modulo 2**30 as well
HB_MS_MASK = (1 << 30) - 1
HEARTBEAT_S = 1.0

# (stat name, reason) for an invalid message, None for a valid one: the controller's rules
check = core_link.check


class LinkError(Exception):
    """The link is closed, the port failed, or a message cannot be sent."""


class LinkTimeout(LinkError):
    """No answer within the time allowed."""


# ------------------------------------------------------------------ frames

def to_wire(obj):
    """A message as it goes on the wire: no float crosses the link (a single-precision board
    reads 0.036 as 0.035999998..., and a double beyond its range as inf). A whole float goes
    as an int; any other finite float as the decimal its shortest text shows (0.036, what
    the operator wrote), which cbor2 writes as a decimal fraction (tag 4) that the board
    reads exactly. NaN and infinities stay floats: the board refuses them by name."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return obj
        if obj == int(obj) and abs(obj) < 2 ** 63:
            return int(obj)
        return Decimal(repr(obj))
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_wire(v) for v in obj]
    return obj


def from_wire(obj):
    """A received message with each decimal fraction (tag 4: a Tag from the controller's own
    decoder, or a Decimal from cbor2) as a plain number: an int when whole, else the float
    whose text is that decimal (the board sends FREQ_DEADBAND_HZ as [-3, 36]; this shows
    0.036)."""
    if isinstance(obj, Tag) and obj.tag == decfrac.TAG and isinstance(obj.value, list) \
            and len(obj.value) == 2 and all(isinstance(x, int) for x in obj.value):
        obj = Decimal(obj.value[1]).scaleb(obj.value[0])
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            return float(obj)
        if obj == obj.to_integral_value():
            return int(obj)
        return float(obj)
    if isinstance(obj, dict):
        return {k: from_wire(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_wire(v) for v in obj]
    return obj


def encode_frame(msg: dict, max_frame: int = MAX_FRAME) -> bytes:
    """The wire bytes of one message (COBS + delimiter). Raises LinkError if too large."""
    try:
        payload = cbor2.dumps(to_wire(msg), canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise LinkError(f"cannot encode {msg.get('t', '?')!r}: {e}") from e
    if len(payload) + 4 > max_frame:
        raise LinkError(f"{msg.get('t', '?')!r} message of {len(payload) + 4} bytes exceeds the "
                        f"{max_frame}-byte frame")
    return cobs.encode(payload + crc32.crc32(payload).to_bytes(4, "little")) + b"\x00"


class Deframer:
    """Splits a byte stream into messages; bad frames are counted and dropped.

    The controller's own receiver (core.link.Link) without its sending half: the same
    limits, checks, counters and reasons on both ends of the wire."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._rx = core_link.Link(None, max_frame)

    @property
    def stats(self) -> dict:
        return self._rx.stats

    @property
    def last_error(self) -> str:
        return self._rx.last_error

    def feed(self, data: bytes) -> list[dict]:
        dropped = sum(self._rx.stats.values()) - self._rx.stats["frames_ok"]
        msgs = list(self._rx.feed(bytes(data)))
        if sum(self._rx.stats.values()) - self._rx.stats["frames_ok"] != dropped:
            log.debug("link: dropped frame: %s", self._rx.last_error)
        return [from_wire(m) for m in msgs]


# ------------------------------------------------------------------ port lock

class PortInUse(LinkError):
    """Another tool on this host has the port open."""


def _lock_dir() -> str:
    # /run/lock is the system's place for device locks (world-writable on Debian and
    # Fedora); the temp folder where it is missing. V2G_LOCK_DIR overrides both.
    d = os.environ.get("V2G_LOCK_DIR")
    if d:
        return d
    if os.path.isdir("/run/lock") and os.access("/run/lock", os.W_OK):
        return "/run/lock"
    return tempfile.gettempdir()


def lock_path(url: str) -> str | None:
    """The lock file of a local device, None for a URL (socket://, loop://) which has no
    device node to share. Keyed by the device's real path, so /dev/serial/by-id/... and
    /dev/ttyACM0 are one lock."""
    if "://" in url:
        return None
    real = os.path.realpath(url)
    return os.path.join(_lock_dir(), "v2g-port" + real.replace("/", "_") + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PortLock:
    """An exclusive claim on a serial device for this process: fcntl.flock on a lock file
    named after the device, holding the owner's PID and command for the refusal message.

    flock rather than TIOCEXCL on the tty: TIOCEXCL does not stop root (CAP_SYS_ADMIN
    opens through it, and the tools often run as root), cannot say who holds the port,
    and only exists for ttys. An flock dies with its process, so a lock file left by a
    process that crashed or was killed is taken over at once: the file is only the note
    of who held it last. The descriptor is not inherited by child processes."""

    def __init__(self, url: str):
        self.url = url
        self.path = lock_path(url)
        self._fd: int | None = None

    def acquire(self) -> PortLock:
        if self.path is None or self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            # no lock possible (read-only folder): say so in the log, do not block the tool
            log.warning("link: no lock file for %s: %s", self.url, e)
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise PortInUse(f"{self.url} is in use by {owner}; close that tool first, or share "
                            "the controller through the bridge's local link (docs/bridge.md)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(os.path.basename(a) for a in sys.argv[:2])}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)     # the next reader sees no stale owner
            except OSError:
                pass
            os.close(fd)                # closing drops the flock

    def __enter__(self) -> PortLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    if pid.isdigit():
        who = f"PID {pid}" + (f" ({what})" if what else "")
        # the lock outlives its writer only through a child that inherited the descriptor
        return who if _pid_alive(int(pid)) else who + ", exited; a process it started holds it"
    return "another process"


# ------------------------------------------------------------------ client

@dataclass
class CommandResult:
    txn: str
    ok: bool
    code: str | None
    msg: str
    data: dict = field(default_factory=dict)
    rtt_ms: float | None = None  # time from the last send to the answer

    def __bool__(self) -> bool:
        return self.ok


def soc_pct(sample: dict) -> float | None:
    """A telemetry sample's SoC in %, None while the controller knows none (`soc_pm` -1)."""
    v = sample.get("soc_pm")
    return v / 10 if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def new_txn() -> str:
    """A transaction id unique enough for the controller's applied-txn memory."""
    return "h" + os.urandom(6).hex()


class LinkClient:
    """Thread-based host link client.

    Use as a context manager (or open()/close()):

        with LinkClient("/dev/ttyACM0") as lk:
            print(lk.hello())
            r = lk.command("soc_target", {"soc_pct": 80})
    """

    def __init__(self, url: str, *, baudrate: int = 115200, heartbeat_s: float | None = HEARTBEAT_S,
                 max_frame: int = MAX_FRAME, on_tel: Callable[[dict], None] | None = None,
                 on_evt: Callable[[dict], None] | None = None,
                 on_hello: Callable[[dict], None] | None = None,
                 port: serial.SerialBase | None = None):
        self.url = url
        self.baudrate = baudrate
        self.heartbeat_s = heartbeat_s
        self.max_frame = max_frame
        self._port = port
        self._port_lock: PortLock | None = None
        self._deframer = Deframer(max_frame)
        self._tx_lock = threading.Lock()
        self._lock = threading.Lock()  # pending, subscribers, stats below
        self._pending: dict[str, list] = {}  # txn -> [Event, result msg or None, time sent]
        self._subs: dict[str, list[Callable[[dict], None]]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._hb_seq = 0
        self.rtt_ms: int | None = None  # last measured round trip
        self.last_hello: dict | None = None
        self.last_rx: float | None = None  # time.monotonic() of the last valid message
        self.error: str | None = None  # why the reader stopped, if it did
        self.rx_tail = b""  # the last bytes received, valid frames or not (diagnostics)
        # timeouts: tries (commands, requests) the controller left unanswered, for diagnostics
        self.counters = dict.fromkeys(("hb_sent", "hback", "late_results", "callback_errors", "timeouts"), 0)
        for t, fn in (("tel", on_tel), ("evt", on_evt), ("hello", on_hello)):
            if fn is not None:
                self.subscribe(t, fn)

    # -- lifecycle

    def open(self) -> LinkClient:
        if self._port is None:
            # one tool per port: a second reader would steal half of each frame
            self._port_lock = PortLock(self.url).acquire()
            try:
                self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.05)
            except (serial.SerialException, ValueError, OSError) as e:
                self._port_lock.release()
                raise LinkError(f"cannot open {self.url}: {e}") from e
        # a lone delimiter makes the controller drop any partial frame it holds
        self._write(b"\x00")
        self._start("link-reader", self._reader)
        if self.heartbeat_s:
            self._start("link-heartbeat", self._heartbeat)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2)
        self._threads.clear()
        if self._port is not None:
            try:
                self._port.close()
            except (serial.SerialException, OSError):
                pass
        if self._port_lock is not None:
            self._port_lock.release()
        self._fail_pending("link closed")

    def __enter__(self) -> LinkClient:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    # -- time

    @staticmethod
    def now_ms() -> int:
        """The host clock used for host_ms and deadline_ms (monotonic)."""
        return int(time.monotonic() * 1000)

    # -- sending

    def _write(self, data: bytes) -> None:
        if self._port is None:
            raise LinkError("link is not open")
        with self._tx_lock:
            try:
                self._port.write(data)
                self._port.flush()
            # TypeError/AttributeError: pyserial's answer when the port was closed under it
            except (serial.SerialException, OSError, TypeError, AttributeError) as e:
                raise LinkError(f"write to {self.url} failed: {e}") from e

    def send(self, msg: dict) -> None:
        """Send one message (adds "v" if missing). Raises LinkError."""
        if "v" not in msg:
            msg = {"v": VERSION, **msg}
        try:
            frame = encode_frame(msg, self.max_frame)
        except LinkError:
            self._deframer.stats["tx_errors"] += 1
            raise
        self._write(frame)
        with self._lock:
            self._deframer.stats["tx_frames"] += 1

    def hello(self, timeout: float = 2.0) -> dict:
        """Ask the controller to introduce itself; returns its hello message."""
        msg = self.request({"v": VERSION, "t": "hello"}, "hello", timeout,
                           lambda m: "fw" in m)
        self.last_hello = msg
        return msg

    def request(self, msg: dict, reply_type: str, timeout: float,
                match: Callable[[dict], bool] | None = None) -> dict:
        """Send msg and wait for the next message of reply_type that matches."""
        got: list[dict] = []
        done = threading.Event()

        def catch(m: dict) -> None:
            if not got and (match is None or match(m)):
                got.append(m)
                done.set()

        unsubscribe = self.subscribe(reply_type, catch)
        try:
            self.send(msg)
            if not done.wait(timeout):
                self._raise_if_dead()
                self.counters["timeouts"] += 1
                raise LinkTimeout(f"no {reply_type!r} from the controller within {timeout:g} s")
            return got[0]
        finally:
            unsubscribe()

    def wait_for(self, msg_type: str, timeout: float,
                 match: Callable[[dict], bool] | None = None) -> dict:
        """Wait for the next message of msg_type (without sending anything)."""
        got: list[dict] = []
        done = threading.Event()

        def catch(m: dict) -> None:
            if not got and (match is None or match(m)):
                got.append(m)
                done.set()

        unsubscribe = self.subscribe(msg_type, catch)
        try:
            if not done.wait(timeout):
                self._raise_if_dead()
                raise LinkTimeout(f"no {msg_type!r} from the controller within {timeout:g} s")
            return got[0]
        finally:
            unsubscribe()

    def command(self, op: str, args: dict | None = None, txn: str | None = None, *,
                timeout: float = 3.0, retries: int = 2, deadline_ms: int | None = None,
                ttl_ms: int | None = None) -> CommandResult:
        """Run one controller command and return its result.

        The same txn is re-sent on each retry; the controller answers a
        repeated txn with the original result, so a retry never applies a
        command twice. deadline_ms is on the host clock (now_ms()): past it,
        nothing more is sent and a local V2G-110 refusal is returned, or
        LinkTimeout if a try was already sent (its effect is then unknown:
        ask "status"). Raises LinkTimeout when no try is answered.
        """
        txn = txn or new_txn()
        if not 1 <= len(txn) <= TXN_MAX_LEN:
            raise LinkError(f"txn length {len(txn)} not in 1..{TXN_MAX_LEN}")
        self._raise_if_dead()   # do not wait a whole timeout on a link that already failed
        entry = [threading.Event(), None, 0.0]
        with self._lock:
            if txn in self._pending:
                raise LinkError(f"txn {txn} is already waiting for its result")
            self._pending[txn] = entry
        sent = False
        try:
            for attempt in range(retries + 1):
                if deadline_ms is not None:
                    left = deadline_ms - self.now_ms()
                    if left <= 0:
                        if not sent:
                            return CommandResult(txn, False, "V2G-110",
                                                 f"{op}: deadline passed before sending", {})
                        raise LinkTimeout(f"{op} (txn {txn}): deadline passed after {attempt} "
                                          "unanswered tries; its effect is unknown")
                    ttl = left if ttl_ms is None else min(ttl_ms, left)
                else:
                    ttl = ttl_ms
                msg = {"v": VERSION, "t": "cmd", "txn": txn, "op": op, "args": args or {}}
                if deadline_ms is not None:
                    msg["deadline_ms"] = deadline_ms
                if ttl is not None:
                    msg["ttl_ms"] = ttl
                entry[2] = time.monotonic()
                self.send(msg)
                sent = True
                wait = timeout
                if deadline_ms is not None:
                    wait = min(wait, max(0.0, (deadline_ms - self.now_ms()) / 1000))
                if entry[0].wait(wait):
                    res = entry[1]
                    if res is None:  # woken because the link went down
                        raise LinkError(f"{op} (txn {txn}): link to {self.url} closed "
                                        f"({self.error or 'closed'}); its effect is unknown")
                    return CommandResult(txn, res["ok"], res["code"], res["msg"], res["data"],
                                         round((time.monotonic() - entry[2]) * 1000, 1))
                self._raise_if_dead()
                self.counters["timeouts"] += 1
                log.info("link: no result for %s (txn %s), try %d of %d", op, txn, attempt + 1,
                         retries + 1)
            raise LinkTimeout(f"no result for {op} (txn {txn}) after {retries + 1} tries "
                              f"of {timeout:g} s")
        finally:
            with self._lock:
                self._pending.pop(txn, None)

    # -- subscriptions

    def subscribe(self, msg_type: str, fn: Callable[[dict], None]) -> Callable[[], None]:
        """Call fn(msg) on the reader thread for every message of msg_type
        ("*" for all). Returns a function that unsubscribes."""
        with self._lock:
            self._subs.setdefault(msg_type, []).append(fn)

        def unsubscribe() -> None:
            with self._lock:
                lst = self._subs.get(msg_type, [])
                if fn in lst:
                    lst.remove(fn)

        return unsubscribe

    # -- statistics

    @property
    def stats(self) -> dict:
        """Frame counters (same names as the controller's) plus client counters."""
        out = dict(self._deframer.stats)
        out.update(self.counters)
        out["rtt_ms"] = self.rtt_ms
        return out

    @property
    def last_error(self) -> str:
        return self._deframer.last_error

    # -- threads

    def _raise_if_dead(self) -> None:
        if self.error:
            raise LinkError(f"link to {self.url} failed: {self.error}")

    def _fail_pending(self, why: str) -> None:
        log.debug("link: failing pending commands: %s", why)
        with self._lock:
            for entry in self._pending.values():
                entry[0].set()  # wakes the waiter; it sees entry[1] is None

    def _reader(self) -> None:
        port = self._port
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as e:
                if not self._stop.is_set():
                    self.error = str(e) or type(e).__name__
                    log.warning("link: reader stopped: %s", self.error)
                self._fail_pending(self.error or "closed")
                return
            if not data:
                continue
            self.rx_tail = (self.rx_tail + data)[-256:]   # what a port that is not the link says
            for msg in self._deframer.feed(data):
                self.last_rx = time.monotonic()
                self._dispatch(msg)

    def _dispatch(self, msg: dict) -> None:
        t = msg["t"]
        if t == "hback":
            self._on_hback(msg)
        elif t == "res":
            with self._lock:
                entry = self._pending.get(msg["txn"])
            if entry is not None and entry[1] is None:
                entry[1] = msg
                entry[0].set()
            elif entry is None:
                self.counters["late_results"] += 1
        elif t == "hello" and "fw" in msg:
            self.last_hello = msg
        with self._lock:
            subs = list(self._subs.get(t, ())) + list(self._subs.get("*", ()))
        for fn in subs:
            try:
                fn(msg)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("link: %s subscriber failed", t)

    def _on_hback(self, msg: dict) -> None:
        self.counters["hback"] += 1
        # host_ms goes out within 30 bits (the board keeps it a small int): wrap alike
        rtt = (self.now_ms() - msg["host_ms"]) & HB_MS_MASK
        if not 0 <= rtt <= 60_000:
            return  # not one of ours (another host, or an old session)
        self.rtt_ms = rtt
        try:
            self.send({"v": VERSION, "t": "rtt", "ms": rtt})
        except LinkError as e:
            log.debug("link: could not report rtt: %s", e)

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            if self.error:
                # A host that can no longer hear the controller must not look alive to it:
                # without heartbeats the controller falls back to charge-only (V2G-101).
                log.warning("link: heartbeats stopped, the reader failed: %s", self.error)
                return
            self._hb_seq += 1
            try:
                self.send({"v": VERSION, "t": "hb", "seq": self._hb_seq,
                           "host_ms": self.now_ms() & HB_MS_MASK})
                self.counters["hb_sent"] += 1
            except LinkError as e:
                log.warning("link: heartbeat not sent: %s", e)
            self._stop.wait(self.heartbeat_s)
