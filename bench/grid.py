"""Grid protection: the controller's own share of frequency-response and trip timing.

All times here are simulated milliseconds at the 50 ms control step (what the
firmware decides, not how fast this PC runs it), plus the cost of one step in the
MicroPython VM. The meter poll period adds its own latency on top; that is the
meter's share, not measured here.
"""

from host_tools import vm

vm.firmware_sys_path("sim")

from core import config  # noqa: E402
from core.grid import IN_SERVICE, TRIPPED, GridProtection, meter_sense_ms, worst_trip_ms  # noqa: E402
from core.grid_profiles import OF, OV, profiles, UV  # noqa: E402

PROFILES = profiles()

STEP_MS = 50
NOM_MV = 240000


def _in_service(profile, **kw):
    g = GridProtection(profile, NOM_MV, start_in_service=True, **kw)
    nom = PROFILES[profile]["nominal_mhz"]
    t = 0
    for _ in range(200):
        t += STEP_MS
        g.step(t, NOM_MV, nom, True)
    return g, t


def droop_timing(profile, step_mhz, response_ms=500):
    """(latency ms, time to 90 % ms) from the first sample showing a frequency step."""
    g, t = _in_service(profile, response_ms=response_ms)
    nom = PROFILES[profile]["nominal_mhz"]
    # settled target for the stepped frequency, from a second instance run long enough
    ref, rt = _in_service(profile, response_ms=response_ms)
    for _ in range(40 * response_ms // STEP_MS):
        rt += STEP_MS
        ref.step(rt, NOM_MV, nom + step_mhz, True)
    target = ref.droop_ma
    start = g.droop_ma
    first = t + STEP_MS
    moved = t90 = None
    while t90 is None and t < first + 20 * response_ms:
        t += STEP_MS
        g.step(t, NOM_MV, nom + step_mhz, True)
        if moved is None and g.droop_ma != start:
            moved = t - first
        if abs(g.droop_ma - start) * 10 >= abs(target - start) * 9:
            t90 = t - first
    return moved, t90


def worst_trip_lateness(step_ms):
    """max over every stage of every profile of (trip decision - clearing time), ms."""
    worst = None
    for name, p in PROFILES.items():
        nom = p["nominal_mhz"]
        for kind, thr, clear in p["stages"]:
            g = GridProtection(name, NOM_MV, start_in_service=True, step_ms=step_ms, droop_enabled=False)
            if kind in (OV, UV):
                v = NOM_MV * thr // 1000
                mv, mhz = (v + 1 if kind == OV else v - 1), nom
            else:
                mv, mhz = NOM_MV, (thr + 1 if kind == OF else thr - 1)
            t = 0
            g.step(t, NOM_MV, nom, True)
            first = None
            while g.state == IN_SERVICE:
                t += step_ms
                g.step(t, mv, mhz, True)
                if first is None:
                    first = t
            assert g.state == TRIPPED
            late = (t - first) - clear
            worst = late if worst is None else max(worst, late)
    return worst


VM_CODE = """
import time
from core.grid import GridProtection
g = GridProtection('EN50549_50HZ', 230000, enter_service_delay_ms=0, ramp_ms=0)
t = 0
N = 3000
t0 = time.ticks_us()
for i in range(N):
    t += 50
    g.step(t, 230000 + (i % 50) * 40, 50000 + (i % 100) * 5, True)
print(time.ticks_diff(time.ticks_us(), t0) / N)
"""


def vm_step_us():
    out = vm.run_micropython(VM_CODE, timeout=120)
    return float(out.strip().splitlines()[-1])


def rows():
    out = []
    for profile, step in (("IEEE1547_CAT_II_60HZ", 500), ("EN50549_50HZ", 500)):
        moved, t90 = droop_timing(profile, step)
        tag = "60 Hz" if profile.startswith("IEEE") else "50 Hz"
        out.append(("droop latency, sample to droop_ma ({})".format(tag),
                    moved, "ms (sim)", "<= {} ms (one step)".format(STEP_MS),
                    moved is not None and moved <= STEP_MS))
        out.append(("droop 90 % time, T90 0.5 s ({})".format(tag),
                    t90, "ms (sim)", "<= 500 ms", t90 is not None and t90 <= 500))
    # the meter task's sampling at the default settings (SDM630, METER_BAUD 38400, pumped
    # between control steps) and what the firmware's rule makes of it for the fastest stages
    sense = meter_sense_ms(config.validate({}))
    out.append(("grid step -> first control step using a reading that shows it, worst, defaults "
                 "(meter_map.sense_ms)", sense, "ms (computed)", "<= 100 ms (EN 50549 0.1 s stages)",
                 sense <= 100))
    for clear, what in ((100, "EN 50549 OV2/OF/UF 0.1 s"), (160, "IEEE 1547 OV2/UV2/OF2/UF2 0.16 s")):
        t = worst_trip_ms(clear, STEP_MS, sense)
        out.append(("latest trip from the grid step, {}, defaults".format(what), t, "ms (computed)",
                    "<= {} ms".format(clear), t <= clear))
    for step_ms in (50, 70):
        late = worst_trip_lateness(step_ms)
        out.append(("trip minus clearing, worst, {} ms step".format(step_ms),
                    late, "ms (sim)", "<= 0 ms", late <= 0))
    try:
        us = vm_step_us()
        out.append(("step() in the MicroPython VM", us, "us", "", None))
        out.append(("step() on STM32F405, est. VM x 15", us * 15, "us",
                    "< 2500 us (5 % of a 50 ms step)", us * 15 < 2500))
    except vm.VmMissing as e:
        out.append(("step() in the MicroPython VM", "skipped: {}".format(e), "", "", None))
    return out
