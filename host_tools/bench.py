"""`v2g bench`: play the vehicle (CAN) and optionally the meter (Modbus RTU) against a
controller, drive it through its host link and check its answers (docs/bench.md).

    sc = load("scenarios/bench/bms_loss.toml")
    result = Bench(sc, link="/dev/ttyACM0", can_interface="slcan", can_channel="/dev/ttyACM1",
                   plant="/dev/pts/7").run()
    print(result.table()); result.junit("out.xml"); result.plot("run.png")

Runs in real time: the controller is a real board (or the virtual board) with its own clock.
"""

from __future__ import annotations

import json
import math
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from core.can_msgs import checksum  # byte 7 of the 0x600-series frames: the controller's rule
from core import grid_profiles
from host_tools import scenario as simsc
from host_tools.link import soc_pct
from host_tools import tree

DBC = tree.FIRMWARE / "can" / "v2g.dbc"
VERSION = 1
SAMPLE_S = 0.1
MAX_DURATION_S = 3600
CAN_INTERFACES = ("slcan", "socketcan", "pcan", "virtual")

# Events: the simulator's vocabulary, plus the bench's own for the vehicle on CAN.
PLANT_EVENTS = ("plug", "unplug", "ev_ready", "ev_pause", "ev_ventilation", "cp_fault", "cp_restore",
                "grid", "grid_ramp", "evse_temp", "contactor_fault", "contactor_restore", "reboot")
LINK_EVENTS = ("setpoint", "limit", "config")
VEHICLE_EVENTS = ("battery_temp", "can_loss", "can_restore", "bms", "can_bad")
METER_EVENTS = ("meter_fault", "meter_restore")
CAN_BAD_KINDS = ("dlc", "unknown_id", "checksum", "stuck_counter", "extended", "range")
BENCH_EVENT_SPECS = {
    "bms": ((), ("soc_pct", "max_charge_a", "max_discharge_a", "fault_bits"),
            {"soc_pct": ("num", 0, 100), "max_charge_a": ("num", 0, 500),
             "max_discharge_a": ("num", 0, 500), "fault_bits": ("int", 0, 255)}),
    "can_bad": (("kind",), ("count",), {"kind": (CAN_BAD_KINDS, None, None), "count": ("int", 1, 1000)}),
}
VEHICLE_KEYS = {
    "capacity_kwh": ("num", 0.1, 500), "soc_pct": ("num", 0, 100),
    "max_charge_a": ("num", 0, 500), "max_discharge_a": ("num", 0, 500),
    "battery_temp_c": ("num", -40, 150), "pack_voltage_v": ("num", 50, 1000),
    "grid_voltage_v": ("num", 50, 600), "tau_s": ("num", 0, 10),
}
METER_KEYS = {"model": (("SDM630", "SDM120"), None, None), "unit": ("int", 1, 247),
              "baud": ("int", 1200, 115200)}

# Signals a check can name. From telemetry (tel) and from the controller's CAN frames (can_*).
NUMERIC = ("amps", "soc_pct", "limit_charge_a", "limit_discharge_a", "request_a", "grid_v", "grid_hz",
           "battery_temp_c", "evse_temp_c", "pwm_pct", "can_request_a", "can_limit_charge_a",
           "can_limit_discharge_a", "can_meter_a", "can_pwm_pct", "vehicle_soc_pct", "vehicle_a")
TEXT = ("mode", "cp", "limit_charge_src", "limit_discharge_src", "can_mode", "can_cp", "can_req_mode",
        "can_limit_charge_src", "can_limit_discharge_src")
BOOL = ("contactor", "can_contactor")
SIGNALS = NUMERIC + TEXT + BOOL
EXPECT_META = ("name", "after_s", "until_s", "hold", "errors_include", "errors_exclude",
               "event", "event_on", "event_msg")


class BenchError(ValueError):
    """A bench scenario or set-up that cannot run; the message names what and why."""


# ------------------------------------------------------------------ scenario

def _bad(file, where, problem):
    return BenchError("{}: {}: {}".format(file, where, problem))


def _check_keys(file, where, table, specs):
    if not isinstance(table, dict):
        raise _bad(file, where, "must be a table")
    for k, v in table.items():
        if k not in specs:
            raise _bad(file, where, "unknown key {!r} (allowed: {})".format(k, ", ".join(specs)))
        p = simsc._type_problem(k, v, specs[k])
        if p:
            raise _bad(file, where, p)


def _check_event(file, i, ev, duration, prev):
    where = "[[at]] #{}".format(i)
    if not isinstance(ev, dict):
        raise _bad(file, where, "must be a table")
    t = ev.get("t_s")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= duration:
        raise _bad(file, where, "t_s must be a number within 0 .. duration_s ({}), got {!r}".format(duration, t))
    if prev is not None and t < prev:
        raise _bad(file, where, "events out of time order: t_s = {} after {}".format(t, prev))
    do = ev.get("do")
    known = PLANT_EVENTS + LINK_EVENTS + VEHICLE_EVENTS + METER_EVENTS
    if do not in known:
        raise _bad(file, where, "unknown do {!r} (a bench plays: {})".format(do, ", ".join(known)))
    args = {k: v for k, v in ev.items() if k not in ("t_s", "do")}
    rule = BENCH_EVENT_SPECS.get(do) or simsc.EVENTS.get(do)
    if rule is None:     # config: any keys, judged by the controller
        if not args:
            raise _bad(file, where, "config needs at least one settings key")
    else:
        req, opt, specs = rule
        for k in args:
            if k not in req and k not in opt:
                raise _bad(file, where, "{}: unknown key {!r} (allowed: {})".format(
                    do, k, ", ".join(req + opt) or "none"))
        for k in req:
            if k not in args:
                raise _bad(file, where, "{}: missing key {!r}".format(do, k))
        for k, v in args.items():
            p = simsc._type_problem(k, v, specs[k])
            if p:
                raise _bad(file, where, "{}: {}".format(do, p))
    return {"t_s": float(t), "do": do, "args": args}


def _check_expect(file, i, ex, duration):
    where = "[[expect]] #{}".format(i)
    if not isinstance(ex, dict):
        raise _bad(file, where, "must be a table")
    if not isinstance(ex.get("name"), str) or not ex["name"]:
        raise _bad(file, where, "needs a name (text)")
    where = "[[expect]] {!r}".format(ex["name"])
    after = ex.get("after_s", 0)
    until = ex.get("until_s", duration)
    for k, v in (("after_s", after), ("until_s", until)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= duration:
            raise _bad(file, where, "{} must be a number within 0 .. {}, got {!r}".format(k, duration, v))
    if until < after:
        raise _bad(file, where, "until_s ({}) is before after_s ({})".format(until, after))
    hold = ex.get("hold", "once")
    if hold not in ("once", "always"):
        raise _bad(file, where, "hold must be 'once' or 'always', got {!r}".format(hold))
    conds = {}
    for k, v in ex.items():
        if k in EXPECT_META:
            continue
        if k not in SIGNALS:
            raise _bad(file, where, "unknown signal {!r} (known: {})".format(k, ", ".join(SIGNALS)))
        if k in NUMERIC:
            if isinstance(v, dict):
                if not v or set(v) - {"min", "max"} or any(
                        isinstance(x, bool) or not isinstance(x, (int, float)) for x in v.values()):
                    raise _bad(file, where, "{} wants a number or {{min = .., max = ..}}".format(k))
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(file, where, "{} wants a number or {{min = .., max = ..}}, got {!r}".format(k, v))
        elif k in BOOL and not isinstance(v, bool):
            raise _bad(file, where, "{} wants true or false".format(k))
        elif k in TEXT and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            raise _bad(file, where, "{} wants text or a list of texts".format(k))
        conds[k] = v
    for k in ("errors_include", "errors_exclude"):
        v = ex.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x.startswith("V2G-") for x in v):
            raise _bad(file, where, "{} wants a list of codes like \"V2G-130\"".format(k))
    if "event" in ex and not (isinstance(ex["event"], str) and ex["event"].startswith("V2G-")):
        raise _bad(file, where, "event wants a code like \"V2G-120\"")
    if "event_on" in ex and not isinstance(ex["event_on"], bool):
        raise _bad(file, where, "event_on wants true or false")
    if "event_msg" in ex and not isinstance(ex["event_msg"], str):
        raise _bad(file, where, "event_msg wants text")
    if not conds and not ex.get("errors_include") and not ex.get("errors_exclude") and "event" not in ex:
        raise _bad(file, where, "checks nothing: name a signal, errors_include/exclude or event")
    return {"name": ex["name"], "after_s": float(after), "until_s": float(until), "hold": hold,
            "conds": conds, "errors_include": ex.get("errors_include", []),
            "errors_exclude": ex.get("errors_exclude", []), "event": ex.get("event"),
            "event_on": ex.get("event_on", True), "event_msg": ex.get("event_msg")}


def _controller_baud(sc):
    """The speed the controller's meter task talks at: the scenario's METER_BAUD, else the
    settings' default (the bench's meter must answer at the same speed)."""
    from core import config as cfgmod
    return sc["config"].get("METER_BAUD", cfgmod.SCHEMA["METER_BAUD"][3])


def validate(data, file="<bench scenario>"):
    if not isinstance(data, dict):
        raise _bad(file, "file", "must be a TOML table")
    allowed = ("version", "title", "duration_s", "config", "vehicle", "meter", "at", "expect")
    for k in data:
        if k not in allowed:
            raise _bad(file, "top level", "unknown key {!r} (allowed: {})".format(k, ", ".join(allowed)))
    if data.get("version") != VERSION:
        raise _bad(file, "version", "must be {}".format(VERSION))
    d = data.get("duration_s")
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 1 <= d <= MAX_DURATION_S:
        raise _bad(file, "duration_s", "must be a number of seconds 1 .. {}".format(MAX_DURATION_S))
    cfg = data.get("config", {})
    try:
        simsc._check_config(file, cfg)
    except simsc.ScenarioError as e:
        raise BenchError(str(e)) from None
    vehicle = data.get("vehicle", {})
    _check_keys(file, "[vehicle]", vehicle, VEHICLE_KEYS)
    meter = data.get("meter", {})
    _check_keys(file, "[meter]", meter, METER_KEYS)
    events, prev = [], None
    for i, ev in enumerate(data.get("at", [])):
        events.append(_check_event(file, i, ev, d, prev))
        prev = events[-1]["t_s"]
    expects = [_check_expect(file, i, ex, d) for i, ex in enumerate(data.get("expect", []))]
    if not expects:
        raise _bad(file, "[[expect]]", "a bench scenario needs at least one check")
    names = [e["name"] for e in expects]
    if len(set(names)) != len(names):
        raise _bad(file, "[[expect]]", "check names must be unique")
    return {"file": str(file), "title": data.get("title", Path(str(file)).stem), "duration_s": float(d),
            "config": dict(cfg), "vehicle": dict(vehicle), "meter": dict(meter), "events": events,
            "expects": expects}


def load(path):
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise BenchError("{}: cannot read: {}".format(path, e.strerror)) from None
    except UnicodeDecodeError:
        raise BenchError("{}: not UTF-8 text (a bench scenario is TOML)".format(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise BenchError("{}: not valid TOML: {}".format(path, e)) from None
    return validate(data, path)


# ------------------------------------------------------------------ the vehicle on CAN

VEHICLE_FRAMES = ("BMS_Status", "BMS_Limits", "BMS_Info")


def cycle_times(db, names=VEHICLE_FRAMES):
    """{name: period in s} from the DBC's GenMsgCycleTime; BenchError naming a frame without one."""
    out = {}
    for name in names:
        try:
            ms = db.get_message_by_name(name).cycle_time
        except KeyError:
            raise BenchError("the DBC has no message {}".format(name)) from None
        if not ms or ms <= 0:
            raise BenchError("the DBC gives {} no GenMsgCycleTime: the bench cannot tell how often "
                             "to send it".format(name))
        out[name] = ms / 1000.0
    return out


class Vehicle:
    """VCU/BMS played on CAN: 0x601/0x602/0x603 at the DBC's GenMsgCycleTime (100, 100 and
    1000 ms). The battery follows the controller's 0x600 request (within its own limits)
    with a lag, and its SoC integrates that current."""

    def __init__(self, db, bus, cfg, nominal_v):
        self.db = db
        self.bus = bus
        self.capacity_wh = cfg.get("capacity_kwh", 60.0) * 1000
        self.soc = cfg.get("soc_pct", 50.0)
        self.max_charge_a = cfg.get("max_charge_a", 32.0)
        self.max_discharge_a = cfg.get("max_discharge_a", 32.0)
        self.temp_c = cfg.get("battery_temp_c", 25.0)
        self.pack_v = cfg.get("pack_voltage_v", 400.0)
        self.grid_v = cfg.get("grid_voltage_v", nominal_v)
        self.tau_s = cfg.get("tau_s", 0.3)
        self.fault_bits = 0
        self.silent = False
        self.amps = 0.0          # AC current the vehicle draws: + charging
        self.request_a = 0.0
        self.counter = {0x601: 0, 0x602: 0}
        self.period = cycle_times(db)
        self.next_due = dict.fromkeys(self.period, 0.0)
        self.sent = 0
        self.bad_sent = 0
        self.lock = threading.Lock()

    def on_request(self, req_a):
        with self.lock:
            self.request_a = req_a

    def step(self, t, dt):
        with self.lock:
            req = self.request_a
        if self.silent:
            req = 0.0     # a vehicle that lost its CAN link stops following requests
        target = min(req, self.max_charge_a) if req > 0 else max(req, -self.max_discharge_a)
        if self.fault_bits:
            target = 0.0
        if self.soc >= 100 and target > 0 or self.soc <= 0 and target < 0:
            target = 0.0
        k = 1.0 if self.tau_s <= 0 else min(1.0, dt / self.tau_s)
        self.amps += (target - self.amps) * k
        self.soc += self.amps * self.grid_v * dt / 3600 / self.capacity_wh * 100
        self.soc = min(100.0, max(0.0, self.soc))
        if self.silent:
            return
        for name in VEHICLE_FRAMES:
            if t < self.next_due[name]:
                continue
            # on the period's grid; after a stall, the next one from now rather than a burst
            self.next_due[name] = max(self.next_due[name] + self.period[name], t)
            if name == "BMS_Status":
                self._send(name, {"SoC": round(self.soc, 1), "PackVoltage": self.pack_v,
                                  "PackCurrent": round(self.amps * self.grid_v / self.pack_v, 1),
                                  "TempMax": round(self.temp_c)})
            elif name == "BMS_Limits":
                self._send(name, {"MaxChargeCurrent": self.max_charge_a,
                                  "MaxDischargeCurrent": self.max_discharge_a,
                                  "FaultBits": self.fault_bits, "TempMin": round(self.temp_c)})
            else:
                self._send(name, {"CapacityWh": round(self.capacity_wh / 10) * 10, "CellVoltMin": 3.7,
                                  "CellVoltMax": 3.7, "SoH": 100})

    def restart_clock(self):
        """The run's clock starts again at 0: every frame is due at once."""
        for name in self.next_due:
            self.next_due[name] = 0.0

    def frame(self, name, values, counter=None):
        import can
        msg = self.db.get_message_by_name(name)
        sig = dict(values)
        names = {s.name for s in msg.signals}
        if "Counter" in names:
            c = self.counter[msg.frame_id] if counter is None else counter
            sig["Counter"] = c
            if counter is None:
                self.counter[msg.frame_id] = (c + 1) & 15
        if "Checksum" in names:
            sig["Checksum"] = 0
        data = bytearray(msg.encode(sig, strict=True))
        if "Checksum" in names:
            data[7] = checksum(data, msg.frame_id)
        return can.Message(arbitration_id=msg.frame_id, data=bytes(data), is_extended_id=False)

    def _send(self, name, values):
        self.bus.send(self.frame(name, values))
        self.sent += 1

    def send_bad(self, kind):
        """One frame the controller must count and ignore."""
        import can
        good = self.frame("BMS_Status", {"SoC": 99.9, "PackVoltage": self.pack_v, "PackCurrent": 0,
                                         "TempMax": 25}, counter=(self.counter[0x601] + 7) & 15)
        d = bytearray(good.data)
        if kind == "dlc":
            m = can.Message(arbitration_id=0x601, data=bytes(d[:5]), is_extended_id=False)
        elif kind == "unknown_id":
            m = can.Message(arbitration_id=0x6F0, data=bytes(d), is_extended_id=False)
        elif kind == "checksum":
            d[7] ^= 0x55
            m = can.Message(arbitration_id=0x601, data=bytes(d), is_extended_id=False)
        elif kind == "extended":
            m = can.Message(arbitration_id=0x601, data=bytes(d), is_extended_id=True)
        elif kind == "range":
            d[0], d[1] = 0xFF, (d[1] & 0xF0) | 0x03    # SoC 102.3 %: outside the DBC range
            d[7] = checksum(d, 0x601)
            m = can.Message(arbitration_id=0x601, data=bytes(d), is_extended_id=False)
        else:   # stuck_counter: the last good frame again, same counter
            c = (self.counter[0x601] - 1) & 15
            m = self.frame("BMS_Status", {"SoC": round(self.soc, 1), "PackVoltage": self.pack_v,
                                          "PackCurrent": 0, "TempMax": round(self.temp_c)}, counter=c)
        self.bus.send(m)
        self.bad_sent += 1


def nominal_hz(profile):
    """The nominal frequency of a GRID_PROFILE, as the controller's own profile table has it."""
    p = grid_profiles.profile(profile) if isinstance(profile, str) else None
    if p is None:
        raise BenchError("the controller's GRID_PROFILE {!r} is none the firmware knows ({})".format(
            profile, ", ".join(grid_profiles.NAMES)))
    return p["nominal_mhz"] / 1000


# ------------------------------------------------------------------ results

@dataclass
class Check:
    name: str
    ok: bool
    window: str
    detail: str


@dataclass
class Result:
    scenario: dict
    samples: list = field(default_factory=list)    # {"t": s, signal: value, "errors": [...]}
    events: list = field(default_factory=list)     # controller events {"t": s, code, on, msg}
    actions: list = field(default_factory=list)    # what the bench did {"t": s, "do", "note"}
    checks: list = field(default_factory=list)
    setup_error: str | None = None

    @property
    def passed(self):
        return self.setup_error is None and all(c.ok for c in self.checks)

    def table(self):
        rows = [("check", "window", "result", "detail")]
        for c in self.checks:
            rows.append((c.name, c.window, "PASS" if c.ok else "FAIL", c.detail))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["{}  {}".format(self.scenario["title"], "PASSED" if self.passed else "FAILED")]
        if self.setup_error:
            lines.append("set-up failed: " + self.setup_error)
        for i, r in enumerate(rows):
            lines.append("  ".join(r[k].ljust(w[k]) for k in range(3)) + "  " + r[3])
            if i == 0:
                lines.append("  ".join("-" * w[k] for k in range(3)) + "  " + "-" * 6)
        return "\n".join(lines)

    def junit(self, path):
        fails = sum(not c.ok for c in self.checks) + (1 if self.setup_error else 0)
        suite = ET.Element("testsuite", name="bench." + Path(self.scenario["file"]).stem,
                           tests=str(len(self.checks) + (1 if self.setup_error else 0)),
                           failures=str(fails), errors="0",
                           time="{:.1f}".format(self.samples[-1]["t"] if self.samples else 0))
        if self.setup_error:
            tc = ET.SubElement(suite, "testcase", classname=suite.get("name"), name="set-up")
            ET.SubElement(tc, "failure", message=self.setup_error)
        for c in self.checks:
            tc = ET.SubElement(suite, "testcase", classname=suite.get("name"), name=c.name)
            if not c.ok:
                ET.SubElement(tc, "failure", message=c.detail).text = "window " + c.window
            else:
                ET.SubElement(tc, "system-out").text = c.detail
        root = ET.Element("testsuites")
        root.append(suite)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
        return Path(path)

    def plot(self, path):
        path = Path(path)
        if path.suffix.lower() in (".html", ".htm"):
            return _plot_html(self, path)
        return _plot_png(self, path)


def _plot_png(result, path):
    from host_tools import plots

    if not result.samples:
        raise BenchError("nothing to plot: no samples were recorded")
    return plots.write_png(plots.from_bench(result), path)


def _plot_html(result, path):
    """A self-contained page: the same panels as inline SVG, the check table and the events."""
    from host_tools import plots

    if not result.samples:
        raise BenchError("nothing to plot: no samples were recorded")
    return plots.write_html(plots.from_bench(result), path, extra="<h2>checks</h2><pre>" + _esc(result.table())
                            + "</pre>")


def _esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------ checks

def _cond_ok(key, want, have):
    if have is None:
        return False
    if key in NUMERIC:
        if isinstance(want, dict):
            return want.get("min", -math.inf) <= have <= want.get("max", math.inf)
        return abs(have - want) <= 1e-6 + 1e-3 * abs(want)
    if key in TEXT and isinstance(want, list):
        return have in want
    return have == want


def _sample_ok(ex, s):
    errs = s.get("errors")
    for k, want in ex["conds"].items():
        if not _cond_ok(k, want, s.get(k)):
            # the errors active then say why (a mode of "fault" names the code that latched it)
            return False, "{} = {!r}, wanted {!r}{}".format(
                k, s.get(k), want, " (errors {})".format(errs) if errs else "")
    for c in ex["errors_include"]:
        if errs is None or c not in errs:
            return False, "{} not active (errors {})".format(c, errs)
    for c in ex["errors_exclude"]:
        if errs is not None and c in errs:
            return False, "{} active".format(c)
    return True, ""


def evaluate(ex, samples, events):
    window = "{:g}..{:g} s".format(ex["after_s"], ex["until_s"])
    inside = [s for s in samples if ex["after_s"] <= s["t"] <= ex["until_s"]]
    details = []
    ok = True
    if ex["event"]:
        hits = [e for e in events if e["code"] == ex["event"] and e["on"] == ex["event_on"]
                and ex["after_s"] <= e["t"] <= ex["until_s"]
                and (ex["event_msg"] is None or ex["event_msg"] in e["msg"])]
        if hits:
            details.append("{} {} at {:.2f} s: {}".format(ex["event"], "raised" if ex["event_on"] else "cleared",
                                                        hits[0]["t"], hits[0]["msg"]))
        else:
            ok = False
            seen = [e for e in events if e["code"] == ex["event"]]
            details.append("no {} {}{} in the window{}".format(
                ex["event"], "raise" if ex["event_on"] else "clear",
                " naming {!r}".format(ex["event_msg"]) if ex["event_msg"] else "",
                "; seen: " + "; ".join("{:.2f} s {}".format(e["t"], e["msg"]) for e in seen[:3]) if seen else ""))
    if ex["conds"] or ex["errors_include"] or ex["errors_exclude"]:
        if not inside:
            return Check(ex["name"], False, window, "no samples in the window")
        if ex["hold"] == "always":
            bad = None
            for s in inside:
                good, why = _sample_ok(ex, s)
                if not good:
                    bad = (s["t"], why)
                    break
            if bad:
                ok = False
                details.append("at {:.2f} s: {}".format(*bad))
            else:
                details.append("held over {} samples".format(len(inside)))
        else:
            first = None
            last_why = ""
            for s in inside:
                good, why = _sample_ok(ex, s)
                if good:
                    first = s["t"]
                    break
                last_why = why
            if first is None:
                ok = False
                details.append("never met; last sample: " + last_why)
            else:
                details.append("met at {:.2f} s".format(first))
    return Check(ex["name"], ok, window, "; ".join(details))


# ------------------------------------------------------------------ the run

class Bench:
    def __init__(self, sc, link, can_interface="slcan", can_channel=None, can_bitrate=500000,
                 meter_port=None, plant=None, log=None, settle_s=10.0):
        if can_interface not in CAN_INTERFACES:
            raise BenchError("--can-interface must be one of {}".format(", ".join(CAN_INTERFACES)))
        if can_channel is None:
            raise BenchError("--can-channel is needed (the adapter's port or interface name)")
        kinds = {e["do"] for e in sc["events"]}
        # pilot and grid events without --plant: on a real bench an EV simulator or the
        # operator works the pilot, so the bench prompts for them (see _act)
        if kinds & set(METER_EVENTS) and meter_port is None and plant is None:
            raise BenchError("{}: meter_fault/meter_restore need --meter-port (the bench plays the meter) "
                             "or --plant (the virtual board's meter)".format(sc["file"]))
        self.sc = sc
        self.link_url = link
        self.can_args = {"interface": can_interface, "channel": can_channel, "bitrate": can_bitrate}
        if can_interface == "slcan":
            self.can_args["sleep_after_open"] = 0
        self.meter_port = meter_port
        self.plant_port = plant
        self.log = log or (lambda line: None)
        self.settle_s = settle_s
        self.result = Result(sc)
        # the grid the bench's meter reports: the controller's nominal values (read in _setup)
        self.grid_v = None
        self.grid_hz = None
        self._grid_ramp = None      # (t0, v0, hz0, t1, v1, hz1) while a grid_ramp runs
        self._lock = threading.Lock()
        self._latest = {}
        self._errors = None
        self._t0 = None

    # state shared with the reader threads
    def _now(self):
        return time.monotonic() - self._t0 if self._t0 is not None else 0.0

    def _on_tel(self, msg):
        for s in msg.get("samples", []):
            upd = {"mode": s.get("mode"), "cp": s.get("cp"), "contactor": s.get("contactor"),
                   "amps": _a(s.get("ma")), "soc_pct": soc_pct(s),
                   "limit_charge_a": _a(s.get("lim_chg_ma")), "limit_discharge_a": _a(s.get("lim_dis_ma")),
                   "limit_charge_src": s.get("lim_chg_src"), "limit_discharge_src": s.get("lim_dis_src"),
                   "request_a": _a(s.get("req_ma")), "grid_v": _a(s.get("mv")), "grid_hz": _a(s.get("mhz")),
                   "battery_temp_c": _div(s.get("bat_dc"), 10), "evse_temp_c": _div(s.get("evse_dc"), 10),
                   "pwm_pct": _div(s.get("pwm_pm"), 10)}
            with self._lock:
                self._latest.update(upd)
                self._errors = list(s.get("errors", []))

    def _on_evt(self, msg):
        for e in msg.get("events", []):
            rec = {"t": round(self._now(), 3), "code": e.get("code"), "on": bool(e.get("on")),
                   "msg": e.get("msg", "")}
            with self._lock:
                self.result.events.append(rec)
            self.log("{:7.2f}  controller: {} {}  {}".format(rec["t"], rec["code"],
                                                            "raised" if rec["on"] else "cleared", rec["msg"]))

    def _on_can(self, m, vehicle):
        if m.is_extended_id or m.is_remote_frame:
            return
        try:
            msg = self.db.get_message_by_frame_id(m.arbitration_id)
        except KeyError:
            return
        if msg.name not in ("VCU_PowerRequest", "EVSE_Status", "EVSE_Limits") or len(m.data) != 8:
            return
        try:
            v = msg.decode(bytes(m.data), decode_choices=True)
        except Exception:   # noqa: BLE001 - a frame the DBC cannot decode is not a sample
            return
        if msg.name == "VCU_PowerRequest":
            upd = {"can_request_a": float(v["ReqCurrent"]), "can_req_mode": str(v["ReqMode"]),
                   "can_contactor": bool(v["ContactorClosed"])}
            vehicle.on_request(float(v["ReqCurrent"]))
        elif msg.name == "EVSE_Status":
            upd = {"can_cp": str(v["CpState"]), "can_mode": str(v["Mode"]),
                   "can_pwm_pct": float(v["PwmDuty"])}
        else:
            upd = {"can_limit_charge_a": float(v["LimitCharge"]), "can_limit_discharge_a": float(v["LimitDischarge"]),
                   "can_limit_charge_src": str(v["LimitChargeSrc"]),
                   "can_limit_discharge_src": str(v["LimitDischargeSrc"]), "can_meter_a": float(v["MeterCurrent"])}
        with self._lock:
            self._latest.update(upd)

    def run(self):
        import can
        import cantools

        from host_tools.link import LinkClient, LinkError

        sc = self.sc
        self.db = cantools.database.load_file(str(DBC))
        cycle_times(self.db)   # a DBC without the send periods is refused before anything opens
        # until _setup reads the controller's setting: the scenario's, else the spec default
        nominal_v = float(sc["config"].get("NOMINAL_VOLTAGE_V", 240))
        res = self.result
        metersim = None
        plant = None
        bus = None
        try:
            bus = can.Bus(**self.can_args)
        except Exception as e:   # noqa: BLE001 - python-can raises many kinds
            raise BenchError("cannot open CAN {} {}: {}".format(self.can_args["interface"],
                                                               self.can_args["channel"], e)) from None
        vehicle = Vehicle(self.db, bus, sc["vehicle"], nominal_v)
        stop = threading.Event()

        def can_reader():
            while not stop.is_set():
                try:
                    m = bus.recv(0.05)
                except Exception:   # noqa: BLE001 - the adapter went away: the checks will show it
                    return
                if m is not None:
                    self._on_can(m, vehicle)

        try:
            if self.meter_port:
                from host_tools.metersim import MeterSim
                m = sc["meter"]
                try:
                    metersim = MeterSim(self.meter_port, model=m.get("model", "SDM630"), unit=m.get("unit", 1),
                                        baud=m.get("baud", _controller_baud(sc))).start()
                except (RuntimeError, ValueError, OSError) as e:
                    raise BenchError("--meter-port {}: {}".format(self.meter_port, e)) from None
            if self.plant_port:
                plant = open(self.plant_port, "wb", buffering=0)
            with LinkClient(self.link_url, on_tel=self._on_tel, on_evt=self._on_evt) as lk:
                self._t0 = time.monotonic()
                reader = threading.Thread(target=can_reader, name="bench-can", daemon=True)
                reader.start()
                try:
                    self._setup(lk, vehicle, metersim)
                except (LinkError, BenchError) as e:
                    res.setup_error = str(e)
                    return res
                self._t0 = time.monotonic()
                vehicle.restart_clock()
                with self._lock:
                    res.events.clear()
                self._loop(lk, vehicle, metersim, plant)
                stop.set()
                reader.join(1)
        except LinkError as e:
            res.setup_error = "host link: {}".format(e)
            return res
        finally:
            stop.set()
            if plant is not None:
                plant.close()
            if metersim is not None:
                metersim.stop()
            bus.shutdown()
        for ex in sc["expects"]:
            res.checks.append(evaluate(ex, res.samples, res.events))
        return res

    def _setup(self, lk, vehicle, metersim):
        if self.sc["config"]:
            r = lk.command("config_set", dict(self.sc["config"]))
            if not r.ok:
                raise BenchError("the controller refused [config]: {} {}".format(r.code, r.msg))
        self._read_nominal(lk, vehicle)
        r = lk.command("telemetry", {"period_ms": 200, "batch": 1})
        if not r.ok:
            raise BenchError("telemetry settings refused: {}".format(r.msg))
        # the vehicle talks from the start, as a plugged-in car's VCU would wake up
        end = time.monotonic() + self.settle_s
        while time.monotonic() < end:
            vehicle.step(self._now(), 0.05)
            self._feed_meter(metersim, vehicle)
            with self._lock:
                errs = self._errors
            if errs is not None and not any(c in errs for c in ("V2G-507", "V2G-120")):
                return
            time.sleep(0.05)
        raise BenchError("the controller is not ready after {:g} s (active: {}); V2G-507 needs "
                         "GRID_ENTER_SERVICE_DELAY_S in [config] or a longer wait{}".format(
                             self.settle_s, ", ".join(self._errors or ["no telemetry"]),
                             "" if metersim is None else "; the bench's meter reports {:g} V {:g} Hz".format(
                                 vehicle.grid_v, self.grid_hz)))

    def _read_nominal(self, lk, vehicle):
        """The grid the controller expects, from its settings in force: the bench's meter
        reports it (unless [vehicle] grid_voltage_v says otherwise), so that a controller on
        its defaults (60 Hz, 240 V) is not held in V2G-507 by a meter showing 50 Hz."""
        r = lk.command("config_get", {"keys": ["NOMINAL_VOLTAGE_V", "GRID_PROFILE"]})
        if not r.ok:
            raise BenchError("cannot read the controller's nominal grid (config_get): {} {}".format(r.code, r.msg))
        vals = r.data.get("values", {})
        volts, profile = vals.get("NOMINAL_VOLTAGE_V"), vals.get("GRID_PROFILE")
        if isinstance(volts, bool) or not isinstance(volts, (int, float)) or not 50 <= volts <= 600:
            raise BenchError("the controller's NOMINAL_VOLTAGE_V is not a usable voltage: {!r}".format(volts))
        hz = nominal_hz(profile)
        self.grid_v = float(volts)
        self.grid_hz = hz
        if "grid_voltage_v" not in self.sc["vehicle"]:
            vehicle.grid_v = self.grid_v

    def _grid_now(self, vehicle):
        """(volts, hertz) the bench's meter reports now: nominal, or as grid events set it."""
        ramp = self._grid_ramp
        if ramp is None:
            return vehicle.grid_v, self.grid_hz
        t0, v0, f0, t1, v1, f1 = ramp
        t = self._now()
        if t >= t1:
            self._grid_ramp = None
            vehicle.grid_v, self.grid_hz = v1, f1
            return v1, f1
        k = (t - t0) / (t1 - t0)
        return v0 + (v1 - v0) * k, f0 + (f1 - f0) * k

    def _feed_meter(self, metersim, vehicle):
        if metersim is None:
            return
        v, hz = self._grid_now(vehicle)
        a = vehicle.amps
        vals = {"v1": v, "i1": abs(a), "p1": v * a, "pf1": 1.0, "hz": hz}
        if metersim.model == "SDM630":
            vals.update(v2=v, v3=v)
        metersim.update(**vals)

    def _loop(self, lk, vehicle, metersim, plant):
        sc = self.sc
        res = self.result
        events = list(sc["events"])
        next_sample = 0.0
        last = 0.0
        while True:
            t = self._now()
            if t > sc["duration_s"]:
                break
            while events and events[0]["t_s"] <= t:
                self._act(events.pop(0), lk, vehicle, metersim, plant)
            vehicle.step(t, t - last)
            last = t
            self._feed_meter(metersim, vehicle)
            if t >= next_sample:
                next_sample += SAMPLE_S
                with self._lock:
                    s = dict(self._latest)
                    s["errors"] = list(self._errors) if self._errors is not None else None
                s["t"] = round(t, 3)
                s["vehicle_soc_pct"] = round(vehicle.soc, 2)
                s["vehicle_a"] = round(vehicle.amps, 2)
                res.samples.append(s)
            time.sleep(0.01)

    def _act(self, ev, lk, vehicle, metersim, plant):
        do, args = ev["do"], ev["args"]
        note = ""
        if do in ("grid", "grid_ramp") and metersim is not None:
            # the bench's meter is where the controller sees the grid: it follows the event
            v0, f0 = self._grid_now(vehicle)
            v1, f1 = args.get("voltage_v", v0), args.get("frequency_hz", f0)
            if do == "grid":
                self._grid_ramp = None
                vehicle.grid_v, self.grid_hz = float(v1), float(f1)
            else:
                t = self._now()
                self._grid_ramp = (t, v0, f0, t + args["over_s"], float(v1), float(f1))
            note = "bench meter: {:g} V {:g} Hz{}".format(v1, f1, "" if do == "grid" else
                                                         " over {:g} s".format(args["over_s"]))
        elif do in PLANT_EVENTS:
            if plant is not None:
                plant.write((json.dumps(dict(args, do=do)) + "\n").encode())
            else:
                note = "OPERATOR: {} {} now".format(do, json.dumps(args) if args else "")
                print(note, flush=True)
        elif do == "setpoint":
            a = {"soc_pct": args["soc_target_pct"]}
            if "mode" in args:
                a["mode"] = args["mode"]
            r = lk.command("soc_target", a, txn=args["txn"])
            note = "{} {}".format("ok" if r.ok else r.code, r.msg)
        elif do == "limit":
            r = lk.command("limit", {"charge_a": args["charge_a"], "discharge_a": args["discharge_a"]},
                           txn=args.get("txn"))
            note = "{} {}".format("ok" if r.ok else r.code, r.msg)
        elif do == "config":
            r = lk.command("config_set", dict(args))
            note = "{} {}".format("ok" if r.ok else r.code, r.msg)
        elif do == "battery_temp":
            vehicle.temp_c = args["c"]
        elif do == "can_loss":
            vehicle.silent = True
        elif do == "can_restore":
            vehicle.silent = False
        elif do == "bms":
            for k, attr in (("soc_pct", "soc"), ("max_charge_a", "max_charge_a"),
                            ("max_discharge_a", "max_discharge_a"), ("fault_bits", "fault_bits")):
                if k in args:
                    setattr(vehicle, attr, args[k])
        elif do == "can_bad":
            for _ in range(args.get("count", 1)):
                vehicle.send_bad(args["kind"])
        elif do in METER_EVENTS:
            kind = args.get("kind") if do == "meter_fault" else None
            if metersim is not None:
                metersim.fault = kind
            else:
                plant.write((json.dumps(dict(args, do=do)) + "\n").encode())
        rec = {"t": round(self._now(), 3), "do": do, "args": args, "note": note}
        self.result.actions.append(rec)
        self.log("{:7.2f}  bench: {} {}{}".format(rec["t"], do, json.dumps(args) if args else "",
                                                  "  -> " + note if note else ""))


def _a(milli):
    return None if milli is None else milli / 1000.0


def _div(x, d):
    return None if x is None else x / d
