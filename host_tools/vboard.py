"""The virtual controller board: the firmware on the real MicroPython VM, behind the same
kind of ports a real board has, so unmodified tools (mpremote, pyserial, python-can's slcan,
a Modbus meter) connect to it.

    host tool  <->  pseudo-terminal  <->  VirtualBoard (this module)  <->  node mpvm.mjs board

The Node process is the board's CPU; this process owns the ports and the board's lifetime:
- a soft reset (Ctrl-D) ends the Node process; it is started again on the same files, and if
  the REPL was in raw mode it comes back in raw mode, as a board does;
- `power_cut()` kills it without warning (files as last mirrored, as after a power loss);
- the Node process dies with this one (parent-death signal, and it exits when stdin closes).

Field buses (docs/field-buses.md): the `can` endpoint is an slcan adapter on the board's
in-process CAN bus, which also carries the controller's frames and, unless `ev_can` is
"external", the simulated vehicle's BMS frames. With `meter` the firmware polls a Modbus
RTU meter on the `rs485` pseudo-terminal; "sdm630"/"sdm120" attach the meter simulator
there and feed it the plant's values. The wiring reaches the simulated board as the file
`sim_board.json` on its flash (boards/sim/hal.py).

The plant (EV, battery, grid, meter, wiring) is the world around the controller, so it lives
on through the controller's resets: the simulated board hands its plant's state here (a
control frame {"op": "plant"} every KEEP_PLANT_MS and as the VM resets) and the next VM
starts from it (V2G_VBOARD_PLANT). The plant's physics still run inside the VM, in the
control step, as boards/sim/hal.py steps it.

The ports are this process's pseudo-terminals, so their names do not change when the VM
restarts; the state folder holds a link per port (STATE/repl.pty, link.pty, plant.pty,
rs485.pty, can.pty) to it, a name that does not change from one `v2g vboard` to the next.
"""

import collections
import ctypes
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from host_tools import vm
from host_tools.slcan import CanBus, CanFrame, SlcanEndpoint

CH_CONTROL, CH_REPL, CH_LINK, CH_PLANT, CH_RS485, CH_CAN = range(6)
PORTS = {"link": CH_LINK, "plant": CH_PLANT, "rs485": CH_RS485, "can": CH_CAN}
METER_CHOICES = ("sdm630", "sdm120", "external")
EV_CAN_CHOICES = ("plant", "external")
WIRING_FILE = "sim_board.json"
CAN_RECORD = 14            # [origin][id u32 LE, bit 31 = 29-bit id][dlc][8 data]; boards/sim/hal.py
ORIGIN_VEHICLE = 1
EXT_FLAG = 0x80000000
METER_SIM_MARK = b'{"meter_sim"'
ENDPOINT_LINKS = ("repl", "link", "plant", "rs485", "can")
LINK_SUFFIX = ".pty"     # STATE/plant.pty: no clash with the firmware's own names (can/)
PLANT_ENV = "V2G_VBOARD_PLANT"


def can_record(frame: CanFrame) -> bytes:
    """A bus frame as the simulated board's CAN port record (origin 0: from the bus)."""
    cid = frame.can_id | (EXT_FLAG if frame.extended else 0)
    data = bytes(frame.data[:8])
    return struct.pack("<BIB", 0, cid, len(data)) + data + bytes(8 - len(data))


def parse_can_records(buf: bytes):
    """(origin, CanFrame) for each whole record; frames that are not classic CAN are skipped."""
    out = []
    for i in range(0, len(buf) - CAN_RECORD + 1, CAN_RECORD):
        origin, cid, dlc = struct.unpack_from("<BIB", buf, i)
        if dlc > 8:
            continue
        ext = bool(cid & EXT_FLAG)
        data = bytes(buf[i + 6:i + 6 + dlc])
        out.append((origin, CanFrame(cid & 0x1FFFFFFF, data, extended=ext)))
    return out


class BoardError(RuntimeError):
    """The board cannot start; the message names what is missing and how to fix it."""


def provision(state_dir, board="sim"):
    """Lay the working tree's firmware into a fresh state folder, as `v2g flash` would."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(vm.FIRMWARE, state_dir, dirs_exist_ok=True, ignore=ignore)
    shutil.copytree(vm.BOARDS / board, state_dir / "board", dirs_exist_ok=True, ignore=ignore)


def _die_with_parent():
    # PR_SET_PDEATHSIG: the VM gets SIGKILL if this process dies, so it never lingers.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Pty:
    """One pseudo-terminal pair in raw mode; tools open `path`, the board keeps `master`."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def write(self, data):
        try:
            os.write(self.master, data)
        except (BlockingIOError, OSError):
            pass  # nobody reading and the buffer is full: a UART drops bytes too

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass



def _lines(held, data):
    """Complete lines in held + data, and the rest to hold; a runaway line without an end is
    let through at 64 kB rather than held forever."""
    *lines, rest = (held + data).split(b"\n")
    if len(rest) > 65536:
        lines.append(rest)
        rest = b""
    return lines, rest

class VirtualBoard:
    def __init__(self, state_dir, board="sim", blank=False, repl_port=None, heap=None,
                 meter=None, ev_can="plant", can_bitrate=500000):
        if meter is not None and meter not in METER_CHOICES:
            raise BoardError("--meter must be one of {}, not {!r}".format(", ".join(METER_CHOICES), meter))
        if ev_can not in EV_CAN_CHOICES:
            raise BoardError("--ev-can must be one of {}, not {!r}".format(", ".join(EV_CAN_CHOICES), ev_can))
        self.meter = meter
        self.ev_can = ev_can
        self.canbus = CanBus(can_bitrate)
        self.slcan = None
        self.metersim = None
        self.meter_lines = 0
        self._plant_buf = b""
        self._plant_in = b""
        self._can_buf = b""
        self._to_bus = queue.Queue()
        self._fw_can = None
        self._vehicle_can = None
        self.can_stats = {"from_controller": 0, "from_vehicle": 0, "to_controller": 0}
        self.state_dir = Path(state_dir)
        self.board = board
        self.blank = blank
        self.repl_port = repl_port
        self.heap = heap
        self.ptys = {}
        self.proc = None
        self.ready = threading.Event()
        self.start_error = None      # why the VM ended before it was ever ready
        self._stderr_tail = collections.deque(maxlen=20)
        self._early = []            # the VM's error output before it was first ready
        self._lock_err = threading.Lock()
        self.stopping = False
        self.boots = 0
        self._restart_raw = None
        self._lock = threading.Lock()
        self._pending_in = []
        self._listener = None
        self._client = None
        self._thread = None
        self._port_hooks = {}
        self.plant_state = None      # the plant as the VM last handed it over (JSON text)
        self.plant_handovers = 0
        self._links = {}
        self._held_for_reset = False
        self._saves = 0              # mirrors of the files the VM confirmed ("saved")
        self._saved = threading.Condition()

    # -- set-up ------------------------------------------------------------------------------

    def check(self):
        """Refuse to start, with the fix, when something is missing."""
        vm.node_binary()  # raises VmMissing with the install command
        known = vm.known_boards()
        if self.board not in known:   # a name, never a path; checked before any folder is made
            raise BoardError("unknown board {!r} (known: {})".format(self.board, ", ".join(known)))
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise BoardError("state folder {} is a file, not a folder".format(self.state_dir))
        if self.state_dir.exists() and not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise BoardError("state folder {} is not writable".format(self.state_dir))
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise BoardError("cannot create state folder {}: a part of that path is a file or a "
                             "link to nothing".format(self.state_dir)) from None
        except OSError as e:
            raise BoardError("cannot create state folder {}: {}".format(self.state_dir, e.strerror)) from e

    def start(self):
        self.check()
        if self.repl_port is not None:
            # first, so a port in use is refused before anything else is started
            try:
                self._listener = socket.create_server(("127.0.0.1", self.repl_port))
            except OSError as e:
                raise BoardError("cannot serve the REPL on 127.0.0.1:{}: {}".format(
                    self.repl_port, e.strerror)) from None
            self._listener.setblocking(False)
        try:
            self._start_parts()
        except BaseException:
            self.stop()
            raise
        deadline = time.monotonic() + 30
        while not self.ready.wait(0.1):
            if self.start_error is not None or time.monotonic() > deadline:
                why = self.start_error or "it did not start within 30 s"
                self.stop()
                raise BoardError("the MicroPython VM failed to start: {}".format(why))
        with self._lock_err:
            self._flush_early()
        return self.endpoints()

    def _start_parts(self):
        if not self.blank and not any(self.state_dir.iterdir()):
            provision(self.state_dir, self.board)
        self.ptys = {"repl": Pty()}
        for name in PORTS:
            if name != "can":
                self.ptys[name] = Pty()
        self._start_buses()
        self._link_endpoints()
        self._spawn(raw=False)
        self._thread = threading.Thread(target=self._relay, name="vboard-relay", daemon=True)
        self._thread.start()

    def _start_buses(self):
        """The CAN bus with its slcan endpoint, the wiring file, and the meter simulator."""
        # The wiring is the board's hardware, there from power-on: a blank board flashed later
        # with the sim firmware must find its meter and CAN bus as a provisioned one does.
        if self.board == "sim":
            wiring = {"meter": "plant" if self.meter is None else "modbus", "bms": "can",
                      "ev_can": self.ev_can}
            tmp = self.state_dir / (WIRING_FILE + ".tmp")
            tmp.write_text(json.dumps(wiring))
            os.replace(tmp, self.state_dir / WIRING_FILE)
        self.slcan = SlcanEndpoint(self.canbus).start()
        self._fw_can = self.canbus.attach(self._can_to_firmware)
        self._vehicle_can = self.canbus.attach(lambda frame: None)  # the simulated EV only talks
        self.on_port_output("can", self._can_from_firmware)
        self.on_port_output("plant", self._plant_from_firmware)
        threading.Thread(target=self._bus_feeder, name="vboard-can", daemon=True).start()
        if self.meter in ("sdm630", "sdm120"):
            from host_tools.metersim import MeterSim
            self.metersim = MeterSim(self.ptys["rs485"].path, model=self.meter.upper()).start()

    def _link_endpoints(self):
        """STATE/<port>.pty -> the port's pseudo-terminal, put in place atomically."""
        eps = self.endpoints()
        for name in ENDPOINT_LINKS:
            if name not in eps:
                continue
            link = self.state_dir / (name + LINK_SUFFIX)
            if link.exists() and not link.is_symlink():
                continue   # a file of the board's own by that name: never replaced
            tmp = self.state_dir / (".{}.link-tmp".format(name))
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            os.symlink(eps[name], tmp)
            os.replace(tmp, link)
            self._links[name] = eps[name]

    def _unlink_endpoints(self):
        for name, target in self._links.items():
            link = self.state_dir / (name + LINK_SUFFIX)
            try:
                if link.is_symlink() and os.readlink(link) == target:
                    link.unlink()
            except OSError:
                pass
        self._links = {}

    def _can_to_firmware(self, frame):
        if frame.remote:
            return   # the controller's CAN port takes data frames only
        self.can_stats["to_controller"] += 1
        self.send_port("can", can_record(frame))

    def _can_from_firmware(self, payload):
        buf = self._can_buf + payload
        whole = len(buf) - len(buf) % CAN_RECORD
        self._can_buf = buf[whole:]
        for origin, frame in parse_can_records(buf[:whole]):
            self._to_bus.put((origin, frame))

    def _bus_feeder(self):
        # Frames go onto the bus from their own thread: a slow slcan client must never stall
        # the relay that carries the firmware's other ports.
        while True:
            item = self._to_bus.get()
            if item is None:
                return
            origin, frame = item
            if origin == ORIGIN_VEHICLE:
                self.can_stats["from_vehicle"] += 1
                self.canbus.send(frame, self._vehicle_can)
            else:
                self.can_stats["from_controller"] += 1
                self.canbus.send(frame, self._fw_can)

    def _plant_from_firmware(self, payload):
        lines, self._plant_buf = _lines(self._plant_buf, payload)
        out = b""
        for line in lines:
            if line.startswith(METER_SIM_MARK):
                self._meter_values(line)
            else:
                out += line + b"\n"
        if out:
            self.ptys["plant"].write(out)

    def _plant_input(self, data):
        """Plant commands for the firmware, less the reset button: {"do": "reboot"} resets the
        board here, so it works also while the controller is stopped (after mpremote, whose
        soft reset in raw REPL does not run main.py, as on a real board)."""
        lines, self._plant_in = _lines(self._plant_in, data)
        out = b""
        for line in lines:
            if self._is_reboot(line):
                with self._lock:
                    self._send(CH_CONTROL, b'{"op": "reset"}')
                    # what the ports bring from now on is for the next boot: the VM going
                    # away would drop it unread
                    self._held_for_reset = True
                self.ptys["plant"].write(b'{"ok": true, "do": "reboot"}\n')
            else:
                out += line + b"\n"
        return out

    @staticmethod
    def _is_reboot(line):
        if b"reboot" not in line:
            return False
        try:
            msg = json.loads(line)
        except ValueError:
            return False
        return isinstance(msg, dict) and msg.get("do") == "reboot" and len(msg) == 1

    def _meter_values(self, line):
        self.meter_lines += 1
        if self.metersim is None:
            return
        try:
            mv, ma, mhz, in_wh, out_wh, fault = json.loads(line)["meter_sim"]
        except (ValueError, KeyError, TypeError):
            return
        v = mv / 1000.0
        values = {"v1": v, "i1": abs(ma) / 1000.0, "p1": v * ma / 1000.0, "pf1": 1.0,
                  "hz": mhz / 1000.0, "import_kwh": in_wh / 1000.0, "export_kwh": out_wh / 1000.0}
        if self.metersim.model == "SDM630":
            values.update(v2=v, v3=v)
        self.metersim.update(**values)
        if fault != self.metersim.fault:
            self.metersim.fault = fault

    def endpoints(self):
        eps = {name: p.path for name, p in self.ptys.items()}
        if self.slcan is not None:
            eps["can"] = self.slcan.port_name
        if self._listener is not None:
            eps["repl_socket"] = "socket://127.0.0.1:{}".format(self._listener.getsockname()[1])
        eps["state"] = str(self.state_dir)
        return eps

    def _spawn(self, raw):
        cmd = [vm.node_binary(), str(vm.MPVM), "board", "--state", str(self.state_dir)]
        if raw:
            cmd.append("--raw-repl")
        if self.heap:
            cmd += ["--heap", str(self.heap)]
        env = vm.node_env()
        if self.plant_state is not None:
            env[PLANT_ENV] = self.plant_state   # the plant as the last boot left it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent, env=env)
        threading.Thread(target=self._pass_stderr, args=(self.proc.stderr,), daemon=True).start()
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.boots += 1
        self._held_for_reset = False
        for ch, data in self._pending_in:
            self._send(ch, data)
        self._pending_in = []

    # -- the relay ---------------------------------------------------------------------------

    def _send(self, ch, data):
        if self._held_for_reset and ch != CH_CONTROL:
            self._pending_in.append((ch, data))
            return
        try:
            self.proc.stdin.write(struct.pack("<BI", ch, len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._pending_in.append((ch, data))  # the VM is restarting; deliver to the next one

    def send_port(self, name, data):
        """Bytes arriving on one of the board's ports from an in-process peer (e.g. slcan)."""
        with self._lock:
            self._send(PORTS[name], data)

    def on_port_output(self, name, hook):
        """Route the firmware's output on a port to hook(bytes) instead of its pseudo-terminal."""
        self._port_hooks[PORTS[name]] = hook

    def _repl_out(self, data):
        self.ptys["repl"].write(data)
        if self._client is not None:
            try:
                self._client.sendall(data)
            except OSError:
                self._drop_client()

    def _drop_client(self, sel=None):
        if self._client is not None:
            if sel is not None:
                try:
                    sel.unregister(self._client)
                except (KeyError, ValueError):
                    pass
            self._client.close()
            self._client = None

    def _relay(self):
        sel = selectors.DefaultSelector()
        by_fd = {}
        for name, p in self.ptys.items():
            ch = CH_REPL if name == "repl" else PORTS[name]
            sel.register(p.master, selectors.EVENT_READ, ("pty", ch))
            by_fd[p.master] = ch
        if self._listener is not None:
            sel.register(self._listener, selectors.EVENT_READ, ("listen", None))
        buf = b""
        proc = None
        while True:
            if proc is not self.proc:
                if proc is not None:
                    try:
                        sel.unregister(proc.stdout)
                    except (KeyError, ValueError):
                        pass
                proc = self.proc
                buf = b""
                sel.register(proc.stdout, selectors.EVENT_READ, ("vm", None))
            for key, _ in sel.select(0.5):
                kind, ch = key.data
                if kind == "pty":
                    try:
                        data = os.read(key.fd, 4096)
                    except (BlockingIOError, OSError):
                        continue
                    if data and ch == CH_PLANT:
                        data = self._plant_input(data)
                    if data:
                        with self._lock:
                            self._send(ch, data)
                elif kind == "listen":
                    conn, _ = self._listener.accept()
                    self._drop_client(sel)
                    conn.setblocking(False)
                    self._client = conn
                    sel.register(conn, selectors.EVENT_READ, ("client", CH_REPL))
                elif kind == "client":
                    try:
                        data = self._client.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        with self._lock:
                            self._send(CH_REPL, data)
                    else:
                        self._drop_client(sel)
                elif kind == "vm":
                    try:
                        data = os.read(proc.stdout.fileno(), 65536)
                    except BlockingIOError:
                        data = None
                    except (OSError, ValueError):
                        data = b""
                    if data:
                        buf += data
                        buf = self._frames(buf)
                    elif data == b"":
                        if not self._vm_ended(proc, sel):
                            sel.close()
                            return

    def _frames(self, buf):
        while len(buf) >= 5:
            ch, n = struct.unpack_from("<BI", buf)
            if len(buf) < 5 + n:
                break
            payload, buf = buf[5:5 + n], buf[5 + n:]
            if ch == CH_REPL:
                self._repl_out(payload)
            elif ch == CH_CONTROL:
                msg = json.loads(payload)
                if msg["op"] == "ready":
                    self.ready.set()
                elif msg["op"] == "soft_reset":
                    self._restart_raw = bool(msg.get("raw"))
                elif msg["op"] == "saved":
                    with self._saved:
                        self._saves += 1
                        self._saved.notify_all()
                elif msg["op"] == "plant" and isinstance(msg.get("state"), str):
                    self.plant_state = msg["state"]
                    self.plant_handovers += 1
            elif ch in self._port_hooks:
                self._port_hooks[ch](payload)
            else:
                for name, c in PORTS.items():
                    if c == ch:
                        self.ptys[name].write(payload)
        return buf

    def _pass_stderr(self, pipe):
        """The VM's own error output goes on to ours once it has come up; before that it is
        held, so that a VM that cannot start is reported in one line (start()), not a trace."""
        for line in iter(pipe.readline, b""):
            with self._lock_err:
                if self.ready.is_set():
                    self._flush_early()
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
                else:
                    self._early.append(line)
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr_tail.append(text)
        pipe.close()

    def _flush_early(self):
        if self._early:
            sys.stderr.buffer.write(b"".join(self._early))
            sys.stderr.flush()
            self._early = []

    def _start_failure(self, proc):
        """One line on why a VM that never came up ended: its last error line, or its code."""
        time.sleep(0.2)   # let the stderr thread take the last lines
        errors = [t for t in self._stderr_tail if "Error" in t or "error" in t]
        last = (errors or list(self._stderr_tail) or ["exit code {}".format(proc.returncode)])[-1]
        return "{} (exit code {})".format(last[:300], proc.returncode)

    def _vm_ended(self, proc, sel):
        """The VM process ended. Returns True if the board goes on (restarted)."""
        proc.wait()
        try:
            sel.unregister(proc.stdout)
        except (KeyError, ValueError):
            pass
        if self.stopping:
            return False
        if not self.ready.is_set():
            # never came up: restarting would only repeat the failure, so start() reports it
            self.start_error = self._start_failure(proc)
            return False
        raw = self._restart_raw
        self._restart_raw = None
        if raw is None:
            # Not a soft reset: the VM crashed or was killed. A board's watchdog would reset it.
            self._repl_out(b"\r\nMPY: VM exited with code %d; restarting\r\n" % proc.returncode)
            raw = False
        else:
            self._repl_out(b"MPY: soft reboot\r\n")
        with self._lock:
            self._spawn(raw=raw)
        return True

    def sync(self, timeout=30):
        """Mirror the board's files to the state folder now, and return once they are there
        (the VM mirrors them every 300 ms by itself; this waits on the mirror, not a clock)."""
        with self._saved:
            n = self._saves
            with self._lock:
                self._send(CH_CONTROL, b'{"op": "save"}')
            if not self._saved.wait_for(lambda: self._saves > n, timeout):
                raise BoardError("the board did not mirror its files within {} s".format(timeout))

    # -- lifetime ----------------------------------------------------------------------------

    def power_cut(self):
        """Kill the VM at once, as a power loss would; the board then boots again."""
        self.proc.kill()

    def stop(self, timeout=10):
        """Save the board's files and end the VM."""
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with self._lock:
                self._send(CH_CONTROL, b'{"op": "shutdown"}')
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        self._to_bus.put(None)
        if self.metersim is not None:
            self.metersim.stop()
        if self.slcan is not None:
            self.slcan.close()
        self._unlink_endpoints()
        for p in self.ptys.values():
            p.close()
        if self._listener is not None:
            self._listener.close()
        self._drop_client()
