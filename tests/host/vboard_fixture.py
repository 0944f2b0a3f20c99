"""Start `v2g vboard` as a user would (a subprocess) and hand its endpoints to tests."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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
