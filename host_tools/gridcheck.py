"""Grid compliance checked in the simulator: trips, ride-through, enter service, droop.

Every check builds a scenario (the same dict host_tools/scenario.py makes from a TOML
file, validated by it), runs it through host_tools/sim.py and measures the answer from
the timeline alone: scenario `grid` events, the controller's V2G-50x events and the
`tick` records. Times are simulated milliseconds.

Timing terms (docs/grid.md, "Trip timing rule"):

- step time: the control step that applied the scenario's grid step (its event record);
- first outside reading: the first meter poll at or after the step. The simulated
  meter is polled every METER_POLL_MS from t = 0, so polls fall on multiples of the
  period; the firmware's trip message ("... for N ms") must agree with it, and
  `check_stage` asserts that it does;
- trip time: the V2G-50x event minus the step time.

The firmware's own rule is clearing - step < trip - first reading <= clearing. From
the grid step the meter adds 0 .. (poll - one step): a step just after a poll is seen
one poll period later. `check_stage` measures both phases.

The meter holds a reading until the next poll and the firmware counts a held outside
reading as outside (safety first: it cannot know the excursion ended before a newer
reading says so). So an excursion seen on n readings trips exactly when
n * METER_POLL_MS > the decision time; `predicted_trip_ms` states that rule and
`default_poll_excursions` checks it at the default 500 ms poll.

    python -m host_tools.gridcheck --table      # the profile x stage tables, Markdown
"""

import argparse
import re
import sys

from host_tools import scenario as scmod
from host_tools import sim, vm

vm.firmware_sys_path()
from core import controller as _ctl  # noqa: E402
from core.grid import trip_decision_ms, values_in_force  # noqa: E402
from core.grid_profiles import OF, OV, profiles, UF, UV  # noqa: E402

PROFILES = profiles()

STEP_MS = _ctl.CONTROL_PERIOD_MS
KIND_NAMES = {OV: "OV", UV: "UV", OF: "OF", UF: "UF"}
KIND_CODES = {OV: "V2G-503", UV: "V2G-504", OF: "V2G-505", UF: "V2G-506"}
NOMINAL_V = {"EN50549_50HZ": 230}        # the IEEE profiles use 240 V
# single stages named as the profile's comments name them
STAGE_NAMES = {"EN50549_50HZ": {OV: "OV2", UV: "UV1", OF: "OF", UF: "UF"}}
FAST_POLL_MS = 100       # METER_POLL_MS for the clearing-time runs (the smallest it allows)
DEFAULT_POLL_MS = 500    # METER_POLL_MS default
T_STEP_MS = 10000        # the grid step comes here (the EV charges at full current by then)
MEAN_NAME = "OV 10-min"
PROFILE_ORDER = ("IEEE1547_CAT_I_60HZ", "IEEE1547_CAT_II_60HZ", "IEEE1547_CAT_III_60HZ", "EN50549_50HZ")


class CheckError(AssertionError):
    """A measurement could not be made (the timeline lacks what it needs)."""


# ------------------------------------------------------------------ profile data

class Stage:
    """One trip stage of a profile, thresholds in the firmware's integer units."""

    def __init__(self, profile, name, kind, thr, clearing_ms, nominal_mv):
        self.profile = profile
        self.name = name
        self.kind = kind
        self.clearing_ms = clearing_ms
        self.code = KIND_CODES[kind]
        self.voltage = kind in (OV, UV)
        # grid.py: nominal_mv * thr // 1000 for voltages, mHz as given for frequencies
        self.threshold = nominal_mv * thr // 1000 if self.voltage else thr
        self.above = kind in (OV, OF)

    def value(self, outside):
        """The reading exactly on the threshold (inside) or one unit beyond it (outside)."""
        if not outside:
            return self.threshold
        return self.threshold + 1 if self.above else self.threshold - 1

    def is_outside(self, value):
        return value > self.threshold if self.above else value < self.threshold

    def threshold_text(self):
        if self.voltage:
            return "{:.3f} V".format(self.threshold / 1000)
        return "{:.3f} Hz".format(self.threshold / 1000)

    def __repr__(self):
        return "{} {}".format(self.profile, self.name)


def nominal_mv(profile):
    return NOMINAL_V.get(profile, 240) * 1000


def stages(profile):
    """The profile's trip stages, named OV2/OV1/UV2/UV1/OF2/OF1/UF2/UF1 (2 = the wider one)."""
    p = PROFILES[profile]
    nom = nominal_mv(profile)
    by_kind = {}
    for kind, thr, clr in p["stages"]:
        by_kind.setdefault(kind, []).append((thr, clr))
    out = []
    for kind, thr, clr in p["stages"]:
        same = by_kind[kind]
        if profile in STAGE_NAMES:
            name = STAGE_NAMES[profile][kind]
        elif len(same) == 1:
            name = KIND_NAMES[kind]
        else:
            # the stage furthest from nominal is stage 2
            far = max(same) if kind in (OV, OF) else min(same)
            name = KIND_NAMES[kind] + ("2" if thr == far[0] else "1")
        out.append(Stage(profile, name, kind, thr, clr, nom))
    order = ("OV2", "OV1", "UV1", "UV2", "OF2", "OF1", "UF1", "UF2", "OV", "UV", "OF", "UF")
    out.sort(key=lambda s: order.index(s.name))
    return out


def first_poll_at_or_after(t_ms, poll_ms):
    """When the simulated meter next reads (polls at 0, poll, 2 poll, ...)."""
    return -(-t_ms // poll_ms) * poll_ms


# ------------------------------------------------------------------ scenarios

def _grid_args(stage_or_kind, value):
    voltage = stage_or_kind.voltage if isinstance(stage_or_kind, Stage) else stage_or_kind
    key = "voltage_v" if voltage else "frequency_hz"
    return {key: round(value / 1000, 3)}


def build(profile, events, duration_ms, config=None, ev=None, charge=True):
    """A validated scenario: station in service, EV plugged and ready at 1-2 s,
    charging (SoC 50 % -> 80 %) or discharging (70 % -> 30 %) from 3 s, then `events`
    [(t_ms, do, args)]."""
    cfg = {"GRID_PROFILE": profile, "NOMINAL_VOLTAGE_V": nominal_mv(profile) // 1000}
    cfg.update(config or {})
    evt = {"capacity_kwh": 60.0, "soc_pct": 50.0 if charge else 70.0}
    evt.update(ev or {})
    base = [(1000, "plug", {}), (2000, "ev_ready", {}),
            (3000, "setpoint", {"soc_target_pct": 80 if charge else 30, "txn": "gridcheck"})]
    at = []
    for t_ms, do, args in sorted(base + list(events), key=lambda e: e[0]):
        item = {"t_s": t_ms / 1000, "do": do}
        item.update(args)
        at.append(item)
    data = {"version": 1, "duration_s": duration_ms / 1000, "config": cfg, "ev": evt, "at": at}
    return scmod.validate(data, "gridcheck-{}".format(profile))


def run(scenario, vm_name="cpython"):
    return sim.simulate(scenario, vm=vm_name)


# ------------------------------------------------------------------ timeline readers

def grid_steps(result):
    """Times of the scenario's grid events, in order."""
    return [r["t_ms"] for r in result.events() if r.get("src") == "scenario" and r.get("do") == "grid"]


def trips(result, code=None):
    """(t_ms, code, msg) of every V2G-503..506 raise."""
    out = []
    for r in result.events():
        c = r.get("code")
        if r.get("src") == "controller" and r.get("on") and c in KIND_CODES.values():
            if code is None or c == code:
                out.append((r["t_ms"], c, r["msg"]))
    return out


def code_events(result, code, on):
    return [r["t_ms"] for r in result.events()
            if r.get("src") == "controller" and r.get("code") == code and r.get("on") is on]


def tick_at(result, t_ms):
    """The tick in force at t_ms (ticks are written when something changes)."""
    last = None
    for r in result.ticks():
        if r["t_ms"] > t_ms:
            break
        last = r
    if last is None:
        raise CheckError("no tick at or before {} ms".format(t_ms))
    return last


_FOR_MS = re.compile(r" for (\d+) ms ")


def firmware_elapsed_ms(msg):
    m = _FOR_MS.search(msg)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ trip checks

def trip_run(stage, poll_ms, phase_ms=0, outside=True, hold_ms=None, vm_name="cpython"):
    """Step to just outside (or exactly on) the threshold at T_STEP_MS + phase_ms, hold it,
    step back to nominal. Returns a dict of what the timeline shows."""
    nom = nominal_mv(stage.profile) if stage.voltage else PROFILES[stage.profile]["nominal_mhz"]
    if hold_ms is None:
        hold_ms = stage.clearing_ms + poll_ms + 1000
    t0 = T_STEP_MS + phase_ms
    events = [(t0, "grid", _grid_args(stage, stage.value(outside))),
              (t0 + hold_ms, "grid", _grid_args(stage, nom))]
    sc = build(stage.profile, events, t0 + hold_ms + 1000, config={"METER_POLL_MS": poll_ms})
    res = run(sc, vm_name)
    return _trip_measure(res, stage, poll_ms)


def _trip_measure(res, stage, poll_ms):
    steps = grid_steps(res)
    t_step = steps[0]
    found = [t for t in trips(res) if t[0] >= t_step]
    out = {"t_step": t_step, "poll_ms": poll_ms, "trip_ms": None, "code": None,
           "first_reading": first_poll_at_or_after(t_step, poll_ms), "vm": res.vm}
    if found:
        t, code, msg = found[0]
        out.update(trip_ms=t - t_step, code=code, msg=msg, share_ms=t - out["first_reading"],
                   fw_elapsed_ms=firmware_elapsed_ms(msg))
        tk = tick_at(res, t)
        out["request_at_trip"] = tk["request_a"]
        out["limits_at_trip"] = (tk["limit_charge_a"], tk["limit_discharge_a"])
    return out


def _inside_hold(stage):
    """How long to hold a reading exactly on the threshold: past this stage's clearing
    time, but short of any other stage of the same code that reading is outside of."""
    hold = stage.clearing_ms + 1000
    value = stage.value(False)
    for other in stages(stage.profile):
        if other is not stage and other.kind == stage.kind and other.is_outside(value):
            hold = min(hold, other.clearing_ms - 2 * DEFAULT_POLL_MS)
    return hold


def ride_through_ms(stage, poll_ms):
    """The excursion length that must ride through: seen on fewer samples than the
    clearing time needs, allowing for the meter holding a reading for a poll period."""
    d = (stage.clearing_ms - 1) // poll_ms * poll_ms   # the longest poll multiple below it
    return max(d, STEP_MS)


def overstay_ms(stage, poll_ms):
    """The shortest excursion (in whole polls) longer than the clearing time: must trip."""
    return -(-(stage.clearing_ms + 1) // poll_ms) * poll_ms


def ride_through_run(stage, poll_ms, vm_name="cpython"):
    """A short excursion that must not trip, then 5 s later a full one whose trip time
    must be the full clearing time again (the stage's timer was reset)."""
    nom = nominal_mv(stage.profile) if stage.voltage else PROFILES[stage.profile]["nominal_mhz"]
    t0 = T_STEP_MS
    short = ride_through_ms(stage, poll_ms)
    t1 = first_poll_at_or_after(t0 + short + 5000, poll_ms)
    hold = stage.clearing_ms + poll_ms + 1000
    out_args = _grid_args(stage, stage.value(True))
    back = _grid_args(stage, nom)
    events = [(t0, "grid", out_args), (t0 + short, "grid", back),
              (t1, "grid", out_args), (t1 + hold, "grid", back)]
    sc = build(stage.profile, events, t1 + hold + 1000, config={"METER_POLL_MS": poll_ms})
    res = run(sc, vm_name)
    early = [t for t in trips(res) if t[0] < t1]
    second = _trip_measure_after(res, stage, poll_ms, t1)
    return {"excursion_ms": short, "tripped_short": bool(early), "second": second}


def _trip_measure_after(res, stage, poll_ms, t_from):
    steps = [t for t in grid_steps(res) if t >= t_from]
    found = [t for t in trips(res) if t[0] >= steps[0]]
    if not found:
        return {"trip_ms": None}
    t, code, msg = found[0]
    return {"trip_ms": t - steps[0], "code": code, "share_ms": t - first_poll_at_or_after(steps[0], poll_ms)}


def check_stage(stage, vm_name="cpython", full=True):
    """Every timing case of one stage; a dict for the table and the tests.

    aligned   just outside, METER_POLL_MS=100, the step on a meter poll
    late      the same with the step one control step after a poll (seen a poll later)
    default   the late phase at the default 500 ms poll
    inside    exactly on the threshold, held past the clearing time: no trip
    ride      a short excursion rides through, the next full one trips on time
    """
    r = {"stage": stage}
    r["aligned"] = trip_run(stage, FAST_POLL_MS, 0, vm_name=vm_name)
    if not full:
        return r
    r["late"] = trip_run(stage, FAST_POLL_MS, STEP_MS, vm_name=vm_name)
    r["default"] = trip_run(stage, DEFAULT_POLL_MS, STEP_MS, vm_name=vm_name)
    r["inside"] = trip_run(stage, FAST_POLL_MS, 0, outside=False, hold_ms=_inside_hold(stage),
                           vm_name=vm_name)
    r["inside"]["hold_ms"] = _inside_hold(stage)
    r["ride"] = ride_through_run(stage, FAST_POLL_MS, vm_name=vm_name)
    r["overstay"] = trip_run(stage, FAST_POLL_MS, 0, hold_ms=overstay_ms(stage, FAST_POLL_MS), vm_name=vm_name)
    r["overstay"]["excursion_ms"] = overstay_ms(stage, FAST_POLL_MS)
    r["excursions"] = default_poll_excursions(stage, vm_name=vm_name)
    r["problems"] = stage_problems(r) + excursion_problems(stage, r["excursions"])
    return r


def share_ok(stage, share_ms):
    """docs/grid.md: decided on the last sample at or before the clearing time."""
    return share_ms is not None and stage.clearing_ms - STEP_MS < share_ms <= stage.clearing_ms


def stage_problems(r):
    """What is wrong with one stage's results (empty list: compliant with the rule)."""
    s = r["stage"]
    bad = []
    for key in ("aligned", "late", "default"):
        m = r[key]
        if m["code"] != s.code:
            bad.append("{}: expected {} got {}".format(key, s.code, m["code"]))
            continue
        if not share_ok(s, m["share_ms"]):
            bad.append("{}: {} ms from the first outside reading, clearing {} ms".format(
                key, m["share_ms"], s.clearing_ms))
        if m["fw_elapsed_ms"] != m["share_ms"]:
            bad.append("{}: firmware counted {} ms, timeline {} ms".format(key, m["fw_elapsed_ms"], m["share_ms"]))
        worst = s.clearing_ms + m["poll_ms"] - STEP_MS
        if not (s.clearing_ms - STEP_MS < m["trip_ms"] <= worst):
            bad.append("{}: {} ms from the grid step".format(key, m["trip_ms"]))
        if m["request_at_trip"] != 0 or m["limits_at_trip"] != (0, 0):
            bad.append("{}: current still asked at the trip".format(key))
    if r["inside"]["trip_ms"] is not None:
        bad.append("inside: tripped after {} ms on the threshold".format(r["inside"]["trip_ms"]))
    if r["ride"]["tripped_short"]:
        bad.append("ride-through: a {} ms excursion tripped".format(r["ride"]["excursion_ms"]))
    if r["overstay"]["trip_ms"] != r["aligned"]["trip_ms"]:
        bad.append("a {} ms excursion tripped after {} ms".format(
            r["overstay"]["excursion_ms"], r["overstay"]["trip_ms"]))
    sec = r["ride"]["second"]
    if sec.get("code") != s.code or sec["trip_ms"] != r["aligned"]["trip_ms"]:
        bad.append("ride-through: the next excursion tripped after {} ms, not {}".format(
            sec["trip_ms"], r["aligned"]["trip_ms"]))
    return bad


# ------------------------------------------------------------------ excursions at the default poll

def decision_ms(stage):
    """When the firmware decides the stage, counted from the first outside reading."""
    return trip_decision_ms(stage.clearing_ms, STEP_MS)


def sampling_bounds_ms(stage, poll_ms):
    """(rides, trips): in every phase an excursion of at most `rides` ms never trips and one
    of at least `trips` ms always does (polls and excursion edges on control steps, as in
    the simulator); in between it depends on where the polls fall. rides 0: any excursion a
    poll catches trips."""
    k = decision_ms(stage) // poll_ms
    return k * poll_ms, (k + 1) * poll_ms


def predicted_trip_ms(stage, poll_ms, phase_ms, excursion_ms):
    """The documented rule: polls at multiples of poll_ms, the excursion from T_STEP_MS +
    phase_ms for excursion_ms. Trip time from the grid step, or None (rides through)."""
    t0 = T_STEP_MS + phase_ms
    first = first_poll_at_or_after(t0, poll_ms)
    seen = len(range(first, t0 + excursion_ms, poll_ms))     # readings showing the excursion
    if seen * poll_ms > decision_ms(stage):
        return first - t0 + decision_ms(stage)
    return None


def excursion_cases(stage, poll_ms=DEFAULT_POLL_MS):
    """(label, excursion ms, phase ms) at one poll period: a one-step blip on a poll; just
    inside and just outside the clearing time; the sampling bounds at the worst phase
    (the step one control step after a poll)."""
    rides, always = sampling_bounds_ms(stage, poll_ms)
    clr = stage.clearing_ms
    return (("one-step blip on a poll", STEP_MS, 0),
            ("clearing - 1 step, on a poll", clr - STEP_MS, 0),
            ("clearing - 1 step, worst phase", clr - STEP_MS, STEP_MS),
            ("clearing + 1 step, on a poll", clr + STEP_MS, 0),
            ("longest riding through, worst phase", always - STEP_MS, STEP_MS),
            ("shortest always tripping, worst phase", always, STEP_MS))


def default_poll_excursions(stage, poll_ms=DEFAULT_POLL_MS, vm_name="cpython"):
    """Every excursion_cases() run in the simulator: measured vs predicted trip time."""
    out = []
    for label, dur, phase in excursion_cases(stage, poll_ms):
        m = trip_run(stage, poll_ms, phase, hold_ms=dur, vm_name=vm_name)
        out.append({"label": label, "excursion_ms": dur, "phase_ms": phase, "trip_ms": m["trip_ms"],
                    "code": m["code"], "predicted_ms": predicted_trip_ms(stage, poll_ms, phase, dur)})
    return out


def excursion_problems(stage, runs, poll_ms=DEFAULT_POLL_MS):
    """Measured against the rule, and the long stages against the standard's reading of
    ride-through: shorter than the clearing time never trips, longer trips no later than
    clearing + (poll - one step) from the grid step."""
    bad = []
    for r in runs:
        if r["trip_ms"] != r["predicted_ms"]:
            bad.append("{} ({} ms): tripped after {} ms, rule says {}".format(
                r["label"], r["excursion_ms"], r["trip_ms"], r["predicted_ms"]))
        if r["trip_ms"] is not None and r["code"] != stage.code:
            bad.append("{}: {} instead of {}".format(r["label"], r["code"], stage.code))
        if r["trip_ms"] is not None and r["trip_ms"] > stage.clearing_ms + poll_ms - STEP_MS:
            bad.append("{}: {} ms is later than clearing + poll - step".format(r["label"], r["trip_ms"]))
        if stage.clearing_ms >= poll_ms and r["excursion_ms"] < stage.clearing_ms and r["trip_ms"] is not None:
            bad.append("{}: a {} ms excursion tripped".format(r["label"], r["excursion_ms"]))
        if r["excursion_ms"] >= sampling_bounds_ms(stage, poll_ms)[1] and r["trip_ms"] is None:
            bad.append("{}: a {} ms excursion rode through".format(r["label"], r["excursion_ms"]))
    return bad


# ------------------------------------------------------------------ EN 50549 10-minute mean

def mean_run(outside=True, hold_ms=30000, vm_name="cpython"):
    """EN 50549 10-minute mean over-voltage: 1.10 pu exactly (inside) or 1 mV above,
    from t = 0 so every block of the mean sees it. Decided at a 3 s block close."""
    profile = "EN50549_50HZ"
    nom = nominal_mv(profile)
    thr = nom * PROFILES[profile]["ov_mean_pm"] // 1000
    v = thr + 1 if outside else thr
    sc = build(profile, [(0, "grid", _grid_args(True, v))], hold_ms,
               config={"METER_POLL_MS": FAST_POLL_MS})
    res = run(sc, vm_name)
    found = trips(res, "V2G-503")
    return {"threshold_mv": thr, "trip_ms": found[0][0] - grid_steps(res)[0] if found else None,
            "msg": found[0][2] if found else None}


# ------------------------------------------------------------------ enter service

def enter_service_run(profile, back_mhz=None, blip_mhz=None, delay_s=5, ramp_s=10, vm_name="cpython"):
    """Trip on the fast over-frequency stage, return to back_mhz (default nominal).
    Optional blip: 1 s at blip_mhz 2 s into the wait, restarting it. Returns the times."""
    p = PROFILES[profile]
    nom = p["nominal_mhz"]
    of_fast = min((s for s in stages(profile) if s.kind == OF), key=lambda s: s.clearing_ms)
    back = nom if back_mhz is None else back_mhz
    t0 = T_STEP_MS
    t_back = t0 + 2000
    events = [(t0, "grid", _grid_args(False, of_fast.value(True))), (t_back, "grid", _grid_args(False, back))]
    if blip_mhz is not None:
        events += [(t_back + 2000, "grid", _grid_args(False, blip_mhz)),
                   (t_back + 3000, "grid", _grid_args(False, back))]
    duration = t_back + 3000 + (delay_s + ramp_s) * 1000 + 5000
    sc = build(profile, events, duration, config={
        "METER_POLL_MS": FAST_POLL_MS, "GRID_ENTER_SERVICE_DELAY_S": delay_s, "GRID_RAMP_S": ramp_s}, )
    res = run(sc, vm_name)
    raised = code_events(res, "V2G-507", True)
    cleared = code_events(res, "V2G-507", False)
    out = {"t_back": t_back, "first_inside": first_poll_at_or_after(t_back, FAST_POLL_MS),
           "waiting_from": raised[0] if raised else None, "in_service": cleared[0] if cleared else None,
           "trip": trips(res)[0][0] if trips(res) else None, "result": res}
    if blip_mhz is not None:
        out["blip_end_reading"] = first_poll_at_or_after(t_back + 3000, FAST_POLL_MS)
    if out["in_service"] is not None:
        t = out["in_service"]
        out["limit_at"] = {k: tick_at(res, t + k)["limit_charge_a"] for k in (0, ramp_s * 500, ramp_s * 1000 + 100)}
        out["amps_end"] = tick_at(res, duration)["amps"]
    return out


# ------------------------------------------------------------------ droop

def expected_droop_a(profile, f_mhz, deadband_mhz=None, droop_mpct=5000, rated_a=32.0):
    """docs/grid.md: rated * (|f - f0| - deadband) / (droop% * f0), signed, + above nominal.
    The deadband and droop are clamped to the profile's adjustable range as the firmware does."""
    p = PROFILES[profile]
    f0 = p["nominal_mhz"]
    db, dr = values_in_force(profile, 36 if deadband_mhz is None else deadband_mhz, droop_mpct)
    excess = abs(f_mhz - f0) - db
    if excess <= 0:
        return 0.0
    a = rated_a * excess / (dr * f0 / 100000)
    return a if f_mhz > f0 else -a


def droop_run(profile, offsets_mhz, charge=True, hold_ms=8000, config=None, ev=None,
              extra_events=(), vm_name="cpython"):
    """Step the frequency through nominal + each offset (hold_ms each, nominal in between)
    and read the settled request and measured current at the end of each hold."""
    nom = PROFILES[profile]["nominal_mhz"]
    events = list(extra_events)
    t = T_STEP_MS
    marks = []
    for off in offsets_mhz:
        events.append((t, "grid", _grid_args(False, nom + off)))
        marks.append((off, t + hold_ms - STEP_MS))
        t += hold_ms
        events.append((t, "grid", _grid_args(False, nom)))
        t += 4000
    sc = build(profile, events, t, config=config, ev=ev, charge=charge)
    res = run(sc, vm_name)
    rows = []
    for off, tm in marks:
        tk = tick_at(res, tm)
        rows.append({"offset_mhz": off, "f_mhz": nom + off, "request_a": tk["request_a"], "amps": tk["amps"],
                     "limit_charge_a": tk["limit_charge_a"], "limit_discharge_a": tk["limit_discharge_a"],
                     "limit_charge_src": tk["limit_charge_src"],
                     "limit_discharge_src": tk["limit_discharge_src"], "errors": tk["errors"]})
    return rows, res


# ------------------------------------------------------------------ frequency-response latency

def latency_run(profile, poll_ms=DEFAULT_POLL_MS, phase_ms=0, step_mhz=-300, vm_name="cpython", wire=False):
    """Charging at full current, the frequency steps down at T_STEP_MS + phase_ms.
    total: grid step -> first changed current request; share: first meter reading
    showing the step -> that request (the plant's meter; with wire=True the meter task on
    the wire model, where share is not measured)."""
    nom = PROFILES[profile]["nominal_mhz"]
    t0 = T_STEP_MS + phase_ms
    sc = build(profile, [(t0, "grid", _grid_args(False, nom + step_mhz))], t0 + 3000,
               config=None if wire else {"METER_POLL_MS": poll_ms})
    if wire:
        sc["meter_port"] = "wire"
    res = run(sc, vm_name)
    t_step = grid_steps(res)[0]
    before = tick_at(res, t_step - STEP_MS)["request_a"]
    t_new = None
    for r in res.ticks():
        if r["t_ms"] >= t_step and r["request_a"] != before:
            t_new = r["t_ms"]
            break
    if t_new is None:
        raise CheckError("the current request never changed after the frequency step")
    first = first_poll_at_or_after(t_step, poll_ms)
    return {"total_ms": t_new - t_step, "share_ms": t_new - first, "phase_ms": phase_ms}


def latency_worst(profile, poll_ms=DEFAULT_POLL_MS, vm_name="cpython"):
    """Worst total and worst controller share over every step phase within a poll period."""
    runs = [latency_run(profile, poll_ms, ph, vm_name=vm_name) for ph in range(0, poll_ms, STEP_MS)]
    return {"total_ms": max(r["total_ms"] for r in runs), "share_ms": max(r["share_ms"] for r in runs),
            "best_total_ms": min(r["total_ms"] for r in runs), "runs": runs}


# ------------------------------------------------------------------ the defaults on the meter port's wire

# At the default settings (METER_POLL_MS 500, SDM630 at METER_BAUD 38400) the firmware's own
# meter task reads the plant's meter over the wire model of the meter port
# (boards/sim/meter_wire.py): each byte takes its time at 38400 baud, the meter answers
# after t3.5 + 5 ms, the shell moves the port's bytes between control steps as on a board,
# and the grid protection decides as early as that sampling needs. Clearing is counted
# from the grid step to the control step that opens the contactor and asks for no current
# (the plant's current is zero from that step on).

def wire_phases(stage):
    """Grid-step phases (ms after T_STEP_MS) to try: every step of two snapshot periods for
    the fast stages; for the long ones (their runs are long) the first three steps after
    each of two snapshot requests (snapshots are asked every 500 ms from t = 0), where the
    snapshot's further blocks stretch the voltage and frequency cycle: the worst phases."""
    if stage.clearing_ms < 1000:
        return range(0, 2 * DEFAULT_POLL_MS, STEP_MS)
    return [p + k * STEP_MS for p in (0, DEFAULT_POLL_MS) for k in range(3)]


def wire_trip_run(stage, phase_ms, hold_ms=None, vm_name="cpython"):
    """Just outside the threshold from T_STEP_MS + phase_ms for hold_ms (default: past the
    clearing time), default settings, meter task on the wire model."""
    nom = nominal_mv(stage.profile) if stage.voltage else PROFILES[stage.profile]["nominal_mhz"]
    hold = stage.clearing_ms + 1000 if hold_ms is None else hold_ms
    t0 = T_STEP_MS + phase_ms
    events = [(t0, "grid", _grid_args(stage, stage.value(True))), (t0 + hold, "grid", _grid_args(stage, nom))]
    sc = build(stage.profile, events, t0 + hold + 1000)
    sc["meter_port"] = "wire"
    res = run(sc, vm_name)
    t_step = grid_steps(res)[0]
    found = [t for t in trips(res) if t[0] >= t_step]
    out = {"phase_ms": phase_ms, "trip_ms": None, "code": None}
    if found:
        t, code, msg = found[0]
        tk = tick_at(res, t)
        out.update(trip_ms=t - t_step, code=code, msg=msg, request_at_trip=tk["request_a"],
                   limits_at_trip=(tk["limit_charge_a"], tk["limit_discharge_a"]), contactor=tk["contactor"],
                   amps_after=tick_at(res, t + STEP_MS)["amps"])
    return out


def wire_stage(stage, vm_name="cpython"):
    """Every phase of one stage at the defaults: the worst trip time from the grid step
    and what is wrong (the clearing time missed, no trip, current still asked or flowing)."""
    runs = [wire_trip_run(stage, ph, vm_name=vm_name) for ph in wire_phases(stage)]
    bad = []
    for r in runs:
        if r["code"] != stage.code:
            bad.append("phase {} ms: expected {} got {}".format(r["phase_ms"], stage.code, r["code"]))
            continue
        if r["trip_ms"] > stage.clearing_ms:
            bad.append("phase {} ms: cleared {} ms after the grid step, clearing time {} ms".format(
                r["phase_ms"], r["trip_ms"], stage.clearing_ms))
        if r["request_at_trip"] != 0 or r["limits_at_trip"] != (0, 0) or r["amps_after"] != 0:
            bad.append("phase {} ms: current still asked or flowing at the trip".format(r["phase_ms"]))
    done = [r["trip_ms"] for r in runs if r["trip_ms"] is not None]
    return {"stage": stage, "runs": runs, "worst_ms": max(done) if done else None,
            "best_ms": min(done) if done else None, "problems": bad}


def wire_matrix(vm_name="cpython", profiles=PROFILE_ORDER):
    return [wire_stage(s, vm_name) for p in profiles for s in stages(p)]


def wire_latency_worst(profile, vm_name="cpython"):
    """Grid frequency step -> new current request at the defaults on the wire model, worst
    over two snapshot periods of step phases."""
    runs = [latency_run(profile, DEFAULT_POLL_MS, ph, vm_name=vm_name, wire=True)
            for ph in range(0, 2 * DEFAULT_POLL_MS, STEP_MS)]
    return {"total_ms": max(r["total_ms"] for r in runs), "best_total_ms": min(r["total_ms"] for r in runs),
            "runs": runs}


def wire_table(results):
    """Markdown: each stage at the default settings on the wire model."""
    lines = ["| profile | stage | clearing time | cleared after the grid step (best .. worst over phases) "
             "| verdict |", "|---|---|---|---|---|"]
    for r in results:
        s = r["stage"]
        lines.append("| {} | {} | {} | {} .. {} | {} |".format(
            s.profile, s.name, _ms(s.clearing_ms), _ms(r["best_ms"]), _ms(r["worst_ms"]),
            "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"][:2])))
    return "\n".join(lines)


# ------------------------------------------------------------------ table

def _ms(v):
    if v is None:
        return "no trip"
    return "{:.3f} s".format(v / 1000) if v >= 1000 else "{} ms".format(v)


def matrix(vm_name="cpython"):
    return [check_stage(s, vm_name) for p in PROFILE_ORDER for s in stages(p)]


def table(results=None, mean=None):
    """Markdown table: profile x stage, clearing time, measured trip times, verdict."""
    results = matrix() if results is None else results
    lines = [
        "| profile | stage | threshold (trips beyond) | clearing time | trip, step on a poll (poll 100 ms) "
        "| trip, step 1 step after a poll (poll 100 ms) | same at the default 500 ms poll "
        "| on the threshold / excursions (poll 100 ms) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["stage"]
        ride = "no trip / {} rides through, {} trips".format(
            _ms(r["ride"]["excursion_ms"]), _ms(r["overstay"]["excursion_ms"])) if not (
            r["inside"]["trip_ms"] or r["ride"]["tripped_short"]) else "TRIPPED"
        verdict = "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])
        if not r["problems"] and r["late"]["trip_ms"] > s.clearing_ms:
            verdict = "ok (firmware); meter adds {} ms".format(r["late"]["trip_ms"] - s.clearing_ms)
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            s.profile, s.name, s.threshold_text(), _ms(s.clearing_ms), _ms(r["aligned"]["trip_ms"]),
            _ms(r["late"]["trip_ms"]), _ms(r["default"]["trip_ms"]), ride, verdict))
    if mean is None:
        mean = (mean_run(True), mean_run(False))
    out_m, in_m = mean
    ok = out_m["trip_ms"] is not None and out_m["trip_ms"] <= 3000 and in_m["trip_ms"] is None
    lines.append("| EN50549_50HZ | {} | mean {:.3f} V | 3 s block close | {} (from power-up) | - | - | {} | {} |".format(
        MEAN_NAME, out_m["threshold_mv"] / 1000, _ms(out_m["trip_ms"]),
        "no trip in 30 s" if in_m["trip_ms"] is None else "TRIPPED", "ok" if ok else "FAIL"))
    return "\n".join(lines)


def excursion_table(results):
    """Markdown: each stage's excursions at the default poll, measured (the rule agrees
    unless the verdict says otherwise)."""
    lines = [
        "| profile | stage | clearing | decided after first reading | always rides through / always trips "
        "(any phase) | " + " | ".join(c[0] for c in excursion_cases(results[0]["stage"])) + " | verdict |",
        "|---" * 12 + "|",
    ]
    for r in results:
        s = r["stage"]
        rides, always = sampling_bounds_ms(s, DEFAULT_POLL_MS)
        cells = ["{}: {}".format(_ms(x["excursion_ms"]), "no trip" if x["trip_ms"] is None
                                 else "trips at " + _ms(x["trip_ms"])) for x in r["excursions"]]
        bad = excursion_problems(s, r["excursions"])
        lines.append("| {} | {} | {} | {} | {} / {} | {} | {} |".format(
            s.profile, s.name, _ms(s.clearing_ms), _ms(decision_ms(s)),
            "<= " + _ms(rides) if rides else "none (one reading is enough)", ">= " + _ms(always),
            " | ".join(cells), "ok" if not bad else "FAIL: " + "; ".join(bad)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m host_tools.gridcheck",
                                 description="Grid trip timing, checked in the simulator.")
    ap.add_argument("--table", action="store_true", help="print the profile x stage table in Markdown")
    ap.add_argument("--latency", action="store_true", help="print the frequency-response latency")
    ap.add_argument("--wire", action="store_true",
                    help="the default settings with the meter task on the meter port's wire model")
    ap.add_argument("--vm", choices=sim.VMS, default="cpython")
    a = ap.parse_args(argv)
    if not (a.table or a.latency or a.wire):
        ap.error("say --table, --latency and/or --wire")
    failed = False
    if a.wire:
        results = wire_matrix(a.vm)
        print(wire_table(results))
        failed = any(r["problems"] for r in results)
        for profile in ("IEEE1547_CAT_II_60HZ", "EN50549_50HZ"):
            w = wire_latency_worst(profile, vm_name=a.vm)
            print("{}: defaults on the wire model -> grid step to new current request {}..{} ms".format(
                profile, w["best_total_ms"], w["total_ms"]))
    if a.table:
        results = matrix(a.vm)
        print(table(results))
        print()
        print("Excursions at the default METER_POLL_MS {} ms (trip time from the grid step):".format(
            DEFAULT_POLL_MS))
        print()
        print(excursion_table(results))
        failed = any(r["problems"] for r in results)
    if a.latency:
        for profile in ("IEEE1547_CAT_II_60HZ", "EN50549_50HZ"):
            w = latency_worst(profile, vm_name=a.vm)
            print("{}: METER_POLL_MS {} -> grid step to new current request {}..{} ms, "
                  "controller share (first reading showing it -> request) <= {} ms".format(
                      profile, DEFAULT_POLL_MS, w["best_total_ms"], w["total_ms"], w["share_ms"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
