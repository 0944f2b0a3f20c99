"""Pilot-fault reaction under a host-link flood, on the virtual board in real time.

The station charges; the host link is fed with refused `limit` commands or with `rtt`
messages, at the line rate (115200 baud, 8N1: 576 bytes per 50 ms step) and unpaced (as fast
as the host writes the pseudo-terminal, megabytes a second: what a USB-CDC link could bring);
two seconds in, the plant shorts the pilot. The figure is the time from the short to the
plant's contactor open, seen on the plant port (which the board answers once a control step,
so a figure can carry one step of polling on top). Goal: what the control step gives
without a flood, three steps (150 ms), plus that step, for the median of the runs; the
worst run is in the row's name (VM timing on a shared 2-core machine: a busy host, and the
flooding writer is one, shows as an occasional late step).
"""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "host"))
from vboard_fixture import LINE_BYTES_S, LinkFlood, PlantPort, RunningBoard, refused_limit, rtt  # noqa: E402

QUICK_GRID = {"GRID_ENTER_SERVICE_DELAY_S": 1, "GRID_RAMP_S": 0}
GOAL_S = 0.15        # three control steps: the pilot filter's debounce
POLL_S = 0.05        # the plant port answers once a step


def reaction(plant):
    """Seconds from the pilot short to the contactor open; the pilot restored after."""
    plant.wait(lambda s: s["contactor"])
    t0 = time.monotonic()
    assert plant.do(do="cp_fault", kind="short")["ok"]
    plant.wait(lambda s: not s["contactor"], timeout=10)
    took = time.monotonic() - t0
    # recovery as an EV does it: the probe after the hold needs it in B, then it asks again
    assert plant.do(do="cp_restore")["ok"] and plant.do(do="ev_pause")["ok"]
    time.sleep(2)   # state F held 1 s, then the probe at +12 V sees B and clears the fault
    plant.wait(lambda s: s["cp"] == "B")
    assert plant.do(do="ev_ready")["ok"]
    return took


FLOODS = (
    ("quiet link", None, None),
    ("refused limit at 115200 baud", refused_limit, LINE_BYTES_S),
    ("rtt at 115200 baud", rtt, LINE_BYTES_S),
    # far past any line rate: as fast as the host writes to the pseudo-terminal
    ("refused limit, unpaced", refused_limit, None),
    ("rtt, unpaced", rtt, None),
)


def measure(runs=3):
    """{flood name: [seconds from the short to the contactor open, one per run]}."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        board = RunningBoard(Path(tmp) / "flash")
        try:
            board.mpremote("exec", "open('v2g_vars.json','w').write({!r})".format(json.dumps(QUICK_GRID)))
            plant = PlantPort(board.endpoints["plant"])
            plant.do(do="reboot")
            time.sleep(1.5)
            assert plant.do(do="plug")["ok"] and plant.do(do="ev_ready")["ok"]
            plant.wait(lambda s: s["contactor"])
            for name, frame, rate in FLOODS:
                out[name] = []
                for _ in range(runs):
                    flood = None
                    if frame is not None:
                        flood = LinkFlood(board.endpoints["link"], frame, rate)
                        flood.start()
                        time.sleep(2)
                    try:
                        out[name].append(reaction(plant))
                    finally:
                        if flood is not None:
                            flood.stop.set()
                            flood.join(5)
            plant.port.close()
        finally:
            board.stop()
    return out


def rows():
    got = measure()
    rows = []
    for name, times in got.items():
        med = statistics.median(times)
        label = "pilot short -> contactor open, {} (median of {}, worst {:.3f} s)".format(
            name if name == "quiet link" else "link flooded: " + name, len(times), max(times))
        rows.append((label, med, "s", "<= {} s + a step".format(GOAL_S), med <= GOAL_S + POLL_S))
    return rows


if __name__ == "__main__":
    res = measure(int(os.environ.get("RUNS", "3")))
    print(json.dumps(res, indent=1))
