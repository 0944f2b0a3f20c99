"""The SECC tests' rig: two network namespaces joined by a veth pair, the virtual board, the
plant relay (one plant port shared by the test and the vehicle), `v2g secc` in the charger's
namespace and the package's EVCC (tests/host/secc_evcc.py) in the vehicle's.

Nothing here touches the machine's own interfaces: the veth pair is made for the test and
moved into its namespaces at once; both namespaces are deleted at the end.
"""

import json
import os
import shutil
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
    def __init__(self, tag):
        self.secc_ns, self.ev_ns = "v2gs-" + tag, "v2ge-" + tag
        self.secc_if, self.ev_if = "vs" + tag, "ve" + tag

    def up(self):
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
        return self

    def down(self):
        for ns in (self.secc_ns, self.ev_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


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


class Rig:
    def __init__(self, tmp, tag):
        self.tmp = Path(tmp)
        self.ns = Netns(tag).up()
        self.board = RunningBoard(self.tmp / "board")
        self.relay = PlantRelay(PlantPort(self.board.endpoints["plant"]), self.tmp / "plant.sock")
        self.relay.start()
        self.log_dir = self.tmp / "log"
        self.secc = None
        self.evcc = None

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

    def start_secc(self, *extra, tls=False, config_dir=None):
        args = ["ip", "netns", "exec", self.ns.secc_ns, V2G, "secc", "--iface", self.ns.secc_if,
                "--link", self.board.endpoints["link"], "--log-dir", str(self.log_dir),
                "--port", "8081", "--tls" if tls else "--no-tls", *extra]
        if config_dir:
            args += ["--config-dir", str(config_dir)]
        self.secc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.wait_events(lambda e: e.get("kind") == "worker" and e.get("t") == "ready", 60)

    def start_evcc(self, *extra, out="evcc.jsonl", loop_timeout=2.5):
        """The test vehicle; `loop_timeout` relaxes its 0.5 s charge loop deadline (None keeps
        it: the bench does, and reports what passes it)."""
        if loop_timeout:
            extra = extra + ("--loop-timeout", str(loop_timeout))
        self.evcc_out = self.tmp / out
        self.evcc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.ev_ns, str(PY15), str(EVCC), "--iface", self.ns.ev_if,
             "--plant", self.relay.path, "--out", str(self.evcc_out), *extra],
            stdout=open(self.tmp / "evcc.log", "ab"), stderr=subprocess.STDOUT)

    def events(self):
        return jsonl(self.log_dir / "secc_events.jsonl")

    def evcc_records(self):
        return jsonl(self.evcc_out)

    def central_log(self):
        p = self.log_dir / "central_system.log"
        return p.read_text() if p.exists() else ""

    def wait_events(self, pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(pred(e) for e in self.events()):
                return
            if self.secc is not None and self.secc.poll() is not None:
                raise AssertionError("v2g secc ended: " + self.secc.stderr.read())
            time.sleep(0.2)
        raise AssertionError("no such SECC event within {} s; last: {}".format(timeout, self.events()[-5:]))

    def wait_evcc(self, timeout):
        try:
            return self.evcc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.evcc.kill()
            self.evcc.wait(10)
            raise AssertionError("the EVCC did not finish in {} s; log: {}".format(
                timeout, (self.tmp / "evcc.log").read_text()[-3000:])) from None

    def close(self):
        for p in (self.evcc, self.secc):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.relay.srv.close()
        self.board.stop()
        self.ns.down()


def python():
    return sys.executable
