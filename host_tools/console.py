"""The serial diagnostic console: `v2g console --port PORT`.

An interactive prompt over the controller's host link (pyserial underneath host_tools.link):

    status                      mode, pilot, contactor, limits, errors
    tel [N]                     live telemetry, one row per sample as it arrives: N samples
                                (default 5); Ctrl-C stops and keeps the rows shown
    events [N]                  the controller's event log (the newest N, all by default)
    watch [SECONDS]             live events as they are raised and cleared, for SECONDS
                                (default 10); Ctrl-C stops and keeps what was shown
    config get [KEY ...]        settings (all, or the keys named)
    config set KEY=VALUE ...    change settings (validated by the controller: V2G-400 names the key)
    meter                       the latest meter reading and the RS-485 statistics
    can [N]                     CAN monitor: the BMS values the controller decoded (SoC, battery
                                temperature, current request) from N telemetry samples, and
                                the frame counters (received, sent, rejected by kind); the
                                controller keeps no raw frames: watch those with an slcan adapter
    setpoint PCT [MODE]         SoC target in %; MODE auto (default), charge or discharge
    limit charge=A discharge=A  the CSMS limit in amps per direction; none clears one
    start, stop                 allow or stop the session (stop: no energy either way)
    charge-only on|off          forbid discharge, or allow it again
    clear-fault                 clear a latched contactor fault (V2G-011) once its cause is gone
                                (also: clear)
    update                      update slots and counters
    diag                        the full diagnostic report (as v2g-diag --all)
    reconnect                   open the port again (after a cable pull or a controller reset)
    help, quit

Each command that acts goes through the controller's command path with its own transaction
id, printed with the answer: the controller applies a txn once, and its event log names it.
At the prompt the bottom line shows mode, pilot, contactor, current, SoC and active errors,
updated as telemetry arrives.

`Console.run_line(text)` runs one command and returns its output text, which is what the
tests and `--exec` use; with `stream` set, rows of tel and watch go to it as they arrive.
History is kept in ~/.v2g_console_history.
"""

import difflib
import json
import os
import queue
import shlex
import signal
import time
from decimal import Decimal

from host_tools import diag
from host_tools.link import LinkClient, LinkError, new_txn, soc_pct

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
NO_ARGS = ("status", "meter", "clear", "clear_fault", "update", "diag", "start", "stop",
           "reconnect")
STOPPED = "(stopped by Ctrl-C)"


def _fmt_ma(ma):
    return "{:.1f} A".format(ma / 1000) if isinstance(ma, int) else str(ma)


def _soc_text(s):
    """The sample's SoC in %, "-" while the controller knows none."""
    soc = soc_pct(s)
    return "-" if soc is None else "{:.1f}".format(soc)


def _tel_row(s):
    return "{:>9} {:2} {:<11} {:>8} {:>8} {:>7.1f} {:>6} {:>8} {}".format(
        s.get("t_ms"), s.get("cp"), s.get("mode"), _fmt_ma(s.get("ma", 0)),
        _fmt_ma(s.get("lim_chg_ma", 0)), s.get("mv", 0) / 1000, _soc_text(s),
        _fmt_ma(s.get("req_ma", 0)), ",".join(s.get("errors", [])) or "-")


TEL_HEADER = "{:>9} {:2} {:<11} {:>8} {:>8} {:>7} {:>6} {:>8} {}".format(
    "t_ms", "cp", "mode", "meter", "limit", "V", "soc%", "req", "errors")


def status_line(s):
    """The one-line state for the prompt's bottom bar, from the latest telemetry sample."""
    if not s:
        return "waiting for telemetry ..."
    soc = _soc_text(s)
    return "{}  pilot {}  contactor {}  {}  SoC {}  errors: {}".format(
        s.get("mode"), s.get("cp"), "closed" if s.get("contactor") else "open", _fmt_ma(s.get("ma", 0)),
        soc + " %" if soc != "-" else soc,
        ",".join(s.get("errors", [])) or "none")


def _on_off(cmd, args):
    if len(args) != 1 or args[0].lower() not in ("on", "off", "true", "false"):
        raise ConsoleError("{} on  or  {} off".format(cmd, cmd))
    return args[0].lower() in ("on", "true")


def _amps_arg(text, key):
    if text.lower() in ("none", "null", "clear"):
        return None
    try:
        v = float(text)
    except ValueError:
        v = None
    if v is None or not 0 <= v <= 1000:      # nan fails both comparisons too
        raise ConsoleError("limit {}: {!r} is not amps from 0 to 1000, or none".format(key, text))
    return v


class Console:
    def __init__(self, url, timeout=3.0, link=None, stream=None):
        self.url = url
        self.timeout = timeout
        self.stream = stream      # rows of tel/watch go here as they arrive (the prompt, --exec)
        self.last_sample = None   # the latest telemetry sample, for the status line
        self._unsubs = []
        self.link = link or LinkClient(url)     # heartbeats on, as a host would

    def open(self):
        self.link.open()
        self._unsubs = [self.link.subscribe("tel", self._keep_last)]
        return self

    def close(self):
        for u in self._unsubs:
            u()
        self._unsubs = []
        self.link.close()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _keep_last(self, msg):
        samples = msg.get("samples") or []
        if samples:
            self.last_sample = samples[-1]

    def status_line(self):
        if self.link.error:
            return "link lost: {}  (type reconnect)".format(self.link.error)
        return status_line(self.last_sample)

    # -- commands -------------------------------------------------------------------------

    def cmd(self, op, args=None):
        r = self.link.command(op, args or {}, timeout=self.timeout)
        if not r.ok:
            msg = r.msg if r.msg.startswith(str(r.code)) else "{} {}".format(r.code, r.msg)
            raise ConsoleError("{}: refused: {}".format(op, msg))
        return r

    def act(self, op, args=None):
        """A command that changes something: its own txn, named in the answer either way."""
        txn = new_txn()
        r = self.link.command(op, args or {}, txn=txn, timeout=self.timeout)
        if not r.ok:
            raise ConsoleError("{} (txn {}): refused: {} {}".format(op, txn, r.code, r.msg))
        return "{} (txn {})".format(r.msg, txn)

    def commands(self):
        return sorted(n[3:].replace("_", "-") for n in dir(self) if n.startswith("do_"))

    def run_line(self, line):
        try:
            words = shlex.split(line)
        except ValueError as e:     # an unclosed quote
            raise ConsoleError("cannot read {!r}: {}".format(line, e)) from None
        if not words:
            return ""
        name, args = words[0].lower().replace("-", "_"), words[1:]
        handler = getattr(self, "do_" + name, None)
        if handler is None:
            near = difflib.get_close_matches(words[0].lower(), self.commands(), n=2, cutoff=0.6)
            hint = "did you mean {}? ".format(" or ".join(near)) if near else ""
            raise ConsoleError("unknown command {!r}; {}type help".format(_key_text(words[0]), hint))
        if args and name in NO_ARGS:
            raise ConsoleError("{} takes no arguments".format(name))
        try:
            return handler(args)
        except LinkError as e:
            raise ConsoleError("link: {}; type reconnect to open the port again".format(e)) from None
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

    def _stream_rows(self, msg_type, rows_of, header, want=None, seconds=None):
        """Rows as messages of msg_type arrive, each shown at once through self.stream; ends
        after `want` rows, `seconds`, or Ctrl-C, and returns every row shown (and the header)."""
        q = queue.Queue()
        shown = [header] if header else []
        unsubscribe = self.link.subscribe(msg_type, q.put)
        if header and self.stream:
            self.stream(header)
        n = 0
        end = time.monotonic() + (seconds if seconds is not None else want * 2 + 3)
        stopped = False
        try:
            while want is None or n < want:
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = q.get(timeout=min(left, 0.5))
                except queue.Empty:
                    self.link._raise_if_dead()
                    continue
                for row in rows_of(msg):
                    if want is not None and n >= want:
                        break
                    n += 1
                    shown.append(row)
                    if self.stream:
                        self.stream(row)
        except KeyboardInterrupt:
            stopped = True
        finally:
            unsubscribe()
        return shown, n, stopped

    def _result(self, shown, stopped, empty):
        if self.stream:      # the rows are on the screen already
            return STOPPED if stopped else ("" if len(shown) > 1 or not empty else empty)
        text = "\n".join(shown)
        if stopped:
            text += "\n" + STOPPED
        return text

    def do_tel(self, args):
        n = _number("tel", args, 5, 1, 100000)
        shown, got, stopped = self._stream_rows(
            "tel", lambda m: [_tel_row(s) for s in m.get("samples", [])], TEL_HEADER, want=n)
        if not got and not stopped:
            raise ConsoleError("no telemetry from the controller")
        return self._result(shown, stopped, "")

    def _samples(self, n):
        saved, self.stream = self.stream, None     # these samples feed a summary, not rows
        try:
            got, _, _ = self._stream_rows("tel", lambda m: m.get("samples", []), None, want=n)
        finally:
            self.stream = saved
        if not got:
            raise ConsoleError("no telemetry from the controller")
        return got

    def do_events(self, args):
        n = _number("events", args, 0, 1, 1000, int) if args else None
        evs = [diag.event_dict(e) for e in diag.fetch_events(self.link)]
        if not evs:
            return "event log empty"
        if n is not None:
            evs = evs[-n:]
        return "\n".join("boot {:>3}  t={:>10} ms  {}  {}".format(
            "-" if e["boot"] is None else e["boot"], e["t_ms"], diag.event_what(e), e["msg"]) for e in evs)

    def do_watch(self, args):
        seconds = _number("watch", args, 10.0, 0.1, 3600, float)

        def rows(m):
            return ["t={} ms {} {} {}".format(e["t_ms"], e["code"], "raised" if e["on"] else "clear", e["msg"])
                    for e in m.get("events", [])]
        shown, got, stopped = self._stream_rows("evt", rows, None, seconds=seconds)
        if not got and not stopped:
            return "no events in {:g} s".format(seconds)
        return self._result(shown, stopped, "")

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
            rows.append("{:>9} {:>6} {:>7.1f} {:>9}".format(
                s.get("t_ms"), _soc_text(s), s.get("bat_dc", 0) / 10, _fmt_ma(s.get("req_ma", 0))))
        stats = self.cmd("diag").data.get("buses", {}).get("can", diag.NOT_REPORTED)
        rows.append("CAN frames: {}".format(json.dumps(diag.with_zeros(stats, diag.CAN_COUNTERS))))
        return "\n".join(rows)

    # -- commands that act ----------------------------------------------------------------

    def do_setpoint(self, args):
        if not 1 <= len(args) <= 2:
            raise ConsoleError("setpoint PCT [auto|charge|discharge]")
        pct = _number("setpoint", args[:1], None, 0, 100, float)
        a = {"soc_pct": pct}
        if len(args) == 2:
            a["mode"] = args[1].lower()
        return self.act("soc_target", a)

    def do_limit(self, args):
        a = {}
        for item in args:
            k, eq, v = item.partition("=")
            key = {"charge": "charge_a", "discharge": "discharge_a"}.get(k.lower())
            if not eq or key is None:
                raise ConsoleError("limit charge=A discharge=A (amps, or none to clear), got {!r}"
                                   .format(_key_text(item)))
            a[key] = _amps_arg(v, k.lower())
        if not a:
            raise ConsoleError("limit charge=A discharge=A (amps, or none to clear)")
        return self.act("limit", a)

    def do_start(self, args):
        return self.act("start")

    def do_stop(self, args):
        return self.act("stop")

    def do_charge_only(self, args):
        return self.act("charge_only", {"on": _on_off("charge-only", args)})

    def do_clear_fault(self, args):
        # the controller's one latched error; it refuses while the contactor still reads closed
        txn = new_txn()
        r = self.link.command("clear_fault", {}, txn=txn, timeout=self.timeout)
        if not r.ok:
            raise ConsoleError("clear_fault: refused: {} {} (txn {})".format(r.code, r.msg, txn))
        errs = self.cmd("diag").data.get("errors", [])
        return "{}; active errors: {} (txn {})".format(r.msg, ", ".join(errs) or "none", txn)

    do_clear = do_clear_fault

    def do_update(self, args):
        r = self.link.command("fota_report", timeout=self.timeout)
        if not r.ok:
            return "update: " + diag.NOT_REPORTED
        return "update: {}".format(json.dumps(diag.plain(r.data), sort_keys=True))

    def do_diag(self, args):
        # diag.collect opens its own client; two readers on one port would steal each
        # other's bytes (and the port lock refuses the second), so this link is closed meanwhile
        self.close()
        try:
            return diag.render(diag.collect(self.url, self.timeout))
        finally:
            self.link = LinkClient(self.url)
            self.open()

    def do_reconnect(self, args):
        self.close()
        self.link = LinkClient(self.url)
        self.open()
        h = self.link.hello(timeout=self.timeout)
        return "reconnected to {}: firmware {} board {} boot {} ({})".format(
            self.url, h.get("fw"), h.get("board"), h.get("boot_count"), h.get("reset_cause"))


def hear_ctrl_c():
    """Ctrl-C stops a stream at the prompt. A console started by a script or a supervisor
    can inherit SIGINT ignored (a shell without job control ignores it in background jobs,
    and the ignoring is passed on to the programs they start): at a terminal, hear it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def interactive(console, out):
    """The prompt: read a line, run it, print the result or the error; Ctrl-D/quit ends.
    prompt_toolkit draws the status line at the bottom and redraws it as telemetry comes in;
    rows of tel and watch are printed as they arrive."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory

    hear_ctrl_c()

    def show(row):
        print(row, file=out, flush=True)

    console.stream = show
    try:
        history = FileHistory(HISTORY)
    except OSError:
        history = None
    session = PromptSession(history=history, bottom_toolbar=console.status_line, refresh_interval=0.5,
                            completer=WordCompleter(console.commands()))
    while True:
        try:
            line = session.prompt("v2g> ")
        except EOFError:
            break
        except KeyboardInterrupt:
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
            print(text, file=out, flush=True)
