"""Scenario files for `v2g sim` (shared spec scenario.md, version 1): load and validate.

A scenario is checked whole before anything runs. Every problem is reported as a
ScenarioError naming the file, where in it (a table or the index of an `[[at]]` event)
and what is wrong. The `[config]` table goes through the firmware's own settings gate
(core/config.py), so a starting configuration the controller would refuse is a bad file.

`load(path)` returns the normalised scenario the driver (boards/sim/scenario_run.py)
takes: times in integer milliseconds, events as {"t_ms", "do", "args"}.
"""

import math
import tomllib
from pathlib import Path


VERSION = 1
VMS = ("micropython", "cpython")
MAX_DURATION_S = 7 * 24 * 3600

# key -> (type, low, high); type is "num", "int", "bool", "str" or a tuple of allowed strings
EV_KEYS = {
    "capacity_kwh": ("num", 1, 500),
    "soc_pct": ("num", 0, 100),
    "max_charge_a": ("num", 0, 80),
    "max_discharge_a": ("num", 0, 80),
    "battery_temp_c": ("num", -40, 100),
    "evse_temp_c": ("num", -40, 150),
    "v2g_capable": ("bool", None, None),
    "cable_a": ("int", 6, 80),
}
GRID_KEYS = {
    "voltage_v": ("num", 50, 600),
    "frequency_hz": ("num", 40, 70),
}
# [grid] only: whether the station is in service on the grid when the run starts (true,
# the default) or boots as after a power-up and waits GRID_ENTER_SERVICE_DELAY_S first
START_KEYS = dict(GRID_KEYS, in_service=("bool", None, None))
# [buses]: which of the station's bus tasks the run puts to work. "plant" (the default): the
# plant fills the meter and BMS inputs itself; "wire": the station's meter task reads the
# plant's meter in Modbus RTU over a wire model of the RS-485 port; "can": its CAN task
# decodes the plant's BMS frames. Slower, and what meter and CAN faults really meet.
BUS_KEYS = {"meter": (("plant", "wire"), None, None), "bms": (("plant", "can"), None, None)}
TEMP = ("num", -40, 150)
KIND_CP = ("short", "diode", "open")
KIND_METER = ("timeout", "crc", "exception")
KIND_CONTACTOR = ("welded", "stuck_open")
KIND_COOLING = ("pump", "flow_switch", "flicker")   # boards/sim/plant.py COOLING_FAULT_KINDS
SETPOINT_MODES = ("auto", "charge", "discharge")   # core/setpoint.py MODE_NAMES

# do -> (required keys, optional keys, key specs). Bare events take no keys.
_BARE = ((), (), {})
EVENTS = {
    "plug": _BARE,
    "unplug": _BARE,
    "ev_ready": _BARE,
    "ev_pause": _BARE,
    "ev_ventilation": _BARE,
    "cp_fault": (("kind",), (), {"kind": (KIND_CP, None, None)}),
    "cp_restore": _BARE,
    "setpoint": (("soc_target_pct", "txn"), ("mode",),
                 {"soc_target_pct": ("num", 0, 100), "txn": ("str", 1, 64), "mode": (SETPOINT_MODES, None, None)}),
    "limit": (("charge_a", "discharge_a"), ("txn",),
              {"charge_a": ("num", 0, 80), "discharge_a": ("num", 0, 80), "txn": ("str", 1, 64)}),
    "heartbeat_loss": _BARE,
    "heartbeat_restore": _BARE,
    "grid": ((), ("voltage_v", "frequency_hz"), GRID_KEYS),
    "grid_ramp": (("over_s",), ("voltage_v", "frequency_hz"),
                  dict(GRID_KEYS, over_s=("num", 0.05, 86400))),
    "battery_temp": (("c",), (), {"c": TEMP}),
    "evse_temp": (("c",), (), {"c": TEMP}),
    "meter_fault": (("kind",), (), {"kind": (KIND_METER, None, None)}),
    "meter_restore": ((), ("kind",), {"kind": (KIND_METER, None, None)}),
    "can_loss": _BARE,
    "can_restore": _BARE,
    "contactor_fault": (("kind",), (), {"kind": (KIND_CONTACTOR, None, None)}),
    "contactor_restore": _BARE,
    # boards/sim/plant.py COOLING_EVENTS is an equal copy (the board cannot import this module)
    "cooling_fault": (("kind",), ("open_s",), {"kind": (KIND_COOLING, None, None), "open_s": ("num", 0.1, 60)}),
    "cooling_restore": _BARE,
    "reboot": _BARE,
    "config": None,   # any config keys; their values are judged by the controller at run time
}


class ScenarioError(ValueError):
    """A scenario file that cannot be simulated. The message names file, place and problem."""

    def __init__(self, file, where, problem, index=None):
        self.file = str(file)
        self.where = where
        self.index = index          # position in the [[at]] array (from 0), None outside it
        self.problem = problem
        super().__init__("{}: {}: {}".format(self.file, where, problem))


def _type_problem(key, value, spec):
    from core.checks import type_problem   # the same words as the virtual board's plant port
    return type_problem(key, value, spec)


def _check_table(file, name, table, specs):
    if not isinstance(table, dict):
        raise ScenarioError(file, "[{}]".format(name), "must be a table")
    for key, value in table.items():
        if key not in specs:
            raise ScenarioError(file, "[{}]".format(name), "unknown key {!r} (allowed: {})".format(
                key, ", ".join(specs)))
        problem = _type_problem(key, value, specs[key])
        if problem:
            raise ScenarioError(file, "[{}]".format(name), problem)


def _check_config(file, table):
    if not isinstance(table, dict):
        raise ScenarioError(file, "[config]", "must be a table")
    from core import config as fwconfig

    try:
        fwconfig.validate(dict(table))
    except fwconfig.ConfigError as e:
        raise ScenarioError(file, "[config]", "; ".join("{}: {}".format(k, why) for k, why in e.errors)) from None


def _check_event(file, index, ev, duration_s, prev_t):
    def bad(problem):
        return ScenarioError(file, where, problem, index)

    where = "event #{}".format(index)
    if not isinstance(ev, dict):
        raise bad("must be a table")
    if "do" in ev and isinstance(ev["do"], str):
        where = "event #{} (do = {!r})".format(index, ev["do"])
    if "t_s" not in ev:
        raise bad("missing key 't_s'")
    t = ev["t_s"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise bad("t_s must be a number, got {!r}".format(t))
    if t < 0 or t > duration_s:
        raise bad("t_s = {} is outside the run (0 .. duration_s = {})".format(t, duration_s))
    if prev_t is not None and t < prev_t:
        raise bad("events out of time order: t_s = {} comes after t_s = {}".format(t, prev_t))
    if "do" not in ev:
        raise bad("missing key 'do'")
    do = ev["do"]
    if not isinstance(do, str) or do not in EVENTS:
        raise bad("unknown do {!r} (known: {})".format(do, ", ".join(sorted(EVENTS))))
    args = {k: v for k, v in ev.items() if k not in ("t_s", "do")}
    rule = EVENTS[do]
    if rule is None:   # config: any keys, judged by the controller when the event happens
        if not args:
            raise bad("config needs at least one settings key")
        for k, v in args.items():
            if isinstance(v, (dict, list)):
                raise bad("config value of {} must be a plain value".format(k))
        return t, do, args
    required, optional, specs = rule
    for key in args:
        if key not in required and key not in optional:
            allowed = ", ".join(required + optional) or "none"
            raise bad("unknown key {!r} (allowed: {})".format(key, allowed))
    for key in required:
        if key not in args:
            raise bad("missing key {!r}".format(key))
    for key, value in args.items():
        problem = _type_problem(key, value, specs[key])
        if problem:
            raise bad(problem)
    if do in ("grid", "grid_ramp") and "voltage_v" not in args and "frequency_hz" not in args:
        raise bad("{} needs voltage_v and/or frequency_hz".format(do))
    if do == "cooling_fault" and "open_s" in args and args["kind"] != "flicker":
        raise bad("open_s applies to kind = flicker only")
    return t, do, args


def _ms(seconds):
    return int(round(seconds * 1000))


def validate(data, file="<scenario>"):
    """The normalised scenario from a parsed TOML document; ScenarioError on the first problem."""
    if not isinstance(data, dict):
        raise ScenarioError(file, "file", "must be a TOML document")
    allowed = ("version", "duration_s", "vm", "config", "ev", "grid", "buses", "at", "title", "description")
    for key in data:
        if key not in allowed:
            raise ScenarioError(file, "top level", "unknown key {!r} (allowed: {})".format(key, ", ".join(allowed)))
    if "version" not in data:
        raise ScenarioError(file, "top level", "missing key 'version'")
    if data["version"] != VERSION or isinstance(data["version"], bool):
        raise ScenarioError(file, "top level", "version = {!r}: only version {} is known".format(
            data["version"], VERSION))
    if "duration_s" not in data:
        raise ScenarioError(file, "top level", "missing key 'duration_s'")
    problem = _type_problem("duration_s", data["duration_s"], ("num", 0.05, MAX_DURATION_S))
    if problem:
        raise ScenarioError(file, "top level", problem)
    duration_s = data["duration_s"]
    vm_name = data.get("vm", "micropython")
    if vm_name not in VMS:
        raise ScenarioError(file, "top level", "vm = {!r} is not one of {}".format(vm_name, ", ".join(VMS)))
    for key in ("title", "description"):
        if key in data and not isinstance(data[key], str):
            raise ScenarioError(file, "top level", "{} must be text".format(key))
    config = data.get("config", {})
    _check_config(file, config)
    ev = data.get("ev", {})
    _check_table(file, "ev", ev, EV_KEYS)
    grid = data.get("grid", {})
    _check_table(file, "grid", grid, START_KEYS)
    buses = data.get("buses", {})
    _check_table(file, "buses", buses, BUS_KEYS)
    at = data.get("at", [])
    if not isinstance(at, list):
        raise ScenarioError(file, "[[at]]", "must be an array of tables ([[at]])")
    events = []
    prev = None
    for i, item in enumerate(at):
        t, do, args = _check_event(file, i, item, duration_s, prev)
        prev = t
        events.append({"t_ms": _ms(t), "do": do, "args": args})
    return {
        "version": VERSION,
        "name": Path(str(file)).stem,
        "title": data.get("title", ""),
        "duration_ms": _ms(duration_s),
        "vm": vm_name,
        "config": dict(config),
        "ev": dict(ev),
        "grid": dict(grid),
        "buses": dict(buses),
        "events": events,
    }


def load(path):
    """Read and validate a scenario TOML file; ScenarioError (file, place, problem) when bad."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ScenarioError(path, "file", "cannot read: {}".format(e.strerror or e)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ScenarioError(path, "file", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(path, "file", "not valid TOML: {}".format(e)) from None
    return validate(data, path)
