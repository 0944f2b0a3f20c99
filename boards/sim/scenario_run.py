"""Scenario driver: the real firmware shell on the simulated board, in simulated time.

Runs inside the firmware's interpreter (the MicroPython VM or CPython):

    from board import scenario_run
    scenario_run.run(scenario)          # scenario: the dict host_tools/scenario.py produces

The controller is the firmware's own shell: app/run.py's control loop stepping
app/station.py on the simulated board (board/hal.py) with a simulated clock
(board/clock.py). The shell sleeps on that clock; this driver is its event loop. Each
control period (core.controller.CONTROL_PERIOD_MS) it
  1. moves the plant's physics on to now under the outputs of the last step;
  2. applies the scenario events that are due: plant events to the plant; host events
     (setpoint, limit, config, heartbeat loss) as the host would, with frames on the link
     the station serves; a reboot resets the board;
  3. sends the simulated host's heartbeat (every second unless lost);
  4. resumes the shell, which runs one control step and sleeps again (until the next
     step, or sooner when the meter port has bytes to move: then the clock moves to that
     moment and the shell is resumed again, until it sleeps until the next step);
  5. reads what the station sent on the link (command results, controller events) and
     writes the timeline.
So the station's persistence (app/storage.py on the board's flash: a scratch folder), its
command path, its meter task (with the wire model) and its host link are the firmware's.

The buses: a scenario's `[buses] bms = "can"` runs the station's CAN task (app/canbus.py)
on the plant's BMS frames, carried each step by `_can_bus`; otherwise the plant fills the
BMS Inputs itself. The meter: by default the plant fills the meter Inputs itself, a
reading every METER_POLL_MS that answers at once (the simulated board then tells the
station's grid protection that a reading shows a grid step at once: sense 0). With
`[buses] meter = "wire"`, or `sc['meter_port'] = 'wire'` (set by the host's grid checks),
the station's own meter task (app/meter.py) reads the plant's meter over the wire model of the
meter port (board/meter_wire.py): Modbus RTU at METER_BAUD, every byte on the wire for its
time, in simulated time; the grid protection then decides its trips as early as the meter
task's sampling needs (core/grid.py sense_ms), as on a board.

Output: one JSON object per line (shared spec scenario.md): `tick`, `event`, `summary`.
Numbers are formatted from integers with fixed decimals so both interpreters print the
same text.
"""

import gc
import json
import os
import sys

from core import config as cfgmod
from core import controller as ctlmod
from core import errors
from core import link
from core import status_led

from app import run as shell
from app import station as station_mod

from board import hal as halmod
from board import plant as plantmod
from board.clock import SimClock

HEARTBEAT_MS = 1000       # the simulated host's heartbeat period
TICK_MAX_MS = 1000        # a tick record at least this often
TEL_PERIOD_MS = 60000     # the simulated host's telemetry period (the station's slowest)
CHUNK_MS = 10000          # simulated time between pauses (heap sample, event loop) in the VM

_mem_alloc = getattr(gc, 'mem_alloc', None)


def dec(n, places):
    """Integer n in units of 10**-places as fixed-decimal text: dec(-318, 1) -> '-31.8'."""
    if places == 0:
        return str(n)
    if n < 0:
        return '-' + _DEC[places] % (-n // _SCALE[places], -n % _SCALE[places])
    return _DEC[places] % (n // _SCALE[places], n % _SCALE[places])


# dec()'s formats and scales by places: one % format, no string surgery, for every field
_DEC = (None, '%d.%01d', '%d.%02d', '%d.%03d')
_SCALE = (1, 10, 100, 1000)


def rdiv(n, d):
    """n / d rounded half away from zero (integers)."""
    if n >= 0:
        return (n + d // 2) // d
    return -((-n + d // 2) // d)


def jstr(s):
    return 'null' if s is None else json.dumps(s)


def _stdout_writer():
    """Writes text to standard output: in the VM through its host in one call (hostio.emit,
    `mpvm.mjs run`), where print() goes through the VM's stdout line by line."""
    try:
        import hostio
        return hostio.emit
    except (ImportError, AttributeError):
        return print


class _Emitter:
    """Writes timeline lines and counts the error codes they carry. out: called with each
    line; None: the lines go to standard output, gathered and written a chunk of simulated
    time at a time (flush()), one write for tens of lines."""

    def __init__(self, out):
        self.out = out
        self.held = [] if out is None else None
        self.write = _stdout_writer() if out is None else None
        self.counts = {}
        self.lines = 0

    def line(self, text):
        self.lines += 1
        if self.held is None:
            self.out(text)
        else:
            self.held.append(text)

    def flush(self):
        if self.held:
            self.write('\n'.join(self.held))
            self.held = []

    def event(self, t_ms, src, code, msg, extra='', count=True):
        if code and count:
            self.counts[code] = self.counts.get(code, 0) + 1
        self.line('{"t_ms": %d, "kind": "event", "src": "%s", "code": %s, "msg": %s%s}' % (
            t_ms, src, jstr(code), jstr(msg), extra))


class _Host:
    """The simulated host at the other end of the station's link: a real core.link.Link
    joined to the board's link port, so every heartbeat, command, result and event goes
    through CBOR, CRC-32 and COBS as on the wire."""

    def __init__(self, run):
        self.run = run
        self.ports = run.ports
        self.lost = False
        self.next_hb = 0
        self.seq = 0
        self.n_cmd = 0
        self.pending = {}          # txn -> op of a command sent and not yet answered
        self.end = link.Link(self._to_station)

    def _to_station(self, buf):
        self.ports.inbox['link'] += bytes(buf)

    def send(self, msg):
        if not self.end.send(msg):
            raise ValueError('host link: ' + self.end.last_error)

    def poll(self, now):
        if self.lost or now < self.next_hb:
            return
        self.next_hb = now + HEARTBEAT_MS
        self.seq += 1
        self.send(link.hb(self.seq, now))

    def command(self, txn, op, args):
        if txn is None:
            self.n_cmd += 1
            txn = 'sim-%d' % self.n_cmd
        self.pending[txn] = op
        self.send(link.cmd(txn, op, args))

    def receive(self, now):
        """What the station sent since the last call: results and controller events to the
        timeline, the rest (hello, heartbeat echoes, telemetry) read and left."""
        data = self.ports.outbox['link']
        if not data:
            return
        self.ports.outbox['link'] = b''
        emit = self.run.emit
        for m in self.end.feed(data):
            t = m.get('t')
            if t == 'evt':
                for e in m['events']:
                    on = e['on']
                    # a cleared code is not another occurrence: only raises are counted
                    emit.event(e['t_ms'], 'controller', e['code'], e['msg'],
                               ', "on": %s' % ('true' if on else 'false'), on)
            elif t == 'res':
                txn = m['txn']
                op = self.pending.pop(txn, None)
                if op is None:
                    continue
                ok = m['ok']
                emit.event(now, 'host', m['code'], '%s %s: %s' % (
                    op, 'accepted' if ok else 'refused', m['msg']),
                    ', "txn": %s, "op": "%s", "ok": %s' % (jstr(txn), op, 'true' if ok else 'false'))

    def unanswered(self, now):
        """Commands the station never answered (it was reset first): said in the timeline."""
        for txn in sorted(self.pending):
            op = self.pending[txn]
            self.run.emit.event(now, 'host', None, '%s refused: no answer on the host link' % op,
                                ', "txn": %s, "op": "%s", "ok": false' % (jstr(txn), op))
        self.pending = {}


def _wipe(path):
    try:
        names = os.listdir(path)
    except OSError:
        os.mkdir(path)
        return
    for n in names:
        p = path + '/' + n
        try:
            os.remove(p)
        except OSError:
            _wipe(p)
            os.rmdir(p)


_flashes = [0]


def _scratch_flash():
    """An empty folder for the board's flash: in memory on the VM, a temporary one here."""
    if sys.implementation.name == 'micropython':
        _flashes[0] += 1        # one folder per run: two runs in one VM keep theirs apart
        path = '/tmp/v2g_sim_flash_%d' % _flashes[0]
        try:
            os.mkdir('/tmp')
        except OSError:
            pass
        _wipe(path)
        return path, False
    import tempfile
    return tempfile.mkdtemp(prefix='v2g-sim-flash-'), True


class _InFlash:
    """The board's flash as the current folder while the firmware runs (it writes its files
    relative to it, as on a board); the caller's folder again afterwards."""

    def __init__(self, path):
        self.path = path
        self.here = None

    def __enter__(self):
        self.here = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.here)


class Run:
    def __init__(self, sc, out=None, flash=None):
        self.sc = sc
        self.emit = _Emitter(out)
        self.period = ctlmod.CONTROL_PERIOD_MS
        if flash is None:
            flash, self._own_flash = _scratch_flash()
        else:
            self._own_flash = False
        self.flash = flash
        self.in_flash = _InFlash(flash)
        config = dict(sc.get('config') or {})
        grid = dict(sc.get('grid') or {})
        self.in_service = grid.pop('in_service', True)
        cfg = cfgmod.validate(config)
        self.plant = plantmod.Plant(ev=sc.get('ev'), grid=grid, config=cfg.values)
        self.clock = SimClock(0)
        self.ports = halmod.MemoryPorts()
        self.host = _Host(self)
        self.wire = None
        # A scenario's [buses] put the station's own bus tasks to work: meter faults become
        # Modbus replies that time out, fail their CRC or carry an exception code, read by
        # app/meter.py over the wire model; a CAN loss silences the plant's BMS frames, which
        # app/canbus.py decodes. Otherwise the plant fills those Inputs itself (faster).
        buses = sc.get('buses') or {}
        self.buses = {'bms': 'can', 'ev_can': 'plant'} if buses.get('bms') == 'can' else None
        if sc.get('meter_port', 'plant') == 'wire' or buses.get('meter') == 'wire':
            from board.meter_wire import MeterWire
            self.wire = MeterWire(self.plant, self._clock_us, model=cfg.meter_model,
                                  unit=cfg.meter_address)
        self.hal = None
        self.shell = None
        self.station = None
        self.boots = 0
        self.soc_start_pm = self.plant.soc_pm()
        self.battery_start_mwh = self.plant.energy_mwh
        # last tick values, compared as ints/strings at the written precision
        self._last = [None] * 21
        self._raw = None             # what they were made of at the last step (tick())
        self._last_tick_ms = -TICK_MAX_MS
        self._mode = None
        self._cp = None
        self.heap_peak = None
        self.heap_start = None
        self.events = sc.get('events') or []
        self._k = 0
        self.now = 0
        with self.in_flash:
            if config:
                # the settings file on the board's flash, as `v2g flash` writes it
                with open(station_mod.CONFIG_FILE, 'w') as f:
                    f.write(cfgmod.canonical(config))
            self._boot(0)

    def _clock_us(self):
        return self.clock.now_ms * 1000

    # ------------------------------------------------------------ the board
    def _boot(self, now):
        """Power the board up: a new HAL on the same plant, ports and flash, and the shell's
        control loop from the start (app/station.py loads what the flash keeps)."""
        self.boots += 1
        self.ports.stop = False
        # the scenario starts with a station already in service on the grid; after a reset
        # the controller cannot know how long it was off, so it waits to re-enter service
        self.hal = halmod.Hal(ports=self.ports, plant=self.plant, clock=self.clock, rs485=self.wire,
                              buses=self.buses,
                              in_service=self.boots == 1 and self.in_service)
        self.hal.last_ms = now
        self.shell = shell.control_loop(self.hal)
        self.station = None
        # The host's view is the link's results and events: it asks for telemetry at the
        # station's slowest pace (a sample a minute, batched) rather than every second
        self.host.send(link.cmd('sim-tel-%d' % self.boots, 'telemetry',
                                {'period_ms': TEL_PERIOD_MS, 'batch': station_mod.TEL_BATCH_MAX}))
        self._mode = None
        self._cp = None
        self.emit.event(now, 'sim', None, 'controller boot #%d' % self.boots,
                        ', "boot": %d' % self.boots)

    def _resume(self):
        """Let the shell run until it sleeps (one control step at the clock's time)."""
        try:
            self.shell.send(None)
        except StopIteration:
            return False
        return True

    def _reboot(self, now):
        """The reset button: the board marks the cause and its control loop ends at its next
        turn (the event log to flash), then it boots again. The reset takes less than a
        control step: the plant keeps what the outputs last set until the new controller's
        first step sets them (the old loop's safe state does not reach the plant)."""
        self.hal.outputs = None
        self.hal.plant_event(b'{"do": "reboot"}', now)
        if self._resume():
            raise RuntimeError('the control loop went on after the reset at {} ms'.format(now))
        self.host.receive(now)
        self.host.unanswered(now)
        self._boot(now)

    # ------------------------------------------------------------ scenario events
    def apply(self, now, do, args):
        self.emit.event(now, 'scenario', None, _describe(do, args), ', "do": "%s"' % do)
        if do == 'setpoint':
            a = {'soc_pct': args['soc_target_pct']}
            if 'mode' in args:
                a['mode'] = args['mode']
            self.host.command(args['txn'], 'soc_target', a)
        elif do == 'limit':
            self.host.command(args.get('txn'), 'limit',
                              {'charge_a': args['charge_a'], 'discharge_a': args['discharge_a']})
        elif do == 'config':
            self.host.command(None, 'config_set', dict(args))
        elif do == 'heartbeat_loss':
            self.host.lost = True
        elif do == 'heartbeat_restore':
            self.host.lost = False
            self.host.next_hb = now
        elif do == 'reboot':
            self._reboot(now)
        else:
            self.plant.apply_event(do, args, now)

    # ------------------------------------------------------------ timeline
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

    def _v2g_available(self, ctl, out):
        return bool(out.v2g_available) and not (out.errors & errors.E301)

    def tick(self, now, ctl, out):
        p = self.plant
        # Most steps change nothing a tick shows: what its fields are made of (before
        # rounding) the same as at the last step means the same fields, and they need not be
        # made. Compared in place: a tuple every step would be an allocation every step,
        # which the VM's collector makes dear.
        r = self._raw
        if (now - self._last_tick_ms < TICK_MAX_MS and r is not None
                and r[0] == out.cp_state and r[1] == out.pwm_pm and r[2] == p.contactor_closed
                and r[3] == p.ev_ma and r[4] == out.limit_charge_ma
                and r[5] == out.limit_discharge_ma and r[6] == out.limit_charge_src
                and r[7] == out.limit_discharge_src and r[8] == p.energy_mwh // p.capacity_wh
                and r[9] == out.mode and r[10] == out.v2g_available and r[11] == p.grid_mv
                and r[12] == p.grid_mhz and r[13] == p.evse_temp_dc
                and r[14] == p.battery_temp_dc and r[15] == out.errors
                and r[16] == out.request_ma and r[17] == out.discharge_capacity_wh
                and r[18] == out.cooling_state and r[19] == self.hal.led
                and r[20] == p.pump_cmd and r[21] == p.cooling_fault):
            return
        self._raw = (out.cp_state, out.pwm_pm, p.contactor_closed, p.ev_ma, out.limit_charge_ma,
                     out.limit_discharge_ma, out.limit_charge_src, out.limit_discharge_src,
                     p.energy_mwh // p.capacity_wh, out.mode, out.v2g_available, p.grid_mv,
                     p.grid_mhz, p.evse_temp_dc, p.battery_temp_dc, out.errors, out.request_ma,
                     out.discharge_capacity_wh, out.cooling_state, self.hal.led, p.pump_cmd,
                     p.cooling_fault)
        vals = self._last
        new = (out.cp_state, out.pwm_pm, p.contactor_closed, rdiv(p.ev_ma, 100),
               rdiv(out.limit_charge_ma, 100), rdiv(out.limit_discharge_ma, 100),
               out.limit_charge_src, out.limit_discharge_src, p.soc_pm(), out.mode,
               self._v2g_available(ctl, out), rdiv(p.grid_mv, 100), p.grid_mhz,
               p.evse_temp_dc, p.battery_temp_dc, out.errors, rdiv(out.request_ma, 100),
               out.discharge_capacity_wh, out.cooling_state,
               self.hal.led,       # the status LED the board shows
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
        try:
            with self.in_flash:
                return self._advance(span_ms)
        finally:
            self.emit.flush()     # what this chunk wrote, even when the firmware raised

    def _advance(self, span_ms):
        events = self.events
        n = len(events)
        k = self._k
        duration = self.sc['duration_ms']
        period = self.period
        clock = self.clock
        host = self.host
        sent = self.ports.outbox
        now = self.now
        stop = now + span_ms
        # the checks in front of poll(), receive() and _changes() are theirs, made here: most
        # steps have nothing for them, and a call costs the VM more than the check
        while now <= duration and now < stop:
            clock.now_ms = now
            self.hal.plant_to(now)
            while k < n and events[k]['t_ms'] <= now:
                ev = events[k]
                self.apply(now, ev['do'], ev.get('args') or {})
                k += 1
            if now >= host.next_hb and not host.lost:
                host.poll(now)
            if self.buses is not None:
                self._can_bus()
            # the shell wakes at now: one control step, then it sleeps until the next
            if not self._resume():
                raise RuntimeError('the control loop ended at {} ms: {!r}'.format(now, self.hal.crash))
            # between steps the shell wakes only to move the meter port's bytes (the wire
            # model's); the plant moves on with the steps
            while clock.wake_ms != now + period:
                if not clock.now_ms < clock.wake_ms < now + period:
                    raise RuntimeError('the control loop slept until {} ms at {} ms'.format(
                        clock.wake_ms, clock.now_ms))
                clock.now_ms = clock.wake_ms
                if not self._resume():
                    raise RuntimeError('the control loop ended at {} ms: {!r}'.format(
                        clock.now_ms, self.hal.crash))
            st = self.station
            if st is None:
                # the station this boot's loop just made (app/run.py keeps the running one;
                # taken here, so two runs in one interpreter keep theirs apart)
                st = self.station = shell.station
            out = st.ctl.out
            if sent['link']:
                host.receive(now)
            if out.mode != self._mode or out.cp_state != self._cp:
                self._changes(now, out)
            self.tick(now, st.ctl, out)
            now += period
        self._k = k
        self.now = now
        return now <= duration

    def _can_bus(self):
        """The CAN bus between the plant's vehicle and the controller: what the vehicle sent
        in the last step reaches the controller's port in this one (origin 0: from the
        bus); the controller's own frames go out to nobody."""
        ports = self.ports
        out = ports.outbox['can']
        if not out:
            return
        ports.outbox['can'] = b''
        rec = halmod.CAN_RECORD
        got = bytearray()
        for i in range(0, len(out) - rec + 1, rec):
            if out[i] == halmod.ORIGIN_VEHICLE:
                got += b'\x00' + out[i + 1:i + rec]
        if got:
            ports.inbox['can'] += bytes(got)

    def finish(self):
        # the plant runs out the last step under its outputs, as in every step before it
        self.hal.plant_to(self.now)
        self.summary(self.now - self.period)
        self.emit.flush()
        if self._own_flash:
            import shutil
            shutil.rmtree(self.flash, ignore_errors=True)

    def summary(self, now):
        p = self.plant
        counts = self.emit.counts
        codes = sorted(counts)
        self.emit.line(
            '{"t_ms": %d, "kind": "summary", "duration_ms": %d, "steps": %d, "boots": %d, '
            '"energy_in_wh": %s, "energy_out_wh": %s, "soc_start_pct": %s, "soc_pct": %s, '
            '"battery_delta_wh": %s, "errors": {%s}, "heap_peak_bytes": %s, "heap_start_bytes": %s, '
            '"via_link": true, "lines": %d}' % (
                now, self.sc['duration_ms'], now // self.period + 1, self.boots,
                dec(p.import_mwh, 3), dec(p.export_mwh, 3), dec(self.soc_start_pm, 1), dec(p.soc_pm(), 1),
                dec(p.energy_mwh - self.battery_start_mwh, 3),
                ', '.join('"%s": %d' % (c, counts[c]) for c in codes),
                'null' if self.heap_peak is None else str(self.heap_peak),
                'null' if self.heap_start is None else str(self.heap_start),
                self.emit.lines + 1))


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


def run(sc, out=None):
    """Simulate scenario sc (already validated), writing timeline lines through out(line), or
    without out to standard output (see _Emitter)."""
    r = Run(sc, out)
    while r.advance(CHUNK_MS):
        r.sample_heap()
    r.finish()
    return r


def _next_turn(resolve, reject):
    import js
    js.setImmediate(resolve)


def _pause():
    """An awaitable that hands control to the host's event loop for one turn. In the VM
    under Node, a promise settled by setImmediate: the loop writes what is queued on
    standard output, and a collection can free memory, in tens of microseconds, where
    asyncio.sleep(0) waits for a timer (a millisecond or more; a run pauses 360 times an
    hour). Elsewhere asyncio.sleep(0)."""
    try:
        import js
        if getattr(js, 'setImmediate', None) is not None:
            return js.Promise.new(_next_turn)
    except ImportError:
        pass
    import asyncio
    return asyncio.sleep(0)


async def _written():
    """Wait until the VM's host has written all of standard output: it ends the process as
    soon as the code returns, and what is still queued then (a reader slower than the
    run) would be lost."""
    try:
        import js
        stdout = js.process.stdout
    except (ImportError, AttributeError):
        return
    import asyncio
    while stdout.writableLength:
        await asyncio.sleep_ms(5)     # the reader's pace: idle, not a busy turn of the loop


async def run_async(sc, out=None):
    """As run(), yielding to the event loop between chunks.

    In the WebAssembly VM a collection only frees memory once Python has returned to
    the host's event loop, so the live-heap samples (and the VM's memory use over a
    long run) need these pauses.
    """
    r = Run(sc, out)
    while r.advance(CHUNK_MS):
        await _pause()
        r.sample_heap()
    await _pause()
    r.sample_heap()
    r.finish()
    await _written()
    return r
