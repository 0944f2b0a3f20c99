"""The station: one control step wired to the board and to the host link.

Nothing clever lives here. Each tick serves the host link, reads the HAL into the
preallocated Inputs, steps the pure core, then writes the Outputs back to the HAL. The core decides;
this module only carries data and keeps what must survive a reset in storage.
"""

import json

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import config as config_mod
from core import errors
from core import link as L
from core import meter_map as M
from core import status_led
from core import ticks
from core.telemetry import TelBatch
from core.controller import OPS as CORE_OPS
from core.controller import Controller, Inputs
from core.grid import GridProtection

from app import storage
from app import update as update_mod
from app.update import Updater
from app.buses import Buses

FW_VERSION = '0.1.0'
CONFIG_FILE = 'v2g_vars.json'
_TEL_PERIOD_MS = const(1000)    # one telemetry sample a second ...
_TEL_BATCH = const(1)           # ... sent in batches of this many (the host may raise both)
TEL_BATCH_MAX = 3        # a sample is ~240 B of CBOR: 3 leave room in a 1 kB frame for error codes
_SAVE_EVERY_MS = const(1000)    # event log flush period; the journal is saved before each answer
# Every host-link operation and who serves it; run_command looks an operation up here and
# nowhere else (tuples of names: no table on the heap):
#   core.controller.OPS  the core, Controller._op_<name>: answered once per txn (journal)
#   SHELL_OPS            the station, Station._op_<name>(args, now_ms)
#   app.update.OPS       the updater, Updater.command
# An operation in none of them is refused in one place (V2G-400), naming them all.
SHELL_OPS = ('diag', 'events', 'telemetry', 'hello', 'measurements')
READ_OPS = ('diag', 'events', 'hello', 'measurements', 'fota_report', 'fota_status')
_EVENTS_PAGE_BYTES = const(700) # an events answer stays inside one 1 kB frame
# Host link work per control step. 115200 baud brings 576 bytes per 50 ms step: a step reads
# at most twice that (a late step catches up), and handles at most 4 frames (the host's fota
# window), so a flood of small messages costs a step no more than 4 commands.
LINK_STEP_BYTES = 1152
LINK_STEP_FRAMES = 4


def load_config(board_limits):
    """The settings file validated as on every boot: (config, problem, keys the file sets).
    A bad file is not used and no key counts as the file's; the reason is logged (V2G-400)
    and the file itself is left for the operator. What runs instead are the defaults, made
    no looser than the refused file asked on any safety limit (core/config_refused.py)."""
    raw = storage.read_bytes(CONFIG_FILE)
    if raw is None:
        return config_mod.validate({}, board=board_limits), None, set()
    try:
        data = config_mod.parse(raw)
        cfg = config_mod.validate(data, board=board_limits)
    except Exception as e:   # noqa: BLE001 - whatever is wrong with the file, boot on safe values
        from core import config_refused     # only a refused file needs it
        cfg, note = config_refused.refused_file(raw, board_limits)
        problem = str(e) or type(e).__name__
        # what is in force first: an event's text is bounded and the parse error can be long
        return cfg, (note + '; ' if note else '') + problem, set()
    return cfg, None, set(data)


# The station's own files in state/, each kept as two sealed copies (app/storage.py), and
# what losing every copy of one means; the controller's goes first at boot (see Station).
STATE_FILES = ('controller.json', 'journal.json', 'events.json', 'boot.json')
# by STATE_FILES' order (a tuple: a dict made at import is RAM even frozen). Short: an
# event's text is bounded (core/eventlog.py), and this goes first
LOST = (
    'weld latch and charge-only assumed until an operator clears them',
    'journal starts empty: a command repeated from before this boot is applied again',
    'the event log starts empty',
    'the boot count goes on from the event log',
)


def _boot_count(body):
    d = json.loads(bytes(body).decode())
    n = d.get('count') if isinstance(d, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError('count must be an integer >= 0')
    return n


_CFG_PROBLEM_MAX = const(300)   # characters of a refused settings file's reason in diag
SAFETY_FILE = 'controller.json'   # the weld latch and the fallback: first claim on the flash


def _write(path, blob_fn, seq=None):
    """None when written; else the OSError, with the torn .tmp files given back. seq: the
    file is a state file, written as two sealed copies under that sequence number."""
    try:
        if seq is None:
            storage.write_atomic(path, blob_fn())
        else:
            storage.write_copies(path, blob_fn(), seq)
        return None
    except OSError as e:
        storage.discard_tmp(path)
        if seq is not None:
            storage.discard_tmp(path + storage.BACKUP)
        return e


def _grid_facts(hal, buses):
    """What the board knows that the grid protection needs beyond the settings: how late a
    grid step may show in the readings when the meter values do not come from the meter
    task (the board's own measurement), and whether the grid was in service when this boot
    began (skipping the enter-service wait). A board that says nothing gets the safe
    defaults: the meter task's sampling, and the wait."""
    kw = {}
    sense = getattr(hal, 'meter_sense_ms', None)
    if buses.meter is None and sense is not None:
        kw['sense_ms'] = sense
    in_service = getattr(hal, 'grid_in_service_at_boot', None)
    if in_service is not None and in_service():
        kw['start_in_service'] = True
    return kw


class Station:
    def __init__(self, hal, now_ms):
        self.hal = hal
        self.cfg, cfg_problem, self.cfg_file_keys = load_config(hal.BOARD_LIMITS)
        self.cfg_file_state = 'refused' if cfg_problem else ('in use' if self.cfg_file_keys else 'none')
        # the whole reason for diagnostics (bounded to leave the answer within one frame); the
        # event log's text of it is shorter still
        self.cfg_problem = cfg_problem[:_CFG_PROBLEM_MAX] if cfg_problem else None
        self.buses = Buses(hal, self.cfg)   # the meter on RS-485 and the BMS on CAN, if the board has them
        self.ctl = Controller(self.cfg, grid=GridProtection.from_config(self.cfg, **_grid_facts(hal, self.buses)))
        self.inputs = Inputs()
        self.storage_errors = 0
        self.storage_error = ''
        self.storage_failing = {}   # file -> (path, content fn, sealed) of a failed write (V2G-021)
        self.seq = {}            # state file -> sequence number of its last written copies
        self.now_ms = now_ms
        self.load_stored_state(now_ms)
        storage.keep_reserve()   # room the safety state takes when the flash is full
        self.reset_cause = hal.reset_cause()
        self.link = L.Link(hal.link_write, write_n=getattr(hal, 'link_write_n', None))
        self.link_step_bytes = getattr(hal, 'LINK_STEP_BYTES', LINK_STEP_BYTES)
        self.rx_held = None      # bytes read from the link and not yet scanned, rx_at to rx_n
        self.rx_at = 0
        self.rx_n = 0
        # a board that reads the link into a buffer of ours (readinto) costs no heap a step
        self.rx_buf = bytearray(self.link_step_bytes) if hasattr(hal, 'link_readinto') else None
        self.take_msg = self.take         # bound once: the link hands each message to it
        self.tel_period_ms = _TEL_PERIOD_MS
        self.tel_batch = _TEL_BATCH
        self.tel = TelBatch(L.MAX_FRAME - 4, TEL_BATCH_MAX)
        self.next_tel_ms = now_ms
        self.next_save_ms = ticks.add(now_ms, _SAVE_EVERY_MS)
        if cfg_problem:
            self.ctl.log.append(now_ms, 'V2G-400', True,
                                'settings file refused: ' + cfg_problem)
        # the installer: reports a reverted trial (V2G-603) and the running firmware's version
        self.update = Updater(hal.BOARD_NAME, log=self.ctl.log, now_ms=now_ms, hal=hal, ctl=self.ctl,
                              fw_version=FW_VERSION,
                              slot_size=getattr(hal, 'UPDATE_SLOT_BYTES', update_mod.SLOT_SIZE))
        if hasattr(hal, 'attach_station'):   # the status LED shows an update in progress
            hal.attach_station(self)
        self.send_hello()

    # -- the control step ---------------------------------------------------------------------

    def tick(self, now_ms):
        self.now_ms = now_ms
        # The host first: a heartbeat or command that arrived by now is in force in this
        # step's outputs, so an answer never says "accepted" a step before its effect, and
        # reading the inputs, stepping and writing the outputs stay back to back.
        self.serve_link(now_ms)
        self.hal.read_inputs(self.inputs, now_ms)
        self.buses.read(now_ms, self.inputs, self.cfg)
        out = self.ctl.step(now_ms, self.inputs)
        self.hal.apply(out, now_ms)
        self.buses.write(now_ms, out, self.inputs)
        self.hal.feed_watchdog()
        evs = self.ctl.pop_events()
        if evs:
            self.buses.name_failures(evs, self.ctl.log)
            self.link.send(L.evt(evs))
            for e in evs:
                if e[2]:   # a raised code goes to flash now: a reset must not erase the reason
                    self.save_events()
                    break
        if self.update.busy:   # trial health check, requested reset, stalled download
            self.update.tick(now_ms, self.link.stats['frames_ok'])
            if self.update.reset_at is not None:
                self.save_events()   # why the updater resets goes to flash before the reset
        if ticks.due(now_ms, self.next_tel_ms):
            self.next_tel_ms = ticks.add(now_ms, self.tel_period_ms)
            self.sample(now_ms, out)
        self.save_state()
        if ticks.due(now_ms, self.next_save_ms):
            self.next_save_ms = ticks.add(now_ms, _SAVE_EVERY_MS)
            self.save_events()
            if self.storage_failing:
                self.retry_writes()
        return out

    # -- the meter's bytes between control steps (app/run.py, app/meter.py) ------------------

    def next_io_ms(self, now_ms):
        """When the meter port next needs io() (ticks_ms), or None: nothing before the step."""
        m = self.buses.meter
        return None if m is None else m.next_io_ms(now_ms)

    def io(self, now_ms):
        """The meter's byte pump between control steps; never the control step itself."""
        m = self.buses.meter
        if m is not None:
            m.io(now_ms)

    # -- host link intake: a bounded share of every step -------------------------------------

    def serve_link(self, now_ms):
        """At most LINK_STEP_FRAMES frames out of at most link_step_bytes new bytes a step,
        whatever the host sends: the next step starts on time under a flood. Bytes not
        reached wait here (what was read) or in the board's receive buffer (what was not);
        a host that keeps sending faster than this loses bytes to the buffer's overrun,
        and the link counts the damaged frames."""
        data = self.rx_held
        if data is None:
            if self.rx_buf is not None:
                n = self.hal.link_readinto(self.rx_buf, self.link_step_bytes)
                data = self.rx_buf
            else:
                data = self.hal.link_read(self.link_step_bytes)
                n = len(data) if data else 0
            if not n:
                return
            self.rx_at = 0
            self.rx_n = n
        # each message is handled as it is found (a heartbeat's map is the link's, reused)
        self.link.feed(data, self.rx_n, self.rx_at, LINK_STEP_FRAMES, self.take_msg)
        if self.link.fed_to < self.rx_n:
            self.rx_held, self.rx_at = data, self.link.fed_to
        else:
            self.rx_held = None

    # -- storage: a failing flash is counted and reported, and never stops the control ------

    def persist(self, what, path, blob_fn, seq=None):
        err = _write(path, blob_fn, seq)
        if err is not None and what == SAFETY_FILE and storage.release_reserve():
            err = _write(path, blob_fn, seq)   # the reserve gave its room to the safety state
        if err is None:
            if what in self.storage_failing:
                del self.storage_failing[what]
                if not self.storage_failing:
                    self.ctl.storage_fault(self.now_ms, False, 'every file written to flash again')
            return True
        self.storage_errors += 1
        self.storage_error = '{}: {}'.format(what, err)
        self.storage_failing[what] = (path, blob_fn, seq is not None)
        self.ctl.storage_fault(self.now_ms, True, 'writing {} failed ({}): kept in RAM and written '
                               'again'.format(what, err))
        return False

    def persist_state(self, name, body_fn):
        """A state/ file: both sealed copies, under the next sequence number."""
        seq = self.seq.get(name, 0) + 1
        self.seq[name] = seq
        return self.persist(name, storage.state_path(name), body_fn, seq)

    def save_state(self):
        if self.ctl.state_dirty:
            # a latched fault or a new target must not be lost to a reset a moment later
            if not self.persist_state('controller.json', self.ctl.state_dump):
                self.ctl.state_dirty = True     # try again next step

    def save_events(self):
        self.save_journal()     # normally written with each command; here after a failed write
        if self.ctl.log.dirty:
            if not self.persist_state('events.json', self.ctl.log.dump):
                self.ctl.log.dirty = True

    def retry_writes(self):
        """Write again what failed to be written (the journal with its command, the boot
        count, the settings file): each write takes the content as it is now."""
        for what in list(self.storage_failing):
            entry = self.storage_failing.get(what)
            if entry is None:
                continue
            if entry[2]:
                self.persist_state(what, entry[1])
            else:
                self.persist(what, entry[0], entry[1])

    def save_journal(self):
        if self.ctl.journal.dirty:
            if not self.persist_state('journal.json', self.ctl.journal.dump):
                self.ctl.journal.dirty = True

    # -- boot: what survives a reset ----------------------------------------------------------

    def load_stored_state(self, now_ms):
        """Read every state file from its newest whole copy. A damaged copy is reported
        (V2G-020, named in diagnostics until an operator clears it); with no readable copy
        left on a station that has run before, the file's conservative meaning is taken
        (LOST). An empty state folder is a first boot: nothing to report."""
        found = {}
        ran_before = False
        for name in STATE_FILES:
            found[name] = storage.read_copies(storage.state_path(name))
            ran_before = ran_before or found[name].existed
        # the firmware before sealed copies left an unsealed boot.json (it wrote one at every
        # boot) and wrote the other files only once they had content: none missing is lost
        boot = found['boot.json']
        upgrade = False
        if boot.legacy:
            try:
                upgrade = _boot_count(boot.body) >= 0
            except ValueError:
                pass
        missing_is_lost = ran_before and not upgrade
        ctl = self.ctl
        damage = []     # (name, what, lost): reported once the event log is loaded
        repair = []
        count = [0]

        def take(name, load):
            got = found[name]
            self.seq[name] = got.seq
            problems = list(got.damage)
            ok = False
            if got.body is not None:
                try:
                    load(got.body)
                    ok = True
                except Exception as e:  # noqa: BLE001 - whole but not readable by this firmware
                    problems.append('{}: unreadable ({})'.format(storage.state_path(name), e))
            if not ok and missing_is_lost and not problems:
                problems.append(storage.state_path(name) + ': missing')
            if problems:
                damage.append((name, '; '.join(problems), not ok))
            if got.repair or got.legacy or problems or not ok:
                repair.append(name)
            return ok

        take('journal.json', ctl.journal.load)
        take('events.json', ctl.log.load)

        def boot_load(body):
            count[0] = _boot_count(body)
        if not take('boot.json', boot_load):
            for row in ctl.log.rows():      # the newest boot the event log knows
                count[0] = max(count[0], row[4])
        self.boot_count = count[0] + 1
        # every entry from now on carries this boot: t_ms restarts at each boot
        ctl.log.boot = self.boot_count
        # latched faults, the charge-only fallback and the host's target survive a reset
        take('controller.json', lambda body: ctl.state_load(now_ms, body))
        for name, what, lost in damage:
            if lost and name == 'controller.json':
                ctl.assume_conservative(now_ms, storage.state_path(name) + ' unreadable')
            ctl.report_damage(now_ms, storage.state_path(name), 'stored state damaged: {}; {}'.format(
                (LOST[STATE_FILES.index(name)] if lost else 'the other copy is used'), what))
        # written back at once, the controller's first: a damaged copy is whole again, a reset
        # from here on finds the conservative state rather than the damage, and from the first
        # boot on every file exists, so a missing one means a lost one
        if 'controller.json' in repair:
            ctl.state_dirty = True
        self.save_state()
        self.persist_state('boot.json', lambda: ('{"count": %d}' % self.boot_count).encode())
        if 'journal.json' in repair:
            ctl.journal.dirty = True
            self.save_journal()
        if 'events.json' in repair or damage:
            ctl.log.dirty = True
            self.save_events()

    # -- host link ----------------------------------------------------------------------------

    def send_hello(self):
        self.link.send(L.hello(self.update.version(), self.hal.BOARD_NAME, self.cfg.config_hash(),
                               self.reset_cause, self.boot_count))

    def take(self, msg):
        self.on_message(msg, self.now_ms)

    def on_message(self, msg, now_ms):
        t = msg['t']
        if t == 'hb':
            self.ctl.heartbeat(now_ms)
            self.link.send_hback(msg)
        elif t == 'rtt':
            self.ctl.report_rtt(now_ms, msg['ms'])
        elif t == 'cmd':
            if not self.link.send(L.res_from(msg['txn'], self.on_command(msg, now_ms))):
                # never leave the host waiting: say why the answer could not go out
                self.link.send(L.res(msg['txn'], False, 'V2G-400',
                                     '{}: the answer does not fit one frame ({})'.format(
                                         msg['op'], self.link.last_error)))
        elif L.is_hello_request(msg):
            self.send_hello()

    def on_command(self, msg, now_ms):
        try:
            return self.run_command(msg, now_ms)
        except Exception as e:  # noqa: BLE001 - a bad command must never stop the station
            res = False, 'V2G-400', '{}: refused, it could not be handled ({})'.format(
                msg.get('op'), type(e).__name__), {}
            self.ctl.log_refusal(now_ms, msg.get('op'), res[1], res[2])
            return res

    def refuse(self, now_ms, op, code, text):
        # a refusal by the shell itself goes to the event log like the core's own
        self.ctl.log_refusal(now_ms, op, code, text)
        return False, code, text, {}

    def run_command(self, msg, now_ms):
        op, args = msg['op'], msg['args']
        if msg.get('ttl_ms', 1) <= 0:
            # idempotency first: a retry of an applied txn gets its original result, late or not
            prev = self.ctl.journal.get(msg['txn'])
            if prev is not None:
                return prev
            return self.refuse(now_ms, op, 'V2G-110', '{}: its time to live was spent before it arrived'.format(op))
        res = self.shell_command(op, args, now_ms)
        if res is not None:
            return res
        txn = msg['txn']
        prev = self.ctl.journal.get(txn) if isinstance(txn, str) else None
        if prev is not None:
            # a repeat of an applied txn: its original answer and nothing else; its effect is
            # on flash already (a config_set must not write the settings in force again)
            return prev
        result = self.ctl.command(now_ms, txn, op, args)
        # What the command changed goes to flash before its txn does, and the answer leaves
        # only after both: after a reset the same txn returns the same result AND its effect
        # is still in force.
        if result[0] and op == 'config_set':
            self.cfg = self.ctl.cfg
            self.save_config(args)
        self.save_state()
        self.save_journal()
        return result

    def shell_command(self, op, args, now_ms):
        """The answer of an operation the core does not serve: the station's own, the
        updater's, or the refusal of one nobody serves; None for the core's."""
        if op in SHELL_OPS:
            res = getattr(self, '_op_' + op)(args, now_ms)
            downloading = False
        elif op in update_mod.OPS:
            downloading = self.update.dl is not None
            res = self.update.command(op, args, now_ms)
            if res[0] and op == 'fota_finish':
                self.save_events()    # the install note goes to flash before the reset
        elif op in CORE_OPS:
            return None
        else:
            return self.refuse(now_ms, op, 'V2G-400', 'op: unknown operation {} (allowed: {})'.format(
                config_mod.show(op),
                ', '.join(CORE_OPS + SHELL_OPS + update_mod.OPS)))
        # the core logs its own refusals; these are the shell's, less those that changed
        # nothing worth an audit line: a read, or the chunks still in flight after an
        # update was refused (its refusal is in the log already)
        if not res[0] and op not in READ_OPS and not (op == 'fota_chunk' and not downloading):
            self.ctl.log_refusal(now_ms, op, res[1], res[2])
        return res

    def _op_diag(self, args, now_ms):
        return True, None, 'diagnostics', self.diagnostics(now_ms)

    def _op_hello(self, args, now_ms):
        self.send_hello()
        return True, None, 'hello sent', {}

    def _op_measurements(self, args, now_ms):
        return True, None, 'measurements', self.measurements(now_ms)

    def save_config(self, changes):
        """Write the settings file with only the keys someone set: those the file already
        held, those this change names, and any that differ from the defaults. The rest stay
        defaults, so diagnostics can tell an operator's value from a default."""
        defaults = config_mod.defaults(self.hal.BOARD_LIMITS)
        vals = self.cfg.values
        keys = set(self.cfg_file_keys)
        for k in changes:
            keys.add(k)
        for k in vals:
            if vals[k] != defaults.get(k):
                keys.add(k)
        subset = {}
        for k in keys:
            subset[k] = vals[k]
        if self.persist(CONFIG_FILE, CONFIG_FILE, lambda: config_mod.canonical(subset).encode()):
            # an optional key set to null is left out of the file: it is a default again
            self.cfg_file_keys = set(k for k in keys if vals[k] is not None)
            self.cfg_file_state = 'in use'

    def _op_events(self, args, now_ms):
        """The event log from index `start` (0 = oldest kept), as many entries as fit one
        frame; `next` is where the following page starts, None at the end."""
        start = args.get('start', 0)
        entries = self.ctl.log.rows()
        if not isinstance(start, int) or start < 0:
            return False, 'V2G-400', 'start: must be an index >= 0', {}
        page, size, i = [], 0, start
        while i < len(entries):
            t, code, on, text, boot = entries[i]
            size += len(text) + 28    # CBOR of one entry: the text plus a few small items
            if page and size > _EVENTS_PAGE_BYTES:
                break
            page.append([t, code, on, text, boot])
            i += 1
        return True, None, 'event log', {'events': page, 'total': len(entries),
                                         'next': i if i < len(entries) else None}

    def _op_telemetry(self, args, now_ms):
        period = args.get('period_ms', self.tel_period_ms)
        batch = args.get('batch', self.tel_batch)
        if not isinstance(period, int) or not 100 <= period <= 60000:
            return False, 'V2G-400', 'period_ms: must be an integer 100 .. 60000', {}
        if not isinstance(batch, int) or not 1 <= batch <= TEL_BATCH_MAX:
            return False, 'V2G-400', 'batch: must be an integer 1 .. {}'.format(TEL_BATCH_MAX), {}
        self.tel_period_ms, self.tel_batch = period, batch
        return True, None, 'telemetry every {} ms, {} per message'.format(period, batch), {}

    # -- telemetry and diagnostics ------------------------------------------------------------

    def sample(self, now_ms, out):
        """One telemetry sample into the batch, written as CBOR in place (core/telemetry.py):
        nothing allocates. A field is one put; docs/host-link.md lists them."""
        inp = self.inputs
        meter = self.buses.meter
        if meter is not None:   # the billing meter's registers, when there is one
            e_in, e_out = meter.import_wh(), meter.export_wh()
        else:
            e_in, e_out = self.hal.energy_in_wh(), self.hal.energy_out_wh()
        s = self.tel
        s.begin()
        s.put('t_ms', now_ms)
        s.put('cp', out.cp_state)
        s.put('mode', out.mode)
        s.put('contactor', out.contactor)
        s.put('pwm_pm', out.pwm_pm)
        s.put('ma', inp.meter_ma)
        s.put('mv', inp.meter_mv)
        s.put('mhz', inp.meter_mhz)
        s.put('w', (inp.meter_mv // 100) * inp.meter_ma // 10000)
        s.put('soc_pm', out.soc_pm)     # the controller's: -1 until the BMS or the vehicle tells
        s.put('evse_dc', inp.evse_temp_dc)
        s.put('bat_dc', inp.bms_temp_dc)
        s.put('lim_chg_ma', out.limit_charge_ma)
        s.put('lim_chg_src', out.limit_charge_src)
        s.put('lim_dis_ma', out.limit_discharge_ma)
        s.put('lim_dis_src', out.limit_discharge_src)
        s.put('req_ma', out.request_ma)
        s.put_errors('errors', out.errors)
        s.put('e_in_wh', e_in)
        s.put('e_out_wh', e_out)
        s.put('dis_cap_wh', out.discharge_capacity_wh)
        s.put('cool', out.cooling_state)
        s.put('led', status_led.NAMES[status_led.select(out.mode, out.errors, self.update.busy)])
        if not s.end():
            # it does not fit behind the batch (many active errors): the batch goes first
            self.send_tel()
            if not s.end():
                self.link.stats['tx_errors'] += 1
                self.link.last_error = 'send: one telemetry sample exceeds the frame'
                return
        if s.count >= self.tel_batch:
            self.send_tel()

    def send_tel(self):
        """Send the samples batched so far, if any."""
        s = self.tel
        if s.count:
            self.link.send_payload(s.buf, s.payload())
            s.clear()

    def diagnostics(self, now_ms):
        out = self.ctl.out
        link = dict(self.link.stats)
        link['hb_timeouts'] = self.ctl.hb_timeouts   # host heartbeats missed (V2G-101) since boot
        return {
            'fw': self.update.version(), 'board': self.hal.BOARD_NAME, 'boot_count': self.boot_count,
            'reset_cause': self.reset_cause, 'uptime_ms': now_ms,
            # the values themselves come with config_get (a frame holds 1 kB); here, which
            # keys the settings file in force sets (the others are defaults); none when the
            # file was refused at boot and the defaults run
            'cfg_hash': self.cfg.config_hash(), 'config_file_keys': sorted(self.cfg_file_keys),
            'config_file': self.cfg_file_state, 'config_problem': self.cfg_problem,
            'mode': out.mode, 'cp_state': out.cp_state, 'contactor': out.contactor,
            'limits': {'charge_ma': out.limit_charge_ma, 'charge_src': out.limit_charge_src,
                       'discharge_ma': out.limit_discharge_ma, 'discharge_src': out.limit_discharge_src},
            'errors': errors.active(out.errors),
            'link': link,
            'buses': self.bus_stats(now_ms),
            'events': len(self.ctl.log),
            # damaged: state files found damaged at a boot (V2G-020) until an operator clears it
            'storage': {'errors': self.storage_errors, 'last': self.storage_error,
                        'damaged': list(self.ctl.damaged)},
            # the update slots come with fota_status: one answer must fit a 1 kB frame
        }

    def measurements(self, now_ms):
        """What the station measures now, each group with its age in ms: the meter's and the
        BMS's from their last valid reading, the rest read by the HAL in this control step
        (age 0). Milli-units; a separate answer from diag, both must fit one 1 kB frame."""
        inp = self.inputs
        out = self.ctl.out
        meter = self.buses.meter
        if meter is not None and meter.reader.reading.valid:
            v = meter.reader.reading.vals
            grid = {'source': 'meter', 'mv': [v[M.F_MV1], v[M.F_MV2], v[M.F_MV3]],
                    'ma': [v[M.F_MA1], v[M.F_MA2], v[M.F_MA3]],
                    'mw': [v[M.F_MW1], v[M.F_MW2], v[M.F_MW3]], 'mw_total': v[M.F_MW_TOTAL],
                    'mhz': v[M.F_MHZ], 'import_wh': v[M.F_IMPORT_WH], 'export_wh': v[M.F_EXPORT_WH]}
        else:
            # no meter on this board, or no reading yet: the board's own measurement, one phase
            w = (inp.meter_mv // 100) * inp.meter_ma // 10000
            grid = {'source': 'meter' if meter is not None else 'board',
                    'mv': [inp.meter_mv], 'ma': [inp.meter_ma], 'mw': [w * 1000], 'mw_total': w * 1000,
                    'mhz': inp.meter_mhz, 'import_wh': self.hal.energy_in_wh(),
                    'export_wh': self.hal.energy_out_wh()}
        grid['age_ms'] = inp.meter_age_ms
        grid['ok'] = inp.meter_ok
        return {
            'uptime_ms': now_ms, 'grid': grid,
            'bms': {'age_ms': inp.bms_age_ms, 'soc_pm': inp.bms_soc_pm, 'temp_dc': inp.bms_temp_dc,
                    'max_charge_ma': inp.bms_max_charge_ma, 'max_discharge_ma': inp.bms_max_discharge_ma},
            'evse': {'age_ms': 0, 'temp_dc': inp.evse_temp_dc, 'pp_a': inp.pp_limit_a},
            'pilot': {'age_ms': 0, 'state': out.cp_state, 'duty_pm': out.pwm_pm,
                      'high_mv': inp.cp_high_mv, 'low_mv': inp.cp_low_mv},
            'contactor': {'age_ms': 0, 'command': out.contactor, 'feedback': inp.contactor_closed},
            'request_ma': out.request_ma,
        }

    def bus_stats(self, now_ms):
        # the board's view (wiring, driver counters) with the shell's protocol counters over it
        stats = dict(self.hal.bus_stats())
        stats.update(self.buses.stats(now_ms))
        return stats
