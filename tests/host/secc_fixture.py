"""The SECC tests' rig: two network namespaces joined by a veth pair, the virtual board, the
plant relay (one plant port shared by the test and the vehicle), `v2g secc` in the charger's
namespace and the package's EVCC (tests/host/secc_evcc.py) in the vehicle's.

Nothing here touches the machine's own interfaces: the veth pair is made for the test and
moved into its namespaces at once; both namespaces are deleted at the end.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from vboard_fixture import V2G, PlantPort, RunningBoard

ROOT = Path(__file__).resolve().parents[2]
PY15 = ROOT / ".venv-15118" / "bin" / "python"
EVCC = Path(__file__).with_name("secc_evcc.py")
SITE = Path(__file__).with_name("secc_site")


def can_run():
    """Why the SECC tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not PY15.exists():
        return "no .venv-15118 (make venv-15118)"
    if shutil.which("java") is None:
        return "no JRE for the EXI codec"
    if shutil.which("ip") is None:
        return "no ip command"
    return None


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, text=True)


class Netns:
    """Two namespaces joined by a veth pair, named after `tag` (the pid, or a runner's worker
    id), so parallel runs never share or delete each other's."""

    def __init__(self, tag):
        self.secc_ns, self.ev_ns = "v2gs-" + tag, "v2ge-" + tag
        self.secc_if, self.ev_if = "vs" + tag, "ve" + tag

    def up(self):
        self.down()     # a run of this pid that was killed before its clean-up
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self):
        sh("ip", "netns", "add", self.secc_ns)
        sh("ip", "netns", "add", self.ev_ns)
        sh("ip", "link", "add", self.secc_if, "type", "veth", "peer", "name", self.ev_if)
        sh("ip", "link", "set", self.secc_if, "netns", self.secc_ns)
        sh("ip", "link", "set", self.ev_if, "netns", self.ev_ns)
        for ns, ifc in ((self.secc_ns, self.secc_if), (self.ev_ns, self.ev_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.{}.accept_dad=0".format(ifc))
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", ifc, "up")
        # the link-local addresses come with the link; wait until both have one
        for ns, ifc in ((self.secc_ns, self.secc_if), (self.ev_ns, self.ev_if)):
            for _ in range(100):
                out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-6", "addr", "show", "dev", ifc],
                                     capture_output=True, text=True).stdout
                if "fe80::" in out and "tentative" not in out:
                    break
                time.sleep(0.05)

    def down(self):
        # deleting a namespace deletes the veth end in it, and with it its peer
        for ns in (self.secc_ns, self.ev_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.secc_if], capture_output=True)


class PlantRelay(threading.Thread):
    """One plant port, many users: each connection on a UNIX socket sends JSON lines and gets
    the plant's replies; requests are serialised with the test's own."""

    def __init__(self, plant: PlantPort, path):
        super().__init__(daemon=True)
        self.plant = plant
        self.lock = threading.Lock()
        self.path = str(path)
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(8)

    def do(self, **event):
        with self.lock:
            return self.plant.do(**event)

    def run(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            with c, c.makefile("rwb") as f:
                for line in f:
                    reply = self.do(**json.loads(line))
                    f.write((json.dumps(reply) + "\n").encode())
                    f.flush()
        except (OSError, ValueError):
            pass   # the vehicle was killed mid-request (the fault tests do that)


def jsonl(path):
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


class Tail:
    """A JSON-lines file read from a given offset on: one test's part of a shared log."""

    def __init__(self, path, from_start=False):
        self.path = Path(path)
        self.offset = 0 if from_start or not self.path.exists() else self.path.stat().st_size

    def read(self):
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        out = []
        for line in data.decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def text(self):
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


def wait_for(pred, timeout, what, poll=0.05):
    """Until pred() is true (its value is returned); AssertionError naming `what` after
    `timeout` s. A short poll of a file the other process appends to: no fixed sleep."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("not within {} s: {}".format(timeout, what() if callable(what) else what))
        time.sleep(poll)


# the SECC's sequence timeout in these tests (ISO 15118-20: 60 s; secc_site/sitecustomize.py)
SEQUENCE_TIMEOUT_S = 5


class Station:
    """What the SECC tests of one module share: the namespace pair, the virtual board with its
    plant relay, and `v2g secc` (restarted only when a test killed it or needs other
    options). Each test gets a Rig on it, which puts the station back as it found it."""

    def __init__(self, tmp, tag):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.ns = Netns(tag).up()
        self.board = None
        self.relay = None
        self.secc = None
        self.secc_key = None
        self.spare = None        # a vehicle process with its codec up, waiting for its session
        self.spares = 0
        self.log_dir = self.tmp / "log"
        try:
            self.board = RunningBoard(self.tmp / "board")
            self.relay = PlantRelay(PlantPort(self.board.endpoints["plant"]), self.tmp / "plant.sock")
            self.relay.start()
            self.wait_controller()
        except BaseException:
            self.close()
            raise

    def wait_controller(self, timeout=60):
        """Until the firmware runs and takes host events (the VM boots in a few seconds)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            res = self.relay.do(do="heartbeat_restore")
            if res.get("ok"):
                # commissioning settings: a short enter-service delay, as tests/host do elsewhere
                res = self.relay.do(do="config", GRID_ENTER_SERVICE_DELAY_S=1, GRID_RAMP_S=0)
                assert res["ok"], res
                return
            time.sleep(0.2)
        raise AssertionError("the controller never started: {}".format(res))

    def events(self):
        return jsonl(self.log_dir / "secc_events.jsonl")

    def secc_alive(self):
        return self.secc is not None and self.secc.poll() is None

    def stop_secc(self):
        p, self.secc = self.secc, None
        if p is None:
            return
        kids = children(p.pid)       # the worker: it ends when the gateway's socket closes
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for k in kids:
            try:
                for _ in range(100):
                    os.kill(k, 0)
                    time.sleep(0.05)
                os.kill(k, signal.SIGKILL)     # still there after 5 s: not to hold the port
            except ProcessLookupError:
                pass

    def ensure_secc(self, tls=False, config_dir=None, link=None):
        """`v2g secc` running with these options and its worker ready (started, or restarted
        after a test killed it, its codec, or wanted other options). `link`: another way to
        the board's link than its own port (a LinkTap's)."""
        key = (tls, str(config_dir) if config_dir else None, link)
        if not self.secc_alive() or self.secc_key != key:
            self.stop_secc()
            args = ["ip", "netns", "exec", self.ns.secc_ns, V2G, "secc", "--iface", self.ns.secc_if,
                    "--link", link or self.board.endpoints["link"], "--log-dir", str(self.log_dir),
                    "--port", "8081", "--tls" if tls else "--no-tls"]
            if config_dir:
                args += ["--config-dir", str(config_dir)]
            env = dict(os.environ, V2G_TEST_SECC_SEQUENCE_TIMEOUT_S=str(SEQUENCE_TIMEOUT_S),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])))
            self.secc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.tmp / "secc.err", "ab"),
                                         env=env)
            self.secc_key = key
            self.secc_events = Tail(self.log_dir / "secc_events.jsonl")

        def ready():
            if not self.secc_alive():
                raise AssertionError("v2g secc ended: " + (self.tmp / "secc.err").read_text()[-3000:])
            kinds = [e for e in self.secc_events.read()
                     if e.get("kind") == "worker_died" or (e.get("kind") == "worker" and e.get("t") == "ready")]
            return kinds and kinds[-1]["kind"] == "worker"
        wait_for(ready, 90, "the SECC worker never became ready")

    def pki(self):
        """The station's test PKI (tests/host/v2g_pki.py), made on first use."""
        if getattr(self, "_pki", None) is None:
            from v2g_pki import make
            self._pki = make(self.tmp / "pki")
        return self._pki

    def spawn_vehicle(self):
        """A test vehicle whose JVM starts now and waits for its session's arguments: made
        while a test runs, it is ready when the next test wants it."""
        self.spares += 1
        args_file = self.tmp / "vehicle-{}.args".format(self.spares)
        log = self.tmp / "vehicle-{}.log".format(self.spares)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.ev_ns, str(PY15), str(EVCC), "--iface", self.ns.ev_if,
             "--plant", self.relay.path, "--args-from", str(args_file)],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
        return proc, args_file, log

    def take_vehicle(self):
        if self.spare is not None and self.spare[0].poll() is None:
            v, self.spare = self.spare, None
            return v
        return self.spawn_vehicle()

    def close(self):
        if self.spare is not None and self.spare[0].poll() is None:
            self.spare[0].kill()
            self.spare[0].wait(10)
        self.stop_secc()
        if self.relay is not None:
            self.relay.srv.close()
        if self.board is not None:
            self.board.stop()
        self.ns.down()


class LinkTap:
    """`v2g secc`'s link to the board through the test, so that the test can put a host command
    the plant port has no word for (the bridge's soc_target with a departure) on the same line.
    `v2g secc` opens `url`, a pseudo-terminal; its frames go to the board whole, the test's
    own between them, and everything the board sends goes back to it (the result of a test
    command too: its link client counts it as late and ignores it)."""

    def __init__(self, board_url):
        import serial
        import tty

        from host_tools.link import PortLock
        self.board_lock = PortLock(board_url).acquire()      # as a link client would hold it
        self.board = serial.serial_for_url(board_url, baudrate=115200, timeout=0.05)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)          # no echo before `v2g secc` opens it
        os.set_blocking(self.master, False)
        self.url = os.ttyname(self.slave)
        self.write_lock = threading.Lock()
        self.waiting = {}               # txn -> [threading.Event, result]
        self.running = True
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._up, self._down)]
        for t in self.threads:
            t.start()

    def _up(self):
        import select
        buf = b""
        while self.running:
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                buf += os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                time.sleep(0.05)
                continue
            *frames, buf = buf.split(b"\x00")
            for f in frames:
                with self.write_lock:
                    self.board.write(f + b"\x00")

    def _down(self):
        from host_tools.link import Deframer
        de = Deframer()
        while self.running:
            data = self.board.read(4096)
            if not data:
                continue
            try:
                os.write(self.master, data)
            except (BlockingIOError, OSError):
                pass                   # no one reads the line now: its bytes are lost, as on a wire
            for msg in de.feed(data):
                w = self.waiting.get(msg.get("txn")) if msg.get("t") == "res" else None
                if w is not None:
                    w[1] = msg
                    w[0].set()

    def command(self, op, args, txn, timeout=5.0):
        """One host command on the line; its result (the `res` message)."""
        from host_tools.link import VERSION, encode_frame
        w = self.waiting[txn] = [threading.Event(), None]
        frame = encode_frame({"v": VERSION, "t": "cmd", "txn": txn, "op": op, "args": args})
        with self.write_lock:
            self.board.write(b"\x00" + frame)
        assert w[0].wait(timeout), "no result for {} {}".format(op, txn)
        return self.waiting.pop(txn)[1]

    def close(self):
        self.running = False
        for t in self.threads:
            t.join(5)
        self.board.close()
        self.board_lock.release()
        os.close(self.master)
        os.close(self.slave)


class TxnRelay:
    """The plant relay as one test sees it: its txns made unique on the shared controller
    (the journal answers a repeated txn from memory, applying nothing) and the settings it
    changes noted, to be put back afterwards."""

    def __init__(self, relay, n):
        self.relay = relay
        self.n = n
        self.config_keys = set()

    def do(self, **event):
        if "txn" in event:
            event["txn"] = "{}-{}".format(event["txn"], self.n)
        if event.get("do") == "config":
            self.config_keys.update(k for k in event if k != "do")
        return self.relay.do(**event)


class Rig:
    """One test on a Station: `v2g secc` (shared), the test vehicle (its own process), and this
    test's part of the SECC's logs. Standalone (station=None: the bench) it has a station of
    its own."""

    count = 0

    def __init__(self, tmp, tag=None, station=None):
        self.own = station is None
        self.tmp = Path(tmp)
        self.station = station or Station(self.tmp / "station", tag)
        Rig.count += 1
        self.ns = self.station.ns
        self.board = self.station.board
        self.relay = TxnRelay(self.station.relay, Rig.count)
        self.log_dir = self.station.log_dir
        self.log = Tail(self.log_dir / "secc_events.jsonl")
        self.clog = Tail(self.log_dir / "central_system.log")
        self.evcc = None
        self.evcc_out = self.tmp / "evcc.jsonl"
        self.evcc_log = self.tmp / "evcc.log"

    @property
    def secc(self):
        return self.station.secc

    def wait_controller(self, timeout=60):
        wait_for(lambda: self.station.relay.do(do="heartbeat_restore").get("ok"), timeout,
                 "the controller takes no host events")

    def start_secc(self, tls=False, config_dir=None, link=None):
        self.station.ensure_secc(tls=tls, config_dir=config_dir, link=link)

    def start_evcc(self, *extra, out="evcc.jsonl", loop_timeout=2.5):
        """The test vehicle; `loop_timeout` relaxes its 0.5 s charge loop deadline (None keeps
        it: the bench does, and reports what passes it)."""
        if loop_timeout:
            extra = extra + ("--loop-timeout", str(loop_timeout))
        self.evcc_out = self.tmp / out
        self.evcc_stop = self.tmp / (out + ".stop")
        self.evcc, args_file, self.evcc_log = self.station.take_vehicle()
        if self.station.spare is None:
            # the next vehicle's JVM starts while this one drives: ready when it is wanted
            self.station.spare = self.station.spawn_vehicle()
        tmp = args_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(["--out", str(self.evcc_out), "--stop-file", str(self.evcc_stop),
                                   *extra]))
        os.rename(tmp, args_file)    # whole, or not there

    def events(self):
        return self.log.read()

    def evcc_records(self):
        return jsonl(self.evcc_out)

    def central_log(self):
        return self.clog.text()

    def wait_events(self, pred, timeout):
        def hit():
            if self.station.secc is not None and self.station.secc.poll() is not None:
                raise AssertionError("v2g secc ended: " + (self.station.tmp / "secc.err").read_text()[-3000:])
            return any(pred(e) for e in self.events())
        wait_for(hit, timeout, lambda: "no such SECC event; last: {}".format(self.events()[-5:]))

    def wait_records(self, pred, timeout, n=1):
        """Until the vehicle has recorded `n` records that pred() takes; they are returned."""
        def hits():
            got = [e for e in self.evcc_records() if pred(e)]
            if len(got) >= n:
                return got
            if self.evcc is not None and self.evcc.poll() is not None:
                raise AssertionError("the vehicle ended (exit {}) with {} of {} records; log: {}".format(
                    self.evcc.returncode, len(got), n, self.evcc_log.read_text()[-3000:]))
            return None
        return wait_for(hits, timeout, lambda: "the vehicle's records: {}".format(self.evcc_records()[-3:]))

    def wait_evcc(self, timeout):
        try:
            return self.evcc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.evcc.kill()
            self.evcc.wait(10)
            raise AssertionError("the EVCC did not finish in {} s; log: {}".format(
                timeout, self.evcc_log.read_text()[-3000:])) from None

    def finish_evcc(self, timeout=5):
        """The vehicle ends its session as a driver would (SessionStop), then its process."""
        if self.evcc is None or self.evcc.poll() is not None:
            return
        self.evcc_stop.touch()
        try:
            self.evcc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop_evcc()

    def stop_evcc(self):
        p = self.evcc
        if p is not None and p.poll() is None:
            for q in children(p.pid):
                try:
                    os.kill(q, signal.SIGCONT)   # a test may have stopped it
                except ProcessLookupError:
                    pass
            p.kill()
            p.wait(10)

    def settle(self):
        """The station as the next test expects it: the vehicle gone and unplugged, the SECC's
        session (if one started) ended, the settings this test changed back at their
        defaults, no binding CSMS limit, the host heartbeat taken, no HLC failure left."""
        from core import config as C

        self.finish_evcc()
        if self.station.spare is None:
            self.station.spare = self.station.spawn_vehicle()    # its JVM starts while we wait
        r = self.station.relay
        if self.station.secc_alive():
            # the SECC reports a session's end 2 s after it (its data link tear-down): wait
            # for it while still plugged in, so that the unplug below clears what it causes
            def ended():
                ends = [e.get("t") for e in self.events() if e.get("kind") == "worker"
                        and e.get("t") in ("state", "ended", "ready")]
                return not ends or ends[-1] in ("ended", "ready")
            try:
                wait_for(ended, 15, "the SECC's session never ended")
            except AssertionError:
                self.station.stop_secc()     # a stuck session must not leak into the next test
        assert r.do(do="unplug")["ok"]
        defaults = {k: C.SCHEMA[k][3] for k in self.relay.config_keys if k in C.SCHEMA}
        if defaults:
            res = r.do(do="config", **defaults)
            assert res["ok"], res
        # the plant port cannot clear a CSMS limit (null); 80 A is above any station's own
        assert r.do(do="limit", charge_a=80, discharge_a=80, txn="settle-{}".format(self.relay.n))["ok"]
        assert r.do(do="heartbeat_restore")["ok"]
        if self.station.secc_alive():
            def idle():
                evse = [e for e in self.station.events() if e["kind"] == "evse"]
                return evse and evse[-1].get("cp") == "A" and not evse[-1]["stop"]
            wait_for(idle, 15, lambda: "the station is not idle: {}".format(self.station.events()[-3:]))

    def close(self):
        try:
            if self.own:
                self.stop_evcc()
            else:
                self.settle()
        finally:
            if self.own:
                self.station.close()


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def python():
    return sys.executable
