"""Heap per Station.tick in steady state on the MicroPython VM: the whole step (board
inputs, control, link intake, heartbeat echo, rtt, a telemetry sample a second, the
periodic event-log flush), not only the controller's step (bench/sim.py has that).

The station runs a charging session on the simulated board with BufferPorts, the host
playing its part between ticks (tests/firmware/test_station_heap.py's SteadyHost): after
400 ticks into the session, gc.mem_alloc() before and after each of the next 400 ticks,
summed. Goal 0 B: on a board every byte allocated brings the next collection closer.
"""

import json
from pathlib import Path

from host_tools import vm

TESTS = Path(__file__).resolve().parents[1] / "tests" / "firmware"

CODE = """
import gc, json, sys, os
sys.path.insert(0, '/tests')
import test_station_heap as T
try:
    os.mkdir(T.WORK)
except OSError:
    pass
os.chdir(T.WORK)
rig = T.SteadyHost()
rig.run(400, rig.plain_tick)
gc.collect()
per = []
def measured(now):
    a = gc.mem_alloc()
    rig.st.tick(now)
    per.append(gc.mem_alloc() - a)
rig.run(400, measured)
print(json.dumps({'total': sum(per), 'worst': max(per), 'ticks': len(per), 'mode': rig.st.ctl.out.mode,
                  'got': rig.got}))
"""


def figures():
    out = vm.run_micropython(CODE, mounts=vm.firmware_mounts("sim", extra=[(TESTS, "/tests")]), timeout=300)
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no figures from the VM: {}".format(out[-300:]))


def rows():
    f = figures()
    per_tick = f["total"] / f["ticks"]
    return [
        ("heap per Station.tick, steady state (VM; {}, host heartbeat and telemetry each second)".format(
            f["mode"]), per_tick, "B/tick", "0", f["total"] == 0),
        ("heap of the worst Station.tick of those {} (VM)".format(f["ticks"]), f["worst"], "B", "0",
         f["worst"] == 0),
    ]


if __name__ == "__main__":
    for row in rows():
        print(row)
