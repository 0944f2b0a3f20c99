"""Simulator: simulated-to-wall speed of a one-hour scenario under each interpreter (and,
for the VM, simulated-to-CPU: the VM process's own CPU time, which a shared machine does
not inflate), and the firmware's heap in the MicroPython VM (resident after start-up,
allocation per control step with the plant feeding real inputs), and the time a control
step takes with the controller and the plant alone and inside the firmware's own shell
(app/station.py on the simulated board, as `v2g sim` runs it), measured in one VM session,
and what the real shell costs: the hour with app/run.py's loop against the station stepped
directly, minute by minute in turn in one VM session.

Speed goal: one hour of station time in under 18 s (200x) on the MicroPython VM. Heap goal:
0 bytes allocated per control step (the resident budgets are bench/heap.py's,
docs/board-budget.md). Heap per step is
gc.mem_alloc() before and after 1,000 steps with nothing collected in between (in the
WebAssembly VM a collection frees nothing until Python returns to the event loop, so the
difference is exactly what the steps allocated).
"""

import json
import resource

from host_tools import sim, vm

HOUR_MS = 3600 * 1000


def hour_scenario():
    """A busy hour: a session with charge, discharge, a heartbeat loss, meter and grid events."""
    ev = []

    def at(t_s, do, **args):
        ev.append({"t_ms": int(t_s * 1000), "do": do, "args": args})

    at(1, "plug")
    at(3, "ev_ready")
    for k in range(6):
        base = 300 + k * 540
        at(base, "setpoint", soc_target_pct=40 if k % 2 == 0 else 70, txn="h-%d" % k)
        at(base + 120, "grid_ramp", frequency_hz=50.3, over_s=30)
        at(base + 180, "grid_ramp", frequency_hz=50.0, over_s=30)
        at(base + 240, "evse_temp", c=70.0)
        at(base + 300, "evse_temp", c=30.0)
    at(1800, "heartbeat_loss")
    at(1900, "heartbeat_restore")
    at(2000, "meter_fault", kind="timeout")
    at(2010, "meter_restore")
    at(3500, "ev_pause")
    at(3550, "unplug")
    ev.sort(key=lambda e: e["t_ms"])
    return {"version": 1, "name": "bench-hour", "title": "", "duration_ms": HOUR_MS, "vm": "micropython",
            "config": {"GRID_PROFILE": "EN50549_50HZ", "NOMINAL_VOLTAGE_V": 230},
            "ev": {"capacity_kwh": 60.0, "soc_pct": 55.0}, "grid": {}, "events": ev}


HEAP_CODE = """
import gc, json, asyncio
gc.collect()
base = gc.mem_alloc()
from core import config, controller, grid
from board import plant
cfg = config.validate({'GRID_PROFILE': 'EN50549_50HZ', 'NOMINAL_VOLTAGE_V': 230})
ctl = controller.Controller(cfg, grid.GridProtection.from_config(cfg, start_in_service=True))
inp = controller.Inputs()
await asyncio.sleep(0)
gc.collect()
resident = gc.mem_alloc()
p = plant.Plant(ev={'capacity_kwh': 60.0, 'soc_pct': 55.0}, config=cfg.values)
p.apply_event('plug', {})
p.apply_event('ev_ready', {})
t = 0
for k in range(400):             # into a steady charging session, the host present
    ctl.heartbeat(t)
    p.fill_inputs(inp, t)
    out = ctl.step(t, inp)
    ctl.pop_events()
    p.step(t, 50, out)
    t += 50
mode = out.mode
# The inputs stay as the plant last filled them, but the pump's flow switch goes on counting
# (as it would while the pump runs): frozen, its count would raise V2G-013 after
# COOLING_FEEDBACK_S, and an event's text is an allocation this figure is not about.
a0 = gc.mem_alloc()
for k in range(1000):
    ctl.heartbeat(t)
    inp.cooling_count = (inp.cooling_count + 1) & 0x3FFFFFFF
    out = ctl.step(t, inp)
    t += 50
a1 = gc.mem_alloc()
ev_ctl = len(ctl.pop_events())
for k in range(1000):
    ctl.heartbeat(t)
    p.fill_inputs(inp, t)
    out = ctl.step(t, inp)
    p.step(t, 50, out)
    t += 50
a2 = gc.mem_alloc()
ev_loop = len(ctl.pop_events())
# time per step: the controller and the plant alone, then the firmware's shell (app/station.py
# on the simulated board: link, HAL, buses, state files) around them; the same session
import os, time
from app import station as station_mod
from board import hal as sim_hal
from board.clock import SimClock
from core import link
os.mkdir('/tmp/shell_bench')
os.chdir('/tmp/shell_bench')
with open('v2g_vars.json', 'w') as f:
    f.write(config.canonical({'GRID_PROFILE': 'EN50549_50HZ', 'NOMINAL_VOLTAGE_V': 230}))
def ctl_steps(t, n):
    t0 = time.ticks_us()
    for k in range(n):
        ctl.heartbeat(t)
        p.fill_inputs(inp, t)
        out = ctl.step(t, inp)
        p.step(t, 50, out)
        t += 50
    return time.ticks_diff(time.ticks_us(), t0), t
soc, amps = p.soc_pm(), p.ev_ma
clock = SimClock(t)
ports = sim_hal.MemoryPorts()
p2 = plant.Plant(ev={'capacity_kwh': 60.0, 'soc_pct': 55.0}, config=cfg.values)
p2.apply_event('plug', {})
p2.apply_event('ev_ready', {})
hal = sim_hal.Hal(ports=ports, plant=p2, clock=clock, in_service=True)
st = station_mod.Station(hal, t)
ports.inbox['link'] += link.encode_frame(link.cmd('tel', 'telemetry', {'period_ms': 60000, 'batch': 3}))
def shell_steps(n, tel_ms):
    t0 = time.ticks_us()
    for k in range(n):
        now = clock.now_ms
        if now % 1000 == 0:
            ports.inbox['link'] += link.encode_frame(link.hb(now // 1000, now))
        hal.plant_to(now)
        st.tick(now)
        ports.outbox['link'] = b''
        clock.now_ms = now + 50
    return time.ticks_diff(time.ticks_us(), t0)
shell_steps(400, 60000)       # into the same steady charging session
us_ctl, us_shell = 0, 0
for r in range(3):
    d, t = ctl_steps(t, 1000)
    us_ctl += d
    us_shell += shell_steps(1000, 60000)
ports.inbox['link'] += link.encode_frame(link.cmd('tel1', 'telemetry', {'period_ms': 1000, 'batch': 1}))
shell_steps(20, 1000)
us_tel = 0
for r in range(3):
    us_tel += shell_steps(1000, 1000)
print(json.dumps({'base': base, 'soc': soc, 'amps': amps, 'resident': resident, 'ctl': a1 - a0, 'loop': a2 - a1, 'mode': mode,
                  'ev_ctl': ev_ctl, 'ev_loop': ev_loop,
                  'us_ctl': us_ctl / 3000, 'us_shell': us_shell / 3000, 'us_shell_tel': us_tel / 3000,
                  'shell_mode': st.ctl.out.mode, 'shell_amps': p2.ev_ma}))
"""


# What the real shell costs: the bench hour twice in one VM session, minute by minute in
# turn (the same load on both), once as `v2g sim` runs it (app/run.py's control loop asleep on
# the board's clock, stepping app/station.py) and once with the driver stepping the station
# itself (a Station made and ticked as run.py would, no loop, no sleep). The two timelines
# must be the same line for line; the ratio of the times is what the shell costs.
SHELL_CODE = """
import json, time, asyncio
from board import scenario_run as sr
from app.station import Station

class Direct(sr.Run):
    def _resume(self):
        hal = self.hal
        if hal.stop_requested():
            hal.safe_state()
            self.station.save_events()
            return False
        now = self.clock.now_ms
        if self.station is None:
            self.station = Station(hal, now)
        self.station.tick(now)
        self.clock.wake_ms = now + self.period
        return True

sc = json.loads({scenario!r})
lines = {{'shell': [], 'direct': []}}
runs = {{'shell': sr.Run(sc, out=lines['shell'].append), 'direct': Direct(sc, out=lines['direct'].append)}}
us = {{'shell': 0, 'direct': 0}}
more = True
while more:
    for name in ('shell', 'direct'):
        await asyncio.sleep(0)
        t0 = time.ticks_us()
        more = runs[name].advance(60000)
        us[name] += time.ticks_diff(time.ticks_us(), t0)
for name in runs:
    runs[name].finish()
print(json.dumps({{'us_shell': us['shell'], 'us_direct': us['direct'],
                  'same': lines['shell'] == lines['direct'], 'lines': len(lines['shell'])}}))
"""


def shell_figures():
    out = vm.run_micropython(SHELL_CODE.format(scenario=json.dumps(hour_scenario(), sort_keys=True)),
                             mounts=vm.firmware_mounts("sim"), timeout=600)
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no shell figures from the VM: {}".format(out[-300:]))


def heap_figures():
    out = vm.run_micropython(HEAP_CODE, mounts=vm.firmware_mounts("sim"), timeout=300)
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no heap figures from the VM: {}".format(out[-300:]))


def rows():
    sc = hour_scenario()
    out = []
    for name in ("micropython", "cpython"):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = sim.simulate(sc, vm=name)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = r.wall_s
        goal = "< 18 s" if name == "micropython" else ""
        out.append(("1 h scenario wall time ({})".format(name), round(wall, 2), "s", goal,
                    wall < 18 if name == "micropython" else None))
        out.append(("simulated/wall speed ({})".format(name), round(r.speed), "x", ">= 200 x" if name == "micropython"
                    else "", r.speed >= 200 if name == "micropython" else None))
        if name == "micropython":
            # the VM is a process of its own: its CPU time says what the run costs when the
            # machine is shared (wall time then includes the waits for a core)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            out.append(("simulated/CPU speed (micropython, the VM process's CPU time)",
                        round(r.sim_s / cpu), "x", ">= 200 x", r.sim_s / cpu >= 200))
            peak = r.summary["heap_peak_bytes"]
            out.append(("live heap peak during the 1 h run (VM, driver + plant + firmware)", peak, "B", "", None))
    h = heap_figures()
    fw = h["resident"] - h["base"]
    # the budgets apply to the runtime objects (bench/heap.py); this figure also holds the
    # core modules' bytecode, which a board build freezes into flash
    out.append(("sim driver heap after start-up incl. module bytecode (VM; see heap rows)", fw, "B",
                "", None))
    # an event raised in the 1,000 steps allocates its text (by design): named, so a figure
    # above 0 says whether it is that or the step itself
    out.append(("heap per control step, controller only ({} x1000, {} events)".format(h["mode"], h["ev_ctl"]),
                h["ctl"] / 1000.0, "B/step", "0", h["ctl"] == 0))
    out.append(("heap per control step, controller + plant ({} events)".format(h["ev_loop"]),
                h["loop"] / 1000.0, "B/step", "0", h["loop"] == 0))
    # what running the firmware's own shell costs (v2g sim runs app/station.py, not a copy)
    out.append(("time per control step, controller + plant (VM)", round(h["us_ctl"]), "us", "", None))
    out.append(("time per control step, app/station.py tick around them (VM, {})".format(h["shell_mode"]),
                round(h["us_shell"]), "us", "", None))
    out.append(("the shell's share of a simulated control step (VM)",
                round(100.0 * (h["us_shell"] - h["us_ctl"]) / h["us_shell"]), "%", "", None))
    s = shell_figures()
    out.append(("1 h with the real shell / with the station stepped directly (VM, one session; "
                "same timeline: {})".format("yes" if s["same"] else "NO"),
                round(s["us_shell"] / float(s["us_direct"]), 3), "x", "", s["same"]))
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
