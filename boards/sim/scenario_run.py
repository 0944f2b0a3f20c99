"""Scenario driver: the controller and the plant in simulated time, timeline on stdout.

Runs inside the firmware's interpreter (the MicroPython VM or CPython):

    from board import scenario_run
    scenario_run.run(scenario)          # scenario: the dict host_tools/scenario.py produces

Each control period (core.controller.CONTROL_PERIOD_MS) it applies the scenario events
that are due, lets the simulated host send its heartbeat, fills the controller's inputs
from the plant, steps the controller, then advances the plant under the outputs. Host
commands (setpoint, limit, config) travel as host-link frames (core/link.py) when that
module is present, so the run exercises the real codec. A reboot re-creates the
controller and restores what the firmware shell (app/station.py) restores from flash: the
journal, the event log, the controller state (Controller.state_dump: the contactor-fault
latch, the heartbeat fallback, the SoC target, the CSMS limits, stop and charge-only) and
the accepted settings, kept in `storage`, a dict standing in for the flash filesystem.

The meter: by default the plant fills the meter Inputs itself, a reading every
METER_POLL_MS that answers at once. With `sc['meter_port'] = 'wire'` (set by the host's
grid checks, not a scenario file key) the firmware's own meter task (app/meter.py)
reads the plant's meter over the wire model of the meter port (board/meter_wire.py):
Modbus RTU at METER_BAUD, every byte on the wire for its time, in simulated time; the
grid protection then decides its trips as early as the meter task's sampling needs
(core/grid.py sense_ms), as on a board.

Output: one JSON object per line (shared spec scenario.md): `tick`, `event`, `summary`.
Numbers are formatted from integers with fixed decimals so both interpreters print the
same text.
"""

import gc
import json

from core import config as cfgmod
from core import controller as ctlmod
from core import errors
from core import grid as gridmod
from core import status_led

from board import plant as plantmod

try:
    from core import link
except ImportError:
    link = None

HEARTBEAT_MS = 1000       # the simulated host's heartbeat period
TICK_MAX_MS = 1000        # a tick record at least this often
CHUNK_MS = 10000          # simulated time between pauses (heap sample, event loop) in the VM

_mem_alloc = getattr(gc, 'mem_alloc', None)


def dec(n, places):
    """Integer n in units of 10**-places as fixed-decimal text: dec(-318, 1) -> '-31.8'."""
    if places == 0:
        return str(n)
    neg = n < 0
    if neg:
        n = -n
    s = str(n)
    if len(s) <= places:
        s = '0' * (places - len(s) + 1) + s
    s = s[:-places] + '.' + s[-places:]
    return '-' + s if neg else s


def rdiv(n, d):
    """n / d rounded half away from zero (integers)."""
    if n >= 0:
        return (n + d // 2) // d
    return -((-n + d // 2) // d)


def jstr(s):
    return 'null' if s is None else json.dumps(s)


class _Emitter:
    """Writes timeline lines and counts the error codes they carry."""

    def __init__(self, out):
        self.out = out
        self.counts = {}
        self.lines = 0

    def line(self, text):
        self.lines += 1
        self.out(text)

    def event(self, t_ms, src, code, msg, extra='', count=True):
        if code and count:
            self.counts[code] = self.counts.get(code, 0) + 1
        self.line('{"t_ms": %d, "kind": "event", "src": "%s", "code": %s, "msg": %s%s}' % (
            t_ms, src, jstr(code), jstr(msg), extra))


class _Host:
    """The simulated host: heartbeat every second unless lost, commands as link frames.

    Both ends of the link are real core.link.Link objects joined by two byte buffers,
    so every heartbeat, command and result goes through CBOR, CRC-32 and COBS.
    """

    def __init__(self, run):
        self.run = run
        self.lost = False
        self.next_hb = 0
        self.seq = 0
        self.n_cmd = 0
        self.via_link = link is not None
        if self.via_link:
            self.to_ctl = bytearray()
            self.to_host = bytearray()
            self.host_end = link.Link(self.to_ctl.extend)
            self.ctl_end = link.Link(self.to_host.extend)

    def _exchange(self, now, msg):
        """Deliver msg to the controller; return the controller's answer (or None)."""
        if not self.via_link:
            return self._serve(now, msg, None)
        if not self.host_end.send(msg):
            raise ValueError('host link: ' + self.host_end.last_error)
        wire = bytes(self.to_ctl)
        self.to_ctl[:] = b''
        for m in self.ctl_end.feed(wire):
            self._serve(now, m, self.ctl_end)
        wire = bytes(self.to_host)
        self.to_host[:] = b''
        answer = None
        for m in self.host_end.feed(wire):
            answer = m
        return answer

    def _serve(self, now, msg, end):
        """Controller side: what the firmware shell does with a received message."""
        ctl = self.run.ctl
        t = msg['t']
        if t == 'hb':
            ctl.heartbeat(now)
            reply = link.hback(msg) if link is not None else None
        elif t == 'cmd':
            result = ctl.command(now, msg['txn'], msg['op'], msg.get('args'))
            reply = {'v': 1, 't': 'res', 'txn': msg['txn'], 'ok': result[0], 'code': result[1],
                     'msg': result[2] or '', 'data': result[3] or {}}
        else:
            reply = None
        if end is not None and reply is not None:
            end.send(reply)
        return reply

    def poll(self, now):
        if self.lost or now < self.next_hb:
            return
        self.next_hb = now + HEARTBEAT_MS
        self.seq += 1
        self._exchange(now, {'v': 1, 't': 'hb', 'seq': self.seq, 'host_ms': now})

    def command(self, now, txn, op, args):
        if txn is None:
            self.n_cmd += 1
            txn = 'sim-%d' % self.n_cmd
        res = self._exchange(now, {'v': 1, 't': 'cmd', 'txn': txn, 'op': op, 'args': args})
        if res is None or res.get('t') != 'res':
            res = {'ok': False, 'code': None, 'msg': 'no answer on the host link'}
        self.run.emit.event(now, 'host', res['code'], '%s %s: %s' % (
            op, 'accepted' if res['ok'] else 'refused', res['msg']),
            ', "txn": %s, "op": "%s", "ok": %s' % (jstr(txn), op, 'true' if res['ok'] else 'false'))
        return res


class Run:
    def __init__(self, sc, out=print):
        self.sc = sc
        self.emit = _Emitter(out)
        self.period = ctlmod.CONTROL_PERIOD_MS
        # the flash filesystem: what survives a reboot
        self.storage = {'config': dict(sc.get('config') or {})}
        self.cfg = cfgmod.validate(self.storage['config'])
        self.plant = plantmod.Plant(ev=sc.get('ev'), grid=sc.get('grid'), config=self.cfg.values)
        self.inputs = ctlmod.Inputs()
        self.host = _Host(self)
        self.ctl = None
        self.boots = 0
        self.soc_start_pm = self.plant.soc_pm()
        self.battery_start_mwh = self.plant.energy_mwh
        # last tick values, compared as ints/strings at the written precision
        self._last = [None] * 21
        self._last_tick_ms = -TICK_MAX_MS
        self._mode = None
        self._cp = None
        self.heap_peak = None
        self.heap_start = None
        self.events = sc.get('events') or []
        self.wire = None
        self.meter = None
        if sc.get('meter_port', 'plant') == 'wire':
            from app.meter import MeterTask
            from board.meter_wire import MeterWire
            self.wire = MeterWire(self.plant, self._clock_us, model=self.cfg.meter_model,
                                  unit=self.cfg.meter_address)
            self.meter = MeterTask(self.wire, self.cfg, self._ticks_us)
        self._k = 0
        self.now = 0
        self._boot(0)

    def _clock_us(self):
        return self.now * 1000

    def _ticks_us(self):
        return (self.now * 1000) & 0x3FFFFFFF

    # ------------------------------------------------------------ controller life
    def _boot(self, now):
        self.boots += 1
        # The scenario starts with a station already in service on the grid; after a reboot
        # the controller cannot know how long it was off, so it waits to re-enter service.
        # the plant's own meter: the trip rule counts from its first reading (docs/grid.md)
        kw = {} if self.meter is not None else {'sense_ms': 0}
        g = gridmod.GridProtection.from_config(self.cfg, step_ms=self.period,
                                               start_in_service=self.boots == 1, **kw)
        self.ctl = ctlmod.Controller(self.cfg, g)
        # persisted state comes back in the order app/station.py loads it from flash:
        # journal, event log, then the controller state (its latches raise their codes again)
        for name in ('journal', 'eventlog'):
            obj = self._persisted(name)
            blob = self.storage.get(name)
            if obj is not None and blob is not None:
                obj.load(blob)
        self.ctl.log.boot = self.boots
        blob = self.storage.get('controller')
        if blob is not None:
            self.ctl.state_load(now, blob)
        self._mode = None
        self._cp = None
        self.emit.event(now, 'sim', None, 'controller boot #%d' % self.boots,
                        ', "boot": %d' % self.boots)

    def _persisted(self, name):
        """The controller's journal or event log object (whatever the attribute is named)."""
        names = ('journal', 'txn_journal') if name == 'journal' else ('eventlog', 'log', 'events_log', 'event_log')
        for a in names:
            obj = getattr(self.ctl, a, None)
            if obj is not None and hasattr(obj, 'dump') and hasattr(obj, 'load'):
                return obj
        return None

    def _persist(self):
        for name in ('journal', 'eventlog'):
            obj = self._persisted(name)
            if obj is not None and getattr(obj, 'dirty', True):
                self.storage[name] = obj.dump()
        if self.ctl.state_dirty:
            self.storage['controller'] = self.ctl.state_dump()

    # ------------------------------------------------------------ scenario events
    def apply(self, now, do, args):
        self.emit.event(now, 'scenario', None, _describe(do, args), ', "do": "%s"' % do)
        if do == 'setpoint':
            a = {'soc_pct': args['soc_target_pct']}
            if 'mode' in args:
                a['mode'] = args['mode']
            self.host.command(now, args['txn'], 'soc_target', a)
        elif do == 'limit':
            self.host.command(now, args.get('txn'), 'limit',
                              {'charge_a': args['charge_a'], 'discharge_a': args['discharge_a']})
        elif do == 'config':
            res = self.host.command(now, None, 'config_set', dict(args))
            if res['ok']:
                self._config_accepted(args)
        elif do == 'heartbeat_loss':
            self.host.lost = True
        elif do == 'heartbeat_restore':
            self.host.lost = False
            self.host.next_hb = now
        elif do == 'reboot':
            self._persist()
            self._boot(now)
        else:
            self.plant.apply_event(do, args, now)

    def _config_accepted(self, changes):
        merged = dict(self.storage['config'])
        for k in changes:
            merged[k] = changes[k]
        self.cfg = cfgmod.validate(merged)
        self.storage['config'] = merged
        self.plant.meter_poll_ms = self.cfg.meter_poll_ms

    # ------------------------------------------------------------ timeline
    def _events(self):
        for t_ms, code, on, msg in self.ctl.pop_events():
            # a cleared code is not another occurrence: only raises are counted
            self.emit.event(t_ms, 'controller', code, msg,
                            ', "on": %s' % ('true' if on else 'false'), on)

    def _changes(self, now, out):
        if out.mode != self._mode:
            if self._mode is not None:
                self.emit.event(now, 'controller', None, 'mode %s -> %s' % (self._mode, out.mode),
                                ', "mode": "%s"' % out.mode)
            self._mode = out.mode
        if out.cp_state != self._cp:
            if self._cp is not None:
                self.emit.event(now, 'controller', None, 'pilot %s -> %s' % (self._cp, out.cp_state),
                                ', "cp_state": "%s"' % out.cp_state)
            self._cp = out.cp_state

    def _v2g_available(self, out):
        v = getattr(out, 'v2g_available', None)
        if v is None:
            sp = getattr(self.ctl, 'setpoint', None)
            v = bool(getattr(sp, 'available', False))
        return bool(v) and not (out.errors & errors.E301)

    def tick(self, now, out):
        p = self.plant
        vals = self._last
        new = (out.cp_state, out.pwm_pm, p.contactor_closed, rdiv(p.ev_ma, 100),
               rdiv(out.limit_charge_ma, 100), rdiv(out.limit_discharge_ma, 100),
               out.limit_charge_src, out.limit_discharge_src, p.soc_pm(), out.mode,
               self._v2g_available(out), rdiv(p.grid_mv, 100), p.grid_mhz,
               p.evse_temp_dc, p.battery_temp_dc, out.errors, rdiv(out.request_ma, 100),
               out.discharge_capacity_wh, out.cooling_state,
               status_led.select(out.mode, out.errors, False),   # no update runs in a scenario
               p.pump_running())
        changed = now - self._last_tick_ms >= TICK_MAX_MS
        for i in range(len(new)):
            if vals[i] != new[i]:
                vals[i] = new[i]
                changed = True
        if not changed:
            return
        self._last_tick_ms = now
        errs = errors.active(out.errors)
        self.emit.line(
            '{"t_ms": %d, "kind": "tick", "cp_state": "%s", "pwm_duty_pct": %s, "contactor": %s, '
            '"amps": %s, "limit_charge_a": %s, "limit_discharge_a": %s, "limit_charge_src": "%s", '
            '"limit_discharge_src": "%s", "soc_pct": %s, "mode": "%s", "v2g_available": %s, '
            '"grid_v": %s, "grid_hz": %s, "evse_temp_c": %s, "battery_temp_c": %s, '
            '"request_a": %s, "discharge_capacity_wh": %d, "cooling": "%s", "pump": %s, "led": "%s", '
            '"errors": [%s]}' % (
                now, new[0], dec(new[1], 1), 'true' if new[2] else 'false', dec(new[3], 1),
                dec(new[4], 1), dec(new[5], 1), new[6], new[7], dec(new[8], 1), new[9],
                'true' if new[10] else 'false', dec(new[11], 1), dec(new[12], 3),
                dec(new[13], 1), dec(new[14], 1), dec(new[16], 1), new[17], new[18],
                'true' if new[20] else 'false', status_led.NAMES[new[19]],
                ', '.join('"%s"' % c for c in errs)))

    def sample_heap(self):
        """Live heap after a collection (MicroPython only; None elsewhere)."""
        if _mem_alloc is None:
            return None
        gc.collect()
        used = _mem_alloc()
        if self.heap_start is None:
            self.heap_start = used
        if self.heap_peak is None or used > self.heap_peak:
            self.heap_peak = used
        return used

    # ------------------------------------------------------------ main loop
    def advance(self, span_ms):
        """Simulate up to span_ms more (whole control periods); False once the run is over."""
        events = self.events
        n = len(events)
        k = self._k
        duration = self.sc['duration_ms']
        period = self.period
        plant = self.plant
        inp = self.inputs
        host = self.host
        now = self.now
        stop = now + span_ms
        while now <= duration and now < stop:
            while k < n and events[k]['t_ms'] <= now:
                ev = events[k]
                self.apply(now, ev['do'], ev.get('args') or {})
                k += 1
            host.poll(now)
            plant.fill_inputs(inp, now)
            if self.meter is not None:
                self.now = now                  # the wire model's clock
                self.meter.step(now, inp, self.cfg)
            out = self.ctl.step(now, inp)
            self._events()
            self._changes(now, out)
            self.tick(now, out)
            plant.step(now, period, out)
            self._persist()
            now += period
        self._k = k
        self.now = now
        return now <= duration

    def finish(self):
        self.summary(self.now - self.period)

    def summary(self, now):
        p = self.plant
        counts = self.emit.counts
        codes = sorted(counts)
        self.emit.line(
            '{"t_ms": %d, "kind": "summary", "duration_ms": %d, "steps": %d, "boots": %d, '
            '"energy_in_wh": %s, "energy_out_wh": %s, "soc_start_pct": %s, "soc_pct": %s, '
            '"battery_delta_wh": %s, "errors": {%s}, "heap_peak_bytes": %s, "heap_start_bytes": %s, '
            '"via_link": %s, "lines": %d}' % (
                now, self.sc['duration_ms'], now // self.period + 1, self.boots,
                dec(p.import_mwh, 3), dec(p.export_mwh, 3), dec(self.soc_start_pm, 1), dec(p.soc_pm(), 1),
                dec(p.energy_mwh - self.battery_start_mwh, 3),
                ', '.join('"%s": %d' % (c, counts[c]) for c in codes),
                'null' if self.heap_peak is None else str(self.heap_peak),
                'null' if self.heap_start is None else str(self.heap_start),
                'true' if self.host.via_link else 'false', self.emit.lines + 1))


def _describe(do, args):
    if not args:
        return do
    parts = []
    for k in sorted(args):
        v = args[k]
        if isinstance(v, float):
            # the same text on both interpreters: at most 3 decimals, no float repr
            v = ('%.3f' % v).rstrip('0').rstrip('.')
        parts.append('%s=%s' % (k, v))
    return do + ' ' + ' '.join(parts)


def run(sc, out=print):
    """Simulate scenario sc (already validated), writing timeline lines through out()."""
    r = Run(sc, out)
    while r.advance(CHUNK_MS):
        r.sample_heap()
    r.finish()
    return r


async def run_async(sc, out=print):
    """As run(), yielding to the event loop between chunks.

    In the WebAssembly VM a collection only frees memory once Python has returned to
    the host's event loop, so the live-heap samples (and the VM's memory use over a
    long run) need these pauses.
    """
    import asyncio
    r = Run(sc, out)
    while r.advance(CHUNK_MS):
        await asyncio.sleep(0)
        r.sample_heap()
    await asyncio.sleep(0)
    r.sample_heap()
    r.finish()
    return r
