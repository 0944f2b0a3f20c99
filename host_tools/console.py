"""The serial diagnostic console: `v2g console --port PORT`.

An interactive prompt over the controller's host link (pyserial underneath host_tools.link):

    status                      mode, pilot, contactor, limits, errors
    tel [N]                     live telemetry: N samples (default 5; Ctrl-C stops)
    events                      the controller's event log
    watch [SECONDS]             live events as they are raised and cleared
    config get [KEY ...]        settings (all, or the keys named)
    config set KEY=VALUE ...    change settings (validated by the controller: V2G-400 names the key)
    meter                       the latest meter reading and the RS-485 statistics
    can [N]                     CAN monitor: the BMS values the controller decoded (SoC, battery
                                temperature, current request) from N telemetry samples, and
                                the frame counters (received, sent, rejected by kind); the
                                controller keeps no raw frames: watch those with an slcan adapter
    clear                       clear a latched contactor fault (V2G-011) once its cause is gone
    update                      update slots and counters
    diag                        the full diagnostic report (as v2g-diag --all)
    help, quit

`Console.run_line(text)` runs one command and returns its output text, which is what the
tests and `--exec` use. History is kept in ~/.v2g_console_history when readline exists.
"""

import json
import os
import shlex
import threading
from decimal import Decimal

from host_tools import diag
from host_tools.link import LinkClient, LinkError

HISTORY = os.path.join(os.path.expanduser("~"), ".v2g_console_history")
HELP = __doc__.split("\n\n")[2]


class ConsoleError(Exception):
    """A command the console cannot run; the message says why and what to type."""


def _value(key, text):
    """KEY=VALUE values: JSON where it parses (numbers, true/false, null), else a plain string.
    A setting is never a list or an object: one is refused here, naming the key, however deep
    it nests (json.loads itself would end in a RecursionError on K=[[[[...)."""
    if text.lstrip()[:1] in ("[", "{"):
        raise ConsoleError("config set {}: a setting is a number, text, true/false or null, "
                           "not a list or an object".format(_key_text(key)))
    try:
        # a decimal as the exact text typed (0.036, not the nearest double): it goes to the
        # controller as a decimal fraction, which it takes only on the setting's step
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return text


def _key_text(key):
    # a key as typed may hold control characters: never echo them raw to the terminal
    if key.isprintable() and len(key) <= 40:
        return key
    t = repr(key)
    return t if len(t) <= 40 else t[:40] + "..."


def _number(cmd, args, default, lo, hi, kind=int):
    """The one optional number argument of cmd, within lo..hi; ConsoleError naming cmd otherwise."""
    if len(args) > 1:
        raise ConsoleError("{} takes at most one number".format(cmd))
    if not args:
        return default
    try:
        v = kind(args[0])
    except ValueError:
        v = None
    # nan fails both comparisons, so it is refused with the rest
    if v is None or not lo <= v <= hi:
        raise ConsoleError("{}: {!r} is not a {} from {:g} to {:g}".format(
            cmd, args[0], "whole number" if kind is int else "number", lo, hi))
    return v


# commands that take no arguments: a stray word is refused, not silently ignored
NO_ARGS = ("status", "events", "meter", "clear", "update", "diag")


def _fmt_ma(ma):
    return "{:.1f} A".format(ma / 1000) if isinstance(ma, int) else str(ma)


class Console:
    def __init__(self, url, timeout=3.0, link=None):
        self.url = url
        self.timeout = timeout
        self.link = link or LinkClient(url)     # heartbeats on, as a host would

    def open(self):
        self.link.open()
        return self

    def close(self):
        self.link.close()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # -- commands -------------------------------------------------------------------------

    def cmd(self, op, args=None):
        r = self.link.command(op, args or {}, timeout=self.timeout)
        if not r.ok:
            msg = r.msg if r.msg.startswith(str(r.code)) else "{} {}".format(r.code, r.msg)
            raise ConsoleError("{}: refused: {}".format(op, msg))
        return r

    def run_line(self, line):
        try:
            words = shlex.split(line)
        except ValueError as e:     # an unclosed quote
            raise ConsoleError("cannot read {!r}: {}".format(line, e)) from None
        if not words:
            return ""
        name, args = words[0].lower(), words[1:]
        handler = getattr(self, "do_" + name, None)
        if handler is None:
            raise ConsoleError("unknown command {!r}; type help".format(name))
        if args and name in NO_ARGS:
            raise ConsoleError("{} takes no arguments".format(name))
        try:
            return handler(args)
        except LinkError as e:
            raise ConsoleError("link: {}".format(e)) from None
        except diag.DiagError as e:
            raise ConsoleError(str(e)) from None

    def do_help(self, args):
        return HELP

    def do_status(self, args):
        d = self.cmd("diag").data
        lim = d.get("limits", {})
        return "\n".join([
            "mode {}  pilot {}  contactor {}".format(d.get("mode"), d.get("cp_state"),
                                                     "closed" if d.get("contactor") else "open"),
            "charge limit {} ({})  discharge limit {} ({})".format(
                _fmt_ma(lim.get("charge_ma")), lim.get("charge_src"),
                _fmt_ma(lim.get("discharge_ma")), lim.get("discharge_src")),
            "errors: {}".format(", ".join(d.get("errors", [])) or "none"),
            "firmware {} board {} boot {} up {} s".format(d.get("fw"), d.get("board"), d.get("boot_count"),
                                                          (d.get("uptime_ms") or 0) // 1000),
        ])

    def _samples(self, n, wait_s=None):
        got, done = [], threading.Event()

        def on_tel(msg):
            got.extend(msg.get("samples", []))
            if len(got) >= n:
                done.set()

        unsubscribe = self.link.subscribe("tel", on_tel)
        try:
            done.wait(wait_s if wait_s is not None else n * 2 + 3)
        finally:
            unsubscribe()
        if not got:
            raise ConsoleError("no telemetry from the controller")
        return got[:n]

    def do_tel(self, args):
        n = _number("tel", args, 5, 1, 100)
        rows = ["{:>9} {:2} {:<11} {:>8} {:>8} {:>7} {:>6} {:>8} {}".format(
            "t_ms", "cp", "mode", "meter", "limit", "V", "soc%", "req", "errors")]
        for s in self._samples(n):
            rows.append("{:>9} {:2} {:<11} {:>8} {:>8} {:>7.1f} {:>6.1f} {:>8} {}".format(
                s.get("t_ms"), s.get("cp"), s.get("mode"), _fmt_ma(s.get("ma", 0)),
                _fmt_ma(s.get("lim_chg_ma", 0)), s.get("mv", 0) / 1000, s.get("soc_pm", 0) / 10,
                _fmt_ma(s.get("req_ma", 0)), ",".join(s.get("errors", [])) or "-"))
        return "\n".join(rows)

    def do_events(self, args):
        evs = diag.fetch_events(self.link)
        if not evs:
            return "event log empty"
        return "\n".join("t={:>10} ms  {}  {:<6} {}".format(e[0], e[1], "raised" if e[2] else "clear", e[3])
                         for e in evs)

    def do_watch(self, args):
        seconds = _number("watch", args, 10.0, 0.1, 3600, float)
        lines = []
        unsubscribe = self.link.subscribe("evt", lambda m: lines.extend(
            "t={} ms {} {} {}".format(e["t_ms"], e["code"], "raised" if e["on"] else "clear", e["msg"])
            for e in m.get("events", [])))
        try:
            threading.Event().wait(seconds)
        finally:
            unsubscribe()
        return "\n".join(lines) if lines else "no events in {:g} s".format(seconds)

    def do_config(self, args):
        if not args or args[0] not in ("get", "set"):
            raise ConsoleError("config get [KEY ...]  or  config set KEY=VALUE ...")
        if args[0] == "get":
            data = self.cmd("config_get", {"keys": args[1:]} if args[1:] else {}).data
            vals = data.get("values", {})
            return "\n".join("{} = {}".format(k, json.dumps(vals[k])) for k in sorted(vals)) + \
                "\n(config hash {})".format(data.get("cfg_hash"))
        changes = {}
        for item in args[1:]:
            if "=" not in item:
                raise ConsoleError("config set wants KEY=VALUE, got {!r}".format(item))
            k, v = item.split("=", 1)
            if not k:
                raise ConsoleError("config set wants KEY=VALUE, got {!r}".format(item))
            changes[k] = _value(k, v)
        if not changes:
            raise ConsoleError("config set wants at least one KEY=VALUE")
        r = self.cmd("config_set", changes)
        return "{} (config hash {})".format(r.msg, r.data.get("cfg_hash"))

    def do_meter(self, args):
        s = self._samples(1)[0]
        stats = diag.with_zeros(self.cmd("diag").data.get("buses", {}).get("meter", diag.NOT_REPORTED),
                                diag.METER_COUNTERS)
        lines = ["current {}  voltage {:.1f} V  frequency {:.3f} Hz  power {} W".format(
            _fmt_ma(s.get("ma", 0)), s.get("mv", 0) / 1000, s.get("mhz", 0) / 1000, s.get("w")),
            "energy in {} Wh  out {} Wh".format(s.get("e_in_wh"), s.get("e_out_wh")),
            "RS-485: {}".format(json.dumps(stats))]
        return "\n".join(lines)

    def do_can(self, args):
        n = _number("can", args, 3, 1, 100)
        rows = ["{:>9} {:>6} {:>7} {:>9}".format("t_ms", "soc%", "bat C", "request")]
        for s in self._samples(n):
            rows.append("{:>9} {:>6.1f} {:>7.1f} {:>9}".format(
                s.get("t_ms"), s.get("soc_pm", 0) / 10, s.get("bat_dc", 0) / 10, _fmt_ma(s.get("req_ma", 0))))
        stats = self.cmd("diag").data.get("buses", {}).get("can", diag.NOT_REPORTED)
        rows.append("CAN frames: {}".format(json.dumps(diag.with_zeros(stats, diag.CAN_COUNTERS))))
        return "\n".join(rows)

    def do_clear(self, args):
        # the controller's one latched error; it refuses while the contactor still reads closed
        r = self.cmd("clear_fault")
        errs = self.cmd("diag").data.get("errors", [])
        return "{}; active errors: {}".format(r.msg, ", ".join(errs) or "none")

    def do_update(self, args):
        r = self.link.command("fota_report")
        return "update: {}".format(json.dumps(r.data) if r.ok else diag.NOT_REPORTED)

    def do_diag(self, args):
        # diag.collect opens its own client; two readers on one port would steal each
        # other's bytes, so this console's link is closed meanwhile
        self.link.close()
        try:
            return diag.render(diag.collect(self.url, self.timeout))
        finally:
            self.link = LinkClient(self.url)
            self.link.open()


def interactive(console, out):
    """The prompt: read a line, run it, print the result or the error; Ctrl-D/quit ends."""
    try:
        import readline
        try:
            readline.read_history_file(HISTORY)
        except OSError:
            pass
    except ImportError:
        readline = None
    try:
        while True:
            try:
                line = input("v2g> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                print(file=out)
                continue
            if line.strip() in ("quit", "exit"):
                break
            try:
                text = console.run_line(line)
            except ConsoleError as e:
                text = "error: {}".format(e)
            except KeyboardInterrupt:
                text = "(interrupted)"
            if text:
                print(text, file=out)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(HISTORY)
            except OSError:
                pass
