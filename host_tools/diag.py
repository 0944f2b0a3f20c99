"""The diagnostic report for the infrastructure auditor: `v2g-diag --all`.

    report = diag.collect("/dev/ttyUSB0")      # a dict, the --json output
    print(diag.render(report))                 # the text output

Everything comes from the running controller over its host link ("hello", and the
commands diag, status, config_get, events, fota_report); nothing is computed on the host but
each setting's source (the settings file or the default), the texts of the error codes, both
from the firmware's own tables, the bus counters the firmware leaves out because they are
zero, and this host's own link counters. A section the firmware does not report is shown as
NOT_REPORTED rather than guessed.
"""

import time

from host_tools import flash
from host_tools.link import LinkClient, LinkError, LinkTimeout

NOT_REPORTED = "not reported by this firmware yet"
SECTIONS = ("firmware", "config", "limits", "errors", "events", "statistics", "update")


class DiagError(RuntimeError):
    """The controller cannot be reached or answered with a refusal."""


def _errors_module():
    from core import errors      # the controller's own code table
    return errors


def error_text(code):
    try:
        return _errors_module().text(code)
    except (ValueError, KeyError, IndexError):
        return ""


# The bus tasks' counters (firmware/app/meter.py MeterTask.stats, firmware/app/canbus.py
# report): the firmware leaves counters at zero out of its answer to fit one frame; the report
# shows every known counter, zeros included, so "none" is visible as 0 rather than absent.
METER_COUNTERS = ("snap_ok", "snap_failed", "frames_ok", "timeouts", "crc_errors", "wrong_unit",
                  "bad_length", "bad_function", "stray_bytes", "overruns", "bad_values")
CAN_COUNTERS = ("rx", "rx_ok", "tx", "tx_refused", "bad_dlc", "unknown_id", "bad_checksum",
                "bad_range", "counter_stuck", "counter_skip", "saturated", "bms_faults",
                "bms_fault_bits")


def with_zeros(section, names):
    """A counter section with every known counter; a text (e.g. 'plant model') stays as is."""
    if not isinstance(section, dict):
        return section
    out = {n: section.get(n, 0) for n in names}
    out.update(section)
    return out


def _hello(lk, timeout, tries=3):
    """hello with short tries: it carries no txn for the link client to re-send, so the report
    asks again itself (each unanswered try is in the client's `timeouts` counter)."""
    for attempt in range(tries):
        try:
            return lk.hello(timeout=timeout)
        except LinkTimeout:
            if attempt == tries - 1:
                raise


def _cmd(lk, op, args=None, timeout=3.0):
    # the client re-sends the same txn on silence (a command is never applied twice) and
    # counts each unanswered try in its `timeouts` counter
    r = lk.command(op, args or {}, timeout=timeout)
    if not r.ok:
        raise DiagError("{} refused: {} {}".format(op, r.code, r.msg))
    return r.data


def fetch_events(lk, timeout=3.0):
    """The controller's whole event log, page by page (one frame holds about 1 kB)."""
    events, start = [], 0
    while start is not None:
        page = _cmd(lk, "events", {"start": start}, timeout)
        events += page.get("events", [])
        start = page.get("next")
    return events


def collect(url, timeout=3.0):
    """Ask the controller on url (its host-link port) for everything in the report."""
    try:
        with LinkClient(url, heartbeat_s=None) as lk:
            hello = _hello(lk, timeout)
            d = _cmd(lk, "diag", timeout=timeout)
            status = _cmd(lk, "status", timeout=timeout)
            cfg = _cmd(lk, "config_get", timeout=timeout)
            events = fetch_events(lk, timeout)
            upd = lk.command("fota_report", timeout=timeout)
            update = upd.data if upd.ok else NOT_REPORTED
            host_stats = lk.stats
    except LinkError as e:
        raise DiagError("no answer from the controller on {}: {}".format(url, e)) from None
    board = d.get("board") or hello.get("board")
    try:
        board_info = flash.load_board(board)
    except flash.FlashError:
        board_info = None       # a board this host does not know: the general ranges
    defaults = flash.config_module().defaults(flash.config_limits(board_info) if board_info else None)
    in_file = set(d.get("config_file_keys", []))
    values = cfg.get("values", {})
    config = [{"key": k, "value": values[k], "source": "v2g_vars.json" if k in in_file else "default",
               "default": defaults.get(k)} for k in sorted(values)]
    notes = flash.config_notes(values, board_info)
    limits = d.get("limits", {})
    active = d.get("errors", [])
    buses = d.get("buses", {}) if isinstance(d.get("buses"), dict) else {}
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "port": url,
        "firmware": {"fw": d.get("fw", hello.get("fw")), "board": board,
                     "boot_count": d.get("boot_count", hello.get("boot_count")),
                     "reset_cause": d.get("reset_cause", hello.get("reset_cause")),
                     "uptime_ms": d.get("uptime_ms"), "cfg_hash": d.get("cfg_hash", hello.get("cfg_hash")),
                     "mode": d.get("mode"), "cp_state": d.get("cp_state"),
                     "contactor": d.get("contactor")},
        "config": config,
        "config_notes": notes,
        "limits": {"charge_ma": limits.get("charge_ma"), "charge_source": limits.get("charge_src"),
                   "discharge_ma": limits.get("discharge_ma"),
                   "discharge_source": limits.get("discharge_src")},
        "errors": [{"code": c, "meaning": error_text(c)} for c in active],
        "storage": _storage(d.get("storage")),
        "events": [_event(e) for e in events],
        "statistics": {"link_controller": d.get("link", NOT_REPORTED),
                       "link_host": host_stats,
                       "meter": with_zeros(buses.get("meter", NOT_REPORTED), METER_COUNTERS),
                       "can": with_zeros(buses.get("can", NOT_REPORTED), CAN_COUNTERS),
                       # what the board's HAL adds: port drivers, sensors
                       "board": {k: v for k, v in buses.items() if k not in ("meter", "can")}},
        "update": update,
        "status": status,
    }


def _storage(st):
    """The controller's flash: state files found damaged at a boot (V2G-020, kept until an
    operator's clear_fault) and failed writes since this boot."""
    if not isinstance(st, dict) or "damaged" not in st:
        return NOT_REPORTED
    return {"damaged": st.get("damaged", []), "write_errors": st.get("errors", 0),
            "last_write_error": st.get("last", "")}


def _storage_lines(st):
    if not isinstance(st, dict):
        return ["  stored state: " + str(st)]
    if st["damaged"]:
        out = ["  stored state: DAMAGED {} (V2G-020: the event log says what was used in its "
               "place; an operator's clear_fault acknowledges it)".format(", ".join(st["damaged"]))]
    else:
        out = ["  stored state: every file read whole at boot"]
    if st["write_errors"]:
        out.append("  storage writes failed: {} since boot (last: {})".format(
            st["write_errors"], st["last_write_error"]))
    return out


def _event(e):
    if isinstance(e, dict):
        return e
    # [t_ms, code, on, msg, boot]; code is None for a state change (pilot, mode) and boot is
    # missing from logs written before entries carried it
    t_ms, code, on, msg, boot = (list(e) + [None] * 5)[:5]
    return {"boot": boot, "t_ms": t_ms, "code": code, "on": on, "msg": msg}


def _amps(ma):
    return "-" if ma is None else "{:.1f} A".format(ma / 1000)


def _kv(d, indent="  "):
    if not isinstance(d, dict):
        return [indent + str(d)]
    return ["{}{:<18} {}".format(indent, k, v) for k, v in d.items()]


def render(r):
    """The report as text, one section after the other."""
    fw = r["firmware"]
    out = ["V2G controller diagnostic report", "generated {} on {}".format(r["generated"], r["port"]), ""]
    out.append("[firmware]")
    out += _kv(fw)
    out += ["", "[config]  (source: v2g_vars.json = set by the installer, default = not in the file)"]
    for c in r["config"]:
        note = "" if c["source"] == "default" or c["value"] != c["default"] else "  (= default)"
        out.append("  {:<27} {:<22} {}{}".format(c["key"], str(c["value"]), c["source"], note))
    out += ["  note: " + n for n in r.get("config_notes", [])]
    lim = r["limits"]
    out += ["", "[limits]",
            "  charge     {:>8}  set by {}".format(_amps(lim["charge_ma"]), lim["charge_source"]),
            "  discharge  {:>8}  set by {}".format(_amps(lim["discharge_ma"]), lim["discharge_source"])]
    out += ["", "[errors]"]
    out += ["  {}  {}".format(e["code"], e["meaning"]) for e in r["errors"]] or ["  none active"]
    out += _storage_lines(r.get("storage", NOT_REPORTED))
    out += ["", "[events]  ({} in the controller's log)".format(len(r["events"]))]
    for e in r["events"]:
        what = ("{}  {:<6}".format(e["code"], "raised" if e["on"] else "clear") if e["code"]
                else "{:<15}".format("state"))
        boot = "-" if e.get("boot") is None else e["boot"]
        out.append("  boot {:>3}  t={:>10} ms  {} {}".format(boot, e["t_ms"], what, e["msg"]))
    st = r["statistics"]
    out += ["", "[statistics]", "  host link, controller side:"]
    out += _kv(st["link_controller"], "    ")
    out += ["  host link, this host:"]
    out += _kv(st["link_host"], "    ")
    out += ["  meter (RS-485):"]
    out += _kv(st["meter"], "    ")
    out += ["  CAN (VCU/BMS):"]
    out += _kv(st["can"], "    ")
    for name, section in st.get("board", {}).items():
        out += ["  board, {}:".format(name)]
        out += _kv(section, "    ")
    out += ["", "[update]"]
    out += _kv(r["update"])
    return "\n".join(out) + "\n"


def summary(r):
    fw = r["firmware"]
    errs = ", ".join(e["code"] for e in r["errors"]) or "none"
    lim = r["limits"]
    return ("firmware {} on {} (boot {}, {}), mode {}, charge {} by {}, discharge {} by {}, errors: {}\n"
            .format(fw["fw"], fw["board"], fw["boot_count"], fw["reset_cause"], fw["mode"],
                    _amps(lim["charge_ma"]), lim["charge_source"], _amps(lim["discharge_ma"]),
                    lim["discharge_source"], errs))
