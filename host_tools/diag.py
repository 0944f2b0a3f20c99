"""The diagnostic report for the infrastructure auditor: `v2g-diag --all`.

    report = diag.collect("/dev/ttyUSB0")      # a dict, the --json output
    print(diag.render(report))                 # the text output
    html = diag.render_html(report)            # one self-contained HTML file

Everything comes from the running controller over its host link ("hello", and the
commands diag, measurements, status, config_get, events, fota_report); nothing is computed on
the host but each setting's source (the settings file or the default), the texts of the error
codes, both from the firmware's own tables, the bus counters the firmware leaves out because
they are zero, this host's own link counters, and the wall-clock time of each event of the
running boot: the controller has no clock, so that time is this host's clock at the moment
of reading, less the controller's uptime since the event (said as such in the report). A
section the firmware does not report is shown as NOT_REPORTED rather than guessed.
"""

import html
import time

from core import ticks
from host_tools import flash
from host_tools.link import LinkClient, LinkError, LinkTimeout, PortInUse

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


def plain(x):
    """x with bytes as hex text and tuples as lists: what JSON and a text report can show
    (a download id is 16 raw bytes)."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x).hex()
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def no_hello_hint(url, err, tail=b""):
    """Why a port gave no hello, with what the bytes that did come back (tail) suggest."""
    text = "no answer from the controller on {}: {}".format(url, err)
    # a REPL echoes what it is sent (the request's text, with line-editing escapes) or shows
    # its banner and prompt; the link port never echoes
    if any(m in tail for m in (b">>>", b"raw REPL", b"MicroPython", b"Traceback", b"hello", b"\x1b[")):
        return text + ("; this port answers as a MicroPython REPL, not the host link: give the link port "
                       "(`v2g vboard` prints both; on a board, see docs/host-link.md)")
    if not tail:
        return text + ("; nothing came back at all: the wrong port, or the controller is not running "
                       "(mpremote and `v2g flash` stop it at the REPL: press reset or run `mpremote reset`)")
    return text + "; bytes came back but no valid frame (a wrong baud rate, or not the host link)"


# the reset causes a HAL reports (machine.reset_cause() on a board), in words
RESET_CAUSES = {
    "power_on": "power-on", "hard_reset": "reset pin or button", "watchdog": "watchdog",
    "soft_reset": "soft reset (the firmware or the REPL asked for it)", "deepsleep": "wake from deep sleep",
    "brown_out": "brown-out (the supply dipped)",
}
# boards whose reset flags fold a brown-out into power-on (STM32: BORRSTF is read with PORRSTF)
BROWN_OUT_AS_POWER_ON = ("pyboard",)


def reset_text(cause, board, update):
    words = RESET_CAUSES.get(cause, "{} (a cause this host has no words for)".format(cause))
    if cause == "power_on" and board in BROWN_OUT_AS_POWER_ON:
        words += " or brown-out (this board does not tell them apart)"
    if isinstance(update, dict) and update.get("trial"):
        words += "; this boot runs update {} on trial".format(update.get("version"))
    return words


def event_dict(e):
    if isinstance(e, dict):
        return e
    # [t_ms, code, on, msg, boot]; code is None for a state change (pilot, mode) or an update
    # note, and boot is missing from logs written before entries carried it
    t_ms, code, on, msg, boot = (list(e) + [None] * 5)[:5]
    return {"boot": boot, "t_ms": t_ms, "code": code, "on": on, "msg": msg}


def event_kind(e):
    """error, refusal, state or update: what an auditor filters on."""
    msg = e.get("msg") or ""
    if e.get("code") is None:
        return "update" if msg.startswith("update ") else "state"
    if e["code"] in ("V2G-601", "V2G-602", "V2G-603", "V2G-604") or msg.startswith("refused fota_"):
        return "update"
    return "refusal" if msg.startswith("refused ") else "error"


def event_what(e):
    """The code and raised/clear, or the kind of a note without a code: fixed width."""
    if e.get("code"):
        return "{}  {:<6}".format(e["code"], "raised" if e.get("on") else "clear")
    return "{:<15}".format(event_kind(e))


def wall_clock(read_at, uptime_ms, boot, t_ms, this_boot):
    """Host time (seconds since the epoch) of an event of the running boot, None for one of
    an earlier boot: t_ms restarts at each boot and the controller keeps no clock across."""
    if boot != this_boot or not isinstance(t_ms, int) or not isinstance(uptime_ms, int):
        return None
    # signed, on the controller's wrapping ticks: an event raised after the uptime was read
    # (the log is fetched after it) is a few ms in the future, not a whole wrap (12.4 days) back
    return read_at - ticks.diff(uptime_ms, t_ms) / 1000


def _iso(t):
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + \
        ".{:03d}".format(int(t * 1000) % 1000) + time.strftime("%z", time.localtime(t))


def collect(url, timeout=3.0):
    """Ask the controller on url (its host-link port) for everything in the report."""
    try:
        with LinkClient(url, heartbeat_s=None) as lk:
            try:
                hello = _hello(lk, timeout)
            except LinkTimeout as e:
                raise DiagError(no_hello_hint(url, e, lk.rx_tail)) from None
            sent = time.time()
            r = lk.command("diag", {}, timeout=timeout)
            read_at = time.time()
            if not r.ok:
                raise DiagError("diag refused: {} {}".format(r.code, r.msg))
            d = r.data
            # the uptime was read between sending and the answer: take the middle
            read_at = (sent + read_at) / 2
            m = lk.command("measurements", {}, timeout=timeout)
            measurements = m.data if m.ok else NOT_REPORTED
            status = _cmd(lk, "status", timeout=timeout)
            cfg = _cmd(lk, "config_get", timeout=timeout)
            events = fetch_events(lk, timeout)
            upd = lk.command("fota_report", timeout=timeout)
            update = plain(upd.data) if upd.ok else NOT_REPORTED
            host_stats = lk.stats
    except PortInUse as e:
        raise DiagError(str(e)) from None
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
    boot = d.get("boot_count", hello.get("boot_count"))
    uptime = d.get("uptime_ms")
    evs = []
    for e in events:
        e = dict(event_dict(e), kind=None)
        e["kind"] = event_kind(e)
        e["wall_clock"] = _iso(wall_clock(read_at, uptime, e["boot"], e["t_ms"], boot))
        evs.append(e)
    cause = d.get("reset_cause", hello.get("reset_cause"))
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "port": url,
        "clock": {"host_time_at_read": _iso(read_at), "controller_uptime_ms": uptime, "boot": boot,
                  "note": "event times of this boot are this host's clock at the moment of reading "
                          "less the controller's uptime since the event (the controller keeps no "
                          "clock); events of earlier boots have none"},
        "firmware": {"fw": d.get("fw", hello.get("fw")), "board": board,
                     "boot_count": boot,
                     "reset_cause": cause,
                     "reset_cause_text": reset_text(cause, board, update),
                     "uptime_ms": d.get("uptime_ms"), "cfg_hash": d.get("cfg_hash", hello.get("cfg_hash")),
                     "mode": d.get("mode"), "cp_state": d.get("cp_state"),
                     "contactor": d.get("contactor")},
        "config": config,
        "config_notes": notes,
        "config_file": {"state": d.get("config_file"), "refused_because": d.get("config_problem")},
        "limits": {"charge_ma": limits.get("charge_ma"), "charge_source": limits.get("charge_src"),
                   "discharge_ma": limits.get("discharge_ma"),
                   "discharge_source": limits.get("discharge_src")},
        "errors": [{"code": c, "meaning": error_text(c)} for c in active],
        "storage": _storage(d.get("storage")),
        "measurements": measurements,
        "events": evs,
        "update_history": [e for e in evs if e["kind"] == "update"],
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


def _amps(ma):
    return "-" if ma is None else "{:.1f} A".format(ma / 1000)


def _kv(d, indent="  "):
    if not isinstance(d, dict):
        return [indent + str(d)]
    out = []
    for k, v in d.items():
        if isinstance(v, dict):     # a nested section (a download in progress): one level down
            out.append("{}{}:".format(indent, k))
            out += _kv(v, indent + "  ")
        else:
            out.append("{}{:<18} {}".format(indent, k, v))
    return out


def _age_text(ms):
    # the controller reports ages beyond 2**29 ms (core/ticks.py age()) as never read
    if not isinstance(ms, int) or ms > 1 << 29:
        return "never read"
    return "{} ms old".format(ms)


def _phases(vals, unit, scale):
    vals = vals if isinstance(vals, list) else [vals]
    if len(vals) == 1:
        return "{:.1f} {}".format(vals[0] / scale, unit)
    return "  ".join("L{} {:.1f} {}".format(i + 1, v / scale, unit) for i, v in enumerate(vals))


def _duty(pm):
    if pm == 1000:
        return "no PWM (steady +12 V)"
    if pm == 0:
        return "no PWM (steady -12 V, state F)"
    return "duty {:.1f} %".format((pm or 0) / 10)


def measurement_rows(m):
    """(what, value, age) rows of the measurements answer, for text and HTML."""
    if not isinstance(m, dict):
        return [("measurements", str(m), "")]
    g, b, ev, p, c = (m.get(k, {}) for k in ("grid", "bms", "evse", "pilot", "contactor"))
    src = "meter" if g.get("source") == "meter" else "board"
    gage = "{} ({}{})".format(_age_text(g.get("age_ms")), src, "" if g.get("ok", True) else ", reading not valid")
    mw = g.get("mw_total", 0) or 0
    bage = _age_text(b.get("age_ms")) + " (BMS)"
    soc = b.get("soc_pm")
    return [
        ("grid voltage", _phases(g.get("mv", [0]), "V", 1000), gage),
        ("grid frequency", "{:.3f} Hz".format((g.get("mhz") or 0) / 1000), gage),
        # a meter's phase currents are magnitudes: the direction is the total power's sign
        ("current", _phases(g.get("ma", [0]), "A", 1000) + (
            "" if not mw else " (out of the EV)" if mw < 0 else " (into the EV)"), gage),
        ("power", "import {:.0f} W  export {:.0f} W  ({})".format(
            max(mw, 0) / 1000, max(-mw, 0) / 1000, _phases(g.get("mw", [0]), "W", 1000)), gage),
        ("energy registers", "import {} Wh  export {} Wh".format(g.get("import_wh"), g.get("export_wh")), gage),
        ("EV SoC", "-" if not isinstance(soc, int) or b.get("age_ms", 1 << 29) >= 1 << 29
         else "{:.1f} %".format(soc / 10), bage),
        ("battery temperature", "{:.1f} C".format((b.get("temp_dc") or 0) / 10), bage),
        ("EV allows", "charge {}  discharge {}".format(_amps(b.get("max_charge_ma")),
                                                      _amps(b.get("max_discharge_ma"))), bage),
        ("EVSE temperature", "{:.1f} C".format((ev.get("temp_dc") or 0) / 10), _age_text(ev.get("age_ms"))),
        ("cable (PP)", "{} A".format(ev.get("pp_a")), _age_text(ev.get("age_ms"))),
        ("pilot", "state {}  {}  high {:.1f} V  low {:.1f} V".format(
            p.get("state"), _duty(p.get("duty_pm")), (p.get("high_mv") or 0) / 1000,
            (p.get("low_mv") or 0) / 1000), _age_text(p.get("age_ms"))),
        ("contactor", "commanded {}  feedback {}".format("closed" if c.get("command") else "open",
                                                         "closed" if c.get("feedback") else "open"),
         _age_text(c.get("age_ms"))),
        ("current request", _amps(m.get("request_ma")), "this control step"),
    ]


def _event_time(e):
    return e.get("wall_clock") or "(earlier boot, no clock)"


def render(r):
    """The report as text, one section after the other."""
    fw = r["firmware"]
    out = ["V2G controller diagnostic report", "generated {} on {}".format(r["generated"], r["port"]), ""]
    out.append("[firmware]")
    out += _kv(fw)
    clock = r.get("clock", {})
    out += ["", "[measurements]  (age: ms since the reading when the controller answered)"]
    for what, value, age in measurement_rows(r.get("measurements", NOT_REPORTED)):
        out.append("  {:<20} {:<46} {}".format(what, value, age))
    out += ["", "[config]  (source: v2g_vars.json = set by the installer, default = not in the file)"]
    for c in r["config"]:
        note = "" if c["source"] == "default" or c["value"] != c["default"] else "  (= default)"
        out.append("  {:<27} {:<22} {}{}".format(c["key"], str(c["value"]), c["source"], note))
    out += ["  note: " + n for n in r.get("config_notes", [])]
    refused = (r.get("config_file") or {}).get("refused_because")
    if refused:
        out += ["  settings file REFUSED at boot: " + refused]
    lim = r["limits"]
    out += ["", "[limits]",
            "  charge     {:>8}  set by {}".format(_amps(lim["charge_ma"]), lim["charge_source"]),
            "  discharge  {:>8}  set by {}".format(_amps(lim["discharge_ma"]), lim["discharge_source"])]
    out += ["", "[errors]"]
    out += ["  {}  {}".format(e["code"], e["meaning"]) for e in r["errors"]] or ["  none active"]
    out += _storage_lines(r.get("storage", NOT_REPORTED))
    out += ["", "[events]  ({} in the controller's log)".format(len(r["events"])),
            "  wall clock: " + clock.get("note", "none")]
    for e in r["events"]:
        boot = "-" if e.get("boot") is None else e["boot"]
        out.append("  boot {:>3}  t={:>10} ms  {:<29}  {} {}".format(
            boot, e["t_ms"], _event_time(e), event_what(e), e["msg"]))
    out += ["", "[update history]  (installed, confirmed, reverted and refused updates, from the log)"]
    for e in r.get("update_history", []):
        out.append("  boot {:>3}  {:<29}  {}".format("-" if e.get("boot") is None else e["boot"],
                                                      _event_time(e), e["msg"]))
    if not r.get("update_history"):
        out.append("  none in the log")
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


_CSS = ("body{font-family:sans-serif;margin:2em;color:#111}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #bbb;padding:2px 8px;text-align:left;vertical-align:top;font-size:90%}"
        "th{background:#eee}h2{margin-top:1.5em;border-bottom:1px solid #888}"
        "tr.error td{background:#fde8e8}tr.update td{background:#e8f0fd}.note{color:#555}")


def _table(head, rows, classes=None):
    e = html.escape
    out = ["<table>", "<tr>" + "".join("<th>{}</th>".format(e(str(h))) for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="{}"'.format(e(classes[i])) if classes and classes[i] else ""
        out.append("<tr{}>".format(cls) + "".join("<td>{}</td>".format(e("" if v is None else str(v)))
                                                   for v in row) + "</tr>")
    out.append("</table>")
    return out


def _flat(d, prefix=""):
    if not isinstance(d, dict):
        return [(prefix or "value", d)]
    rows = []
    for k, v in d.items():
        rows += _flat(v, prefix + str(k) + ".") if isinstance(v, dict) else [(prefix + str(k), v)]
    return rows


def render_html(r):
    """The report as one self-contained HTML page (no scripts, no links out): every value
    escaped, sections as tables, for an auditor to archive."""
    e = html.escape
    fw = r["firmware"]
    title = "V2G controller diagnostic report: {} on {}, {}".format(fw.get("board"), r["port"], r["generated"])
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>{}</title><style>{}</style></head><body>".format(e(title), _CSS),
           "<h1>V2G controller diagnostic report</h1>",
           '<p class="note">generated {} on {}</p>'.format(e(r["generated"]), e(r["port"]))]
    out += ['<h2 id="firmware">Firmware</h2>'] + _table(("item", "value"), list(fw.items()))
    out += ['<h2 id="measurements">Measurements</h2>',
            '<p class="note">age: ms since the reading when the controller answered</p>']
    out += _table(("what", "value", "age"), measurement_rows(r.get("measurements", NOT_REPORTED)))
    out += ['<h2 id="limits">Limits</h2>'] + _table(("direction", "limit", "set by"), [
        ("charge", _amps(r["limits"]["charge_ma"]), r["limits"]["charge_source"]),
        ("discharge", _amps(r["limits"]["discharge_ma"]), r["limits"]["discharge_source"])])
    out += ['<h2 id="errors">Active errors</h2>']
    out += _table(("code", "meaning"), [(x["code"], x["meaning"]) for x in r["errors"]]) if r["errors"] \
        else ["<p>none active</p>"]
    clock = r.get("clock", {})
    out += ['<h2 id="events">Events</h2>', '<p class="note">{}</p>'.format(e(clock.get("note", "")))]
    evs = r["events"]
    out += _table(("boot", "t (ms)", "wall clock (host)", "kind", "code", "", "message"),
                  [(x.get("boot"), x["t_ms"], _event_time(x), x.get("kind"), x.get("code") or "",
                    ("raised" if x.get("on") else "clear") if x.get("code") else "", x["msg"]) for x in evs],
                  [x.get("kind") if x.get("kind") in ("error", "update") else "" for x in evs])
    out += ['<h2 id="update-history">Update history</h2>']
    hist = r.get("update_history", [])
    out += _table(("boot", "wall clock (host)", "code", "message"),
                  [(x.get("boot"), _event_time(x), x.get("code") or "", x["msg"]) for x in hist]) if hist \
        else ["<p>none in the log</p>"]
    out += ['<h2 id="config">Settings</h2>']
    out += _table(("key", "value", "source", "default"),
                  [(c["key"], c["value"], c["source"], c["default"]) for c in r["config"]])
    out += ["<p>note: {}</p>".format(e(n)) for n in r.get("config_notes", [])]
    out += ['<h2 id="statistics">Statistics</h2>']
    st = r["statistics"]
    sections = [("host link, controller side", st["link_controller"]), ("host link, this host", st["link_host"]),
                ("meter (RS-485)", st["meter"]), ("CAN (VCU/BMS)", st["can"])]
    sections += [("board, " + k, v) for k, v in st.get("board", {}).items()]
    for name, sec in sections:
        out += ["<h3>{}</h3>".format(e(name))] + _table(("counter", "value"), _flat(sec))
    out += ['<h2 id="update">Update slots</h2>'] + _table(("item", "value"), _flat(r["update"]))
    out += ["</body></html>"]
    return "\n".join(out) + "\n"


def summary(r):
    fw = r["firmware"]
    errs = ", ".join(e["code"] for e in r["errors"]) or "none"
    lim = r["limits"]
    return ("firmware {} on {} (boot {}, {}), mode {}, charge {} by {}, discharge {} by {}, errors: {}\n"
            .format(fw["fw"], fw["board"], fw["boot_count"], fw["reset_cause"], fw["mode"],
                    _amps(lim["charge_ma"]), lim["charge_source"], _amps(lim["discharge_ma"]),
                    lim["discharge_source"], errs))
