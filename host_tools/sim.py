"""`v2g sim` library: run a scenario against the firmware in simulated time.

The scenario driver (boards/sim/scenario_run.py) runs inside the firmware's own
interpreter: the MicroPython VM (Node + WebAssembly, the default, the one that says
whether the firmware really is MicroPython) or CPython in this process. It runs the
firmware's own shell (app/run.py stepping app/station.py) on the simulated board with a
simulated clock. Both give the same timeline: JSON Lines of `tick`, `event` and a final
`summary` (shared spec scenario.md).

    result = simulate(load("scenarios/demo.toml"), vm="micropython", on_record=show)
    # show(record, line): each parsed record and its text as the firmware printed it
    result.records, result.speed   # simulated seconds per wall second
"""

import json
import time
from pathlib import Path

from host_tools import vm as vmmod
from host_tools.scenario import ScenarioError, load  # noqa: F401  (re-exported for callers)

VMS = ("micropython", "cpython")

# Code run inside the VM: the scenario arrives as JSON text in the code string.
VM_CODE = """
import json
from board import scenario_run
await scenario_run.run_async(json.loads({scenario!r}))
"""


class SimError(RuntimeError):
    """The simulation itself failed (the firmware raised, the VM is missing or crashed)."""


class ReaderGone(Exception):
    """Whoever reads the timeline stopped (`| head`): the run ends there, nobody's fault.
    Raised by an on_record callback; never reported as the firmware's failure."""


class SimResult:
    def __init__(self, scenario, vm, records, wall_s, other_lines, raw):
        self.scenario = scenario
        self.raw = raw                     # the record lines exactly as the firmware printed them
        self.vm = vm
        self.records = records
        self.wall_s = wall_s
        self.other_lines = other_lines     # anything the firmware printed that is not a record

    @property
    def summary(self):
        for r in reversed(self.records):
            if r.get("kind") == "summary":
                return r
        return None

    @property
    def sim_s(self):
        return self.scenario["duration_ms"] / 1000.0

    @property
    def speed(self):
        """Simulated seconds per wall-clock second."""
        return self.sim_s / self.wall_s if self.wall_s > 0 else float("inf")

    def ticks(self):
        return [r for r in self.records if r.get("kind") == "tick"]

    def events(self):
        return [r for r in self.records if r.get("kind") == "event"]

    def lines(self):
        """The timeline as JSON Lines text, one record per line, as the firmware wrote it."""
        return "".join(line + "\n" for line in self.raw)


def _record(line, records, others, on_record, raw):
    line = line.rstrip("\r\n")
    if not line:
        return
    if line.startswith("{"):
        try:
            rec = json.loads(line)
        except ValueError:
            others.append(line)
            return
        records.append(rec)
        raw.append(line)
        if on_record is not None:
            on_record(rec, line)
    else:
        others.append(line)


def run_cpython(scenario, on_record=None):
    """Run the driver in this process (the firmware imported under CPython)."""
    vmmod.firmware_sys_path()
    from board import scenario_run  # noqa: E402  (path set just above)

    records, others, raw = [], [], []
    t0 = time.perf_counter()
    try:
        scenario_run.run(scenario, out=lambda line: _record(line, records, others, on_record, raw))
    except ReaderGone:
        raise
    except Exception as e:  # the firmware raised: report it with the scenario's name
        raise SimError("firmware raised under CPython: {}: {}".format(type(e).__name__, e)) from e
    wall = time.perf_counter() - t0
    return SimResult(scenario, "cpython", records, wall, others, raw)


def run_micropython(scenario, on_record=None, heap=None):
    """Run the driver in the MicroPython VM, streaming its lines as they come."""
    code = VM_CODE.format(scenario=json.dumps(scenario, sort_keys=True))
    records, others, raw = [], [], []
    t0 = time.perf_counter()
    try:
        proc = vmmod.stream_micropython(code, mounts=vmmod.firmware_mounts("sim"), heap=heap)
    except vmmod.VmMissing as e:
        raise SimError(str(e)) from e
    try:
        for line in proc.stdout:
            _record(line, records, others, on_record, raw)
        err = proc.stderr.read()
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SimError("firmware raised in the MicroPython VM:\n{}".format(
            vmmod.tidy_stderr(err) or "exit status {}".format(rc)))
    return SimResult(scenario, "micropython", records, wall, others, raw)


def simulate(scenario, vm=None, on_record=None):
    """Run a validated scenario on vm ('micropython' or 'cpython'; default: the scenario's)."""
    vm = vm or scenario.get("vm", "micropython")
    if vm not in VMS:
        raise ValueError("vm must be one of {}, got {!r}".format(", ".join(VMS), vm))
    if vm == "cpython":
        result = run_cpython(scenario, on_record)
    else:
        result = run_micropython(scenario, on_record)
    if result.summary is None:
        raise SimError("the run ended without a summary record (last lines: {})".format(
            " | ".join(result.other_lines[-5:]) or "none"))
    return result


def default_timeline_path(scenario_path):
    """Where the timeline goes without --out: build/sim/<scenario name>.jsonl in the current folder."""
    return Path("build") / "sim" / (Path(scenario_path).stem + ".jsonl")


def write_timeline(result, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.lines())
    return path


# ---------------------------------------------------------------- plot

def runs(ticks, key):
    """Spans of equal value of a tick field: [(t0_s, t1_s, value)], the last one to the end."""
    from host_tools import plots

    return plots.runs(ticks, key)


def plot(result, path):
    """The run's panels (host_tools/plots.py) as a PNG, or as one self-contained HTML page when
    path ends in .html."""
    from host_tools import plots

    if not result.ticks():
        raise SimError("nothing to plot: the timeline has no tick records")
    run = plots.from_sim(result)
    if Path(path).suffix.lower() in (".html", ".htm"):
        return plots.write_html(run, path)
    return plots.write_png(run, path)
