"""Start `v2g vboard` as a user would (a subprocess) and hand its endpoints to tests."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import serial

from host_tools.link import encode_frame

V2G = str(Path(sys.executable).with_name("v2g"))
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


class RunningBoard:
    def __init__(self, state, *extra, env=None):
        self.state = Path(state)
        self.proc = subprocess.Popen([V2G, "vboard", "--state", str(state), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=None if env is None else dict(os.environ, **env))
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("vboard did not start: " + self.proc.stderr.read())
        self.endpoints = json.loads(line)

    @property
    def repl(self):
        return self.endpoints["repl"]

    def mpremote(self, *args, check=True, timeout=60):
        proc = subprocess.run([MPREMOTE, "connect", self.repl, *args], capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError("mpremote {} failed: {}{}".format(args, proc.stdout, proc.stderr))
        return proc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return self.proc.returncode

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def vm_pids(state):
    """The VM processes serving the board with this state folder."""
    out = subprocess.run(["pgrep", "-f", "mpvm.mjs board --state {}".format(state)],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# -- a host that floods the link, and the plant port --------------------------------------------

LINE_BYTES_S = 115200 // 10      # the board's link: 115200 baud, 8N1
CHUNK_S = 0.05                   # paced one control step's worth at a time


class PlantPort:
    """The plant port: one JSON event a line, one JSON reply a line."""

    def __init__(self, path):
        self.port = serial.Serial(path, timeout=5)

    def do(self, **event):
        self.port.write((json.dumps(event) + "\n").encode())
        line = self.port.readline()
        if not line:
            raise RuntimeError("no reply from the plant port to {}".format(event))
        return json.loads(line)

    def state(self):
        return self.do(do="state")["state"]

    def wait(self, pred, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.state()
            if pred(s):
                return s
        raise RuntimeError("the plant never reached the state; last {}".format(s))


def refused_limit(i):
    """A `limit` command the controller refuses (a negative current), with its own txn."""
    return encode_frame({"v": 1, "t": "cmd", "txn": "flood-{}".format(i), "op": "limit",
                         "args": {"charge_a": -1}})


def rtt(i):
    """An `rtt` report: stored nowhere, answered by nothing."""
    return encode_frame({"v": 1, "t": "rtt", "ms": 5})


class LinkFlood(threading.Thread):
    """Writes frames to the host link at `rate` bytes/s (the line rate by default), paced by
    the clock, until stopped; reads and drops what the controller answers."""

    def __init__(self, path, frame, rate=LINE_BYTES_S):
        super().__init__(daemon=True)
        self.rate = rate          # bytes/s; None: as fast as the port takes them
        self.port = serial.Serial(path, timeout=0, write_timeout=30)
        self.frame = frame
        self.stop = threading.Event()
        self.sent = 0
        self.drain = threading.Thread(target=self._drain, daemon=True)

    def _drain(self):   # the controller's answers: read and dropped, as a busy host would
        while not self.stop.is_set():
            if not self.port.read(65536):
                time.sleep(0.01)

    def run(self):
        self.drain.start()
        wire, i = b"", 0
        start = time.monotonic()
        while not self.stop.is_set():
            if self.rate is None:
                if not wire:
                    wire = b"".join(self.frame(k) for k in range(i, i + 200))
                    i += 200
                self.port.write(wire)
                self.sent += len(wire)
                wire = b""
                continue
            due = int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                while len(wire) < 4096:
                    wire += self.frame(i)
                    i += 1
                n = min(due - self.sent, len(wire))
                self.port.write(wire[:n])
                wire = wire[n:]
                self.sent += n
            time.sleep(CHUNK_S)
        self.drain.join(2)
        self.port.close()
