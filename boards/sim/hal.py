"""HAL of the simulated board: the plant model stands in for the power stage, the EV, the
meter and the grid, and runs in real time on the virtual board.

Ports: on the virtual board the host's pseudo-terminals reach the firmware through the VM's
`hostio` module (link, plant, rs485, can); elsewhere (tests under CPython) in-memory queues
stand in, and the test plays the host.

Two ways for meter and BMS data to reach the controller (`buses=`, or the file
`sim_board.json` that the virtual board writes on the board's flash):
- plant-direct (the default, used by `v2g sim`): the plant fills the meter and BMS Inputs;
  `hal.rs485` and `hal.can` are None.
- buses: {"meter": "modbus"} makes `hal.rs485` the real RS-485 port (Modbus RTU to whatever
  meter answers on it); {"bms": "can"} makes `hal.can` the CAN port, and with
  {"ev_can": "plant"} the plant's BMS sends its frames onto the bus. The plant's meter
  values then leave on the plant port as `{"meter_sim": [...]}` lines (see METER_SIM_MS)
  for the board's meter simulator.

On the virtual board the plant outlives the controller: its state goes to the board host
(hostio.keep_plant, every KEEP_PLANT_MS and from save_plant() as the VM resets) and the next
boot's Hal takes it back (hostio.kept_plant), so a reset leaves the EV, the battery and the
grid as they were. The plant still steps here, inside the control step.

CAN port records on the `can` channel, both ways: 14 bytes, [origin u8][id u32 LE: bit 31
set for a 29-bit id][dlc u8][8 data bytes]; origin 0 = the controller (or, inbound, the
bus), 1 = the plant's vehicle.
"""
import json
import sys
import time

from board.ev_can import PlantBms
from board.plant import PLANT_EVENTS, Plant
from app import storage
from core import setpoint as SP
from core import status_led
from core.checks import type_problem

BOARD_NAME = 'sim'
BOARD_LIMITS = {}   # the simulated power stage is rated for the whole config range

# The host's side of a scenario (setpoint, limit, config, heartbeat loss) on the plant port:
# the board plays the host for the controller. The same rules as a scenario's [[at]] events
# (host_tools/scenario.py EVENTS: that module does not run on the board, so the table is
# kept here, and a host test holds the two equal; both word problems with core/checks.py).
# do -> (required, optional, key specs), a spec as in core/checks.py; config: any keys.
_TXN = ('str', 1, 64)
HOST_EVENTS = {
    'setpoint': (('soc_target_pct', 'txn'), ('mode',),
                 {'soc_target_pct': ('num', 0, 100), 'txn': _TXN, 'mode': (SP.MODE_NAMES, None, None)}),
    'limit': (('charge_a', 'discharge_a'), ('txn',),
              {'charge_a': ('num', 0, 80), 'discharge_a': ('num', 0, 80), 'txn': _TXN}),
    'heartbeat_loss': ((), (), {}),
    'heartbeat_restore': ((), (), {}),
    'config': None,
}
HB_LOST_FILE = 'sim_hb_lost'   # the simulated host stays quiet across a controller reset
RESET_FILE = 'sim_reset'       # why the board reset, left for the next boot (a real MCU's RCC flags)
POWER_CUT_FILE = 'fota_fault.json'   # a power cut during an update (board/power_cut.py)


def host_event_problem(do, args):
    """What is wrong with a host event's keys, as the scenario validator words it; None if fine."""
    rule = HOST_EVENTS[do]
    if rule is None:   # config: any keys, their values judged by the controller
        if not args:
            return 'config needs at least one settings key'
        for k in args:
            if isinstance(args[k], (dict, list)):
                return 'config value of {} must be a plain value'.format(k)
        return None
    required, optional, specs = rule
    for key in args:
        if key not in required and key not in optional:
            return 'unknown key {!r} (allowed: {})'.format(key, ', '.join(required + optional) or 'none')
    for key in required:
        if key not in args:
            return 'missing key {!r}'.format(key)
    for key in args:
        problem = type_problem(key, args[key], specs[key])
        if problem:
            return problem
    return None


MODE_FILE = 'sim_board.json'
METER_SIM_MS = 100          # plant values to the meter simulator this often
CAN_RECORD = 14
ORIGIN_CONTROLLER = 0
ORIGIN_VEHICLE = 1
EXT_FLAG = 0x80000000
_RX_CAP = 4096              # bytes a port holds before dropping (a UART's overrun)
LINK_RX_CAP = 6144          # the host link's receive ring, as the pyboard's (LINK_BUF)
KEEP_PLANT_MS = 500         # the plant's state to the board host this often (see keep_plant)

_live = None                # the Hal whose plant the board host keeps (save_plant)


def save_plant():
    """The plant's state to the board host now: the virtual board calls this as the VM
    resets, so the next boot finds the plant exactly as it was."""
    if _live is not None:
        _live.keep_plant()


def load_modes(ports):
    """The bus wiring: {'meter': 'plant'|'modbus', 'bms': 'plant'|'can', 'ev_can': 'plant'|'external'}."""
    modes = {'meter': 'plant', 'bms': 'plant', 'ev_can': 'plant'}
    if isinstance(ports, MemoryPorts):
        return modes   # tests say what they want with buses=
    try:
        with open(MODE_FILE) as f:
            got = json.load(f)
    except (OSError, ValueError):
        return modes
    if isinstance(got, dict):
        for k in modes:
            if isinstance(got.get(k), str):
                modes[k] = got[k]
    return modes


def _mark(path, on):
    try:
        if on:
            with open(path, 'w') as f:
                f.write('1')
        else:
            import os
            os.remove(path)
    except OSError:
        pass   # gone already, or no filesystem: the flag still holds until a reset


def _mark_reset(cause):
    try:
        with open(RESET_FILE, 'w') as f:
            f.write(cause)
    except OSError:
        pass   # no filesystem: the next boot says power_on


def _take_reset_cause():
    try:
        with open(RESET_FILE) as f:
            cause = f.read().strip()
        import os
        os.remove(RESET_FILE)
    except OSError:
        return 'power_on'
    return cause if cause in ('soft_reset', 'hard_reset') else 'power_on'


class SimRs485:
    """The RS-485 port: bytes to and from the `rs485` channel. The pseudo-terminal has no
    line timing, so a write has left the wire as soon as it is handed over."""

    def __init__(self, ports):
        self.ports = ports
        self.pending = b''
        self.baud = None
        self.overruns = 0

    def open(self, baud):
        self.baud = baud

    def write(self, buf, n):
        self.ports.write('rs485', bytes(buf[:n]))

    def tx_done(self):
        return True

    def readinto(self, buf):
        data = self.ports.read('rs485')
        if data:
            self.pending += data
            if len(self.pending) > _RX_CAP:
                self.overruns += len(self.pending) - _RX_CAP
                self.pending = self.pending[-_RX_CAP:]
        n = len(self.pending)
        if n == 0:
            return 0
        if n > len(buf):
            n = len(buf)
        buf[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


class SimCan:
    """The CAN port: 14-byte records on the `can` channel (see the module doc)."""

    def __init__(self, ports):
        self.ports = ports
        self.pending = b''
        self.bitrate = None
        self.rx_id = 0
        self.rx_ext = False
        self.bad_records = 0
        self.overruns = 0

    def open(self, bitrate):
        self.bitrate = bitrate

    def send(self, can_id, buf, dlc, origin=ORIGIN_CONTROLLER):
        rec = bytearray(CAN_RECORD)
        rec[0] = origin
        rec[1] = can_id & 0xFF
        rec[2] = (can_id >> 8) & 0xFF
        rec[3] = (can_id >> 16) & 0xFF
        rec[4] = (can_id >> 24) & 0xFF
        rec[5] = dlc
        for i in range(dlc if dlc <= 8 else 8):
            rec[6 + i] = buf[i]
        self.ports.write('can', bytes(rec))
        return True

    def recv(self, buf):
        data = self.ports.read('can')
        if data:
            self.pending += data
            if len(self.pending) > _RX_CAP * 4:
                self.overruns += 1
                self.pending = b''
        while len(self.pending) >= CAN_RECORD:
            rec = self.pending[:CAN_RECORD]
            self.pending = self.pending[CAN_RECORD:]
            dlc = rec[5]
            if rec[0] != ORIGIN_CONTROLLER or dlc > 8:
                self.bad_records += 1
                continue
            cid = rec[1] | (rec[2] << 8) | (rec[3] << 16) | (rec[4] << 24)
            self.rx_ext = bool(cid & EXT_FLAG)
            self.rx_id = cid & 0x1FFFFFFF
            for i in range(8):
                buf[i] = rec[6 + i]
            return dlc
        return -1


class HostioPorts:
    """The virtual board's ports, served by the VM host (host_tools/vm/mpvm.mjs)."""

    def __init__(self, hostio):
        self.io = hostio
        # the virtual board's host keeps the plant; `mpvm.mjs run` (the simulator) does not
        self.keeps_plant = hasattr(hostio, 'keep_plant')

    def read(self, name, max_n=0, cap=0):
        data = self.io.read(name, max_n, cap)
        return bytes(data) if data is not None else None

    def dropped(self, name):
        return self.io.dropped(name)

    def write(self, name, data):
        self.io.write(name, data.hex())

    def stop_requested(self):
        return bool(self.io.interrupted())

    def reset(self):
        self.io.reset()

    # The plant is the world outside the controller: the board host (host_tools/vboard.py)
    # keeps its state while the VM, the controller, resets.
    def keep_plant(self, text):
        self.io.keep_plant(text)

    def kept_plant(self):
        return self.io.kept_plant()


class MemoryPorts:
    """In-memory ports for tests: `inbox[name]` is what the host sent, `outbox[name]` what
    the firmware wrote."""

    def __init__(self):
        self.inbox = {'link': b'', 'plant': b'', 'rs485': b'', 'can': b''}
        self.outbox = {'link': b'', 'plant': b'', 'rs485': b'', 'can': b''}
        self.lost = {'link': 0, 'plant': 0, 'rs485': 0, 'can': 0}
        self.stop = False

    def read(self, name, max_n=0, cap=0):
        """As the virtual board's ports: at most max_n bytes (> 0), the rest kept; a port
        holds at most cap bytes (> 0), what arrived beyond them is lost."""
        data = self.inbox[name]
        if not data:
            return None
        if 0 < cap < len(data):
            self.lost[name] += len(data) - cap
            data = data[:cap]
        if 0 < max_n < len(data):
            self.inbox[name] = data[max_n:]
            return data[:max_n]
        self.inbox[name] = b''
        return data

    def dropped(self, name):
        return self.lost[name]

    def write(self, name, data):
        self.outbox[name] += bytes(data)

    def stop_requested(self):
        return self.stop

    def reset(self):
        self.stop = True


class BufferPorts(MemoryPorts):
    """MemoryPorts whose host link goes through preallocated buffers, as a board's UART
    does: reading and writing the link allocates nothing, so a test or a bench can measure
    what the station itself allocates. The host side: send(frame) queues bytes for the
    station, sent() takes what it wrote."""

    def __init__(self, size=LINK_RX_CAP):
        MemoryPorts.__init__(self)
        self.rx = bytearray(size)
        self.rx_n = 0
        self.tx = bytearray(size)
        self.tx_n = 0

    def send(self, data):
        n = len(data)
        if self.rx_n + n > len(self.rx):
            raise ValueError('BufferPorts: {} bytes queued, room for {}'.format(n, len(self.rx) - self.rx_n))
        self.rx[self.rx_n:self.rx_n + n] = data
        self.rx_n += n

    def sent(self):
        out = bytes(self.tx[:self.tx_n])
        self.tx_n = 0
        return out

    def readinto(self, name, buf, max_n, cap=0):
        # byte by byte: a slice would be a heap object
        rx = self.rx
        k = self.rx_n
        if k > max_n:
            k = max_n
        if k > len(buf):
            k = len(buf)
        for i in range(k):
            buf[i] = rx[i]
        for i in range(k, self.rx_n):
            rx[i - k] = rx[i]
        self.rx_n -= k
        return k

    def write_n(self, name, buf, n):
        tx = self.tx
        at = self.tx_n
        if at + n > len(tx):
            at = 0     # the test did not collect: the oldest output is dropped
        for i in range(n):
            tx[at + i] = buf[i]
        self.tx_n = at + n


def default_ports():
    try:
        import hostio
    except ImportError:
        return MemoryPorts()
    return HostioPorts(hostio)


class Hal:
    BOARD_NAME = BOARD_NAME
    BOARD_LIMITS = BOARD_LIMITS

    def __init__(self, ports=None, plant=None, clock=None, buses=None, rs485=None, in_service=False):
        """clock: a callable giving ticks_ms (None: the VM's time.ticks_ms); one with a
        sleep_ms (board/clock.py SimClock) is also the shell's sleep, in simulated time.
        rs485: the meter port object itself (board/meter_wire.py), for the scenario driver.
        in_service: the grid was in service when this boot began (a scenario starts so)."""
        self.ports = ports or default_ports()
        self.plant = plant or Plant()
        self.clock = clock
        if hasattr(clock, 'sleep_ms'):
            self.sleep_ms = clock.sleep_ms     # app/run.py sleeps on the board's clock
            self.ticks_ms = clock.ticks_ms     # bound once: read twice a step
        # A board host that keeps the plant (the virtual board) hands back the plant as the
        # last boot left it: the EV, its battery and the grid do not notice a controller reset.
        # A plant of our own starts its grid at the settings' nominal voltage and frequency
        # (attach_station), and so does a kept one whose grid no plant port event has set: the
        # installer's settings describe the grid the station is on.
        self.keeps_plant = plant is None and getattr(self.ports, 'keeps_plant', False)
        self.plant_restored = self.keeps_plant and self._restore_plant()
        self.grid_to_nominal = plant is None and not self.plant.grid_from_events
        self.next_keep_ms = None
        self.in_service = in_service
        self.crash = None
        self.last_ms = None
        self.outputs = None
        self.plant_buf = b''
        self.modes = load_modes(self.ports)
        if buses:
            self.modes.update(buses)
        if rs485 is not None:
            self.modes['meter'] = 'modbus'
            self.rs485 = rs485
        else:
            self.rs485 = SimRs485(self.ports) if self.modes['meter'] == 'modbus' else None
        # the plant's values go out on the plant port for a meter simulator at the other end
        # of the RS-485 port; a port object given here is its own meter (the wire model)
        self.feeds_meter_sim = rs485 is None and self.rs485 is not None
        # Without a meter port the plant fills the meter Inputs itself: a reading answers at
        # once, so a grid step shows no later than the reading that follows it (core/grid.py
        # sense_ms 0). With one, the meter task's sampling says (the station's default).
        self.meter_sense_ms = 0 if self.rs485 is None else None
        self.can = SimCan(self.ports) if self.modes['bms'] == 'can' else None
        self.ev_bms = PlantBms() if self.can is not None and self.modes['ev_can'] == 'plant' else None
        self.next_meter_sim_ms = None
        self.station = None          # the station the plant port plays the host for
        self.host_txns = 0           # txns made up for host events that carry none
        # a heartbeat loss played on the plant port: the host's heartbeat frames are taken
        # off the link before the station reads it (hb_filter decodes them), the rest is
        # handed on from hb_held
        self.heartbeat_lost = storage.exists(HB_LOST_FILE)
        self.hb_dropped = 0
        self.hb_filter = None
        self.hb_held = b''
        # the status LED the board would show (core/status_led.py): pattern and brightness
        self.led = status_led.IDLE
        self.led_ms = None           # the control step that last set it (led_level)


        # a reset this board asked for leaves its cause; none is a power-up (or a VM restart
        # from outside: the virtual board's power cut)
        self._reset_cause = _take_reset_cause()
        # the power-cut tests of updates: the board's flash dies at a named step (board/power_cut.py)
        if storage.exists(POWER_CUT_FILE):
            from board import power_cut
            power_cut.arm()
        self.port_buffers = hasattr(self.ports, 'readinto')   # BufferPorts: nothing allocates
        # in-memory ports (the scenario driver's, tests'): an empty queue is seen without a
        # call, as most control steps find both the link and the plant port empty
        self._inbox = getattr(self.ports, 'inbox', None)
        self.stop_requested = self.ports.stop_requested      # bound once: asked every step
        if self.keeps_plant:
            global _live
            _live = self

    # -- the plant across a controller reset ----------------------------------------------

    def _restore_plant(self):
        text = self.ports.kept_plant()
        if not text:
            return False
        try:
            self.plant.restore(json.loads(text), self.ticks_ms())
        except (ValueError, TypeError) as e:
            # a kept state this firmware cannot read: a fresh plant, and the reason on the REPL
            print('sim: plant state not restored: {}'.format(e))
            return False
        return True

    def keep_plant(self):
        """Hand the plant's state to the board host, which keeps it across resets."""
        if self.keeps_plant:
            self.ports.keep_plant(json.dumps(self.plant.snapshot()))

    # -- time, watchdog, reset ------------------------------------------------------------

    def ticks_ms(self):
        if self.clock is not None:
            return self.clock()
        return time.ticks_ms()

    def ticks_us(self):
        if self.clock is not None:
            return (self.clock() * 1000) & 0x3FFFFFFF
        if hasattr(time, 'ticks_us'):
            return time.ticks_us()
        return (time.monotonic_ns() // 1000) & 0x3FFFFFFF

    def feed_watchdog(self):
        pass   # the plant has no watchdog; a crashed loop stops stepping, visible in telemetry

    def reset_cause(self):
        return self._reset_cause

    def grid_in_service_at_boot(self):
        """True when this boot may skip the grid's enter-service wait: the scenario driver
        starts a station already in service; the virtual board, as a board after a power-up,
        waits."""
        return self.in_service

    def reset(self):
        """Reset the board (the virtual board restarts its VM and runs boot.py, main.py)."""
        self.safe_state()
        _mark_reset('soft_reset')
        self.keep_plant()
        self.ports.reset()

    def stop_requested(self):
        return self.ports.stop_requested()

    def log_exception(self, e):
        self.crash = e      # what stopped the control loop, for whoever runs the board
        sys.print_exception(e) if hasattr(sys, 'print_exception') else print(repr(e))

    # -- the plant stands in for the hardware ---------------------------------------------

    def read_inputs(self, inputs, now_ms):
        if self._inbox is None or self._inbox['plant']:
            self.serve_plant_port(now_ms)
        if now_ms != self.last_ms:
            self.plant_to(now_ms)     # the scenario driver has moved it on to now already
        st = self.station
        if self.rs485 is None and st is not None:
            # the plant's meter stands in for the meter task: it polls as the settings say
            self.plant.meter_poll_ms = st.cfg.meter_poll_ms
        self.plant.fill_inputs(inputs, now_ms)
        if self.ev_bms is not None:
            self.ev_bms.frames(self.plant, now_ms, self._vehicle_frame)
        if self.feeds_meter_sim and (self.next_meter_sim_ms is None or now_ms - self.next_meter_sim_ms >= 0):
            self.next_meter_sim_ms = now_ms + METER_SIM_MS
            self.ports.write('plant', self.meter_sim_line())
        if self.keeps_plant and (self.next_keep_ms is None or now_ms - self.next_keep_ms >= 0):
            # often enough that a power cut (no reset hook runs) loses at most this much
            self.next_keep_ms = now_ms + KEEP_PLANT_MS
            self.keep_plant()

    def plant_to(self, now_ms):
        """The plant's physics up to now_ms under the outputs last applied (the scenario
        driver calls it before it applies the events of now_ms, the step after)."""
        if self.last_ms is not None and self.outputs is not None and now_ms != self.last_ms:
            self.plant.step(self.last_ms, now_ms - self.last_ms, self.outputs)
        self.last_ms = now_ms

    def _vehicle_frame(self, can_id, data, dlc):
        self.can.send(can_id, data, dlc, ORIGIN_VEHICLE)

    def meter_sim_line(self):
        """What the plant's meter measures, for the board's Modbus meter simulator:
        [mV, mA (+ into the EV), mHz, import Wh, export Wh, fault kind or null]."""
        p = self.plant
        vals = [p.grid_mv, p.ev_ma, p.grid_mhz, p.energy_in_mwh() // 1000,
                p.energy_out_mwh() // 1000, p.meter_fault]
        return (json.dumps({'meter_sim': vals}) + '\n').encode()

    def apply(self, outputs, now_ms):
        """The plant takes the outputs at its next step (contactor, pilot, request, pump);
        the status LED follows the controller's mode, its errors and the installer."""
        self.outputs = outputs
        st = self.station
        self.led = status_led.select(outputs.mode, outputs.errors, st is not None and st.update.busy)
        self.led_ms = now_ms      # its brightness then: led_level

    @property
    def led_level(self):
        """The status LED's brightness as the last control step set it (per-mille): worked
        out when asked, not in every step; dark before the first step."""
        if self.led_ms is None:
            return 0
        return status_led.level(self.led, self.led_ms)

    def safe_state(self):
        """Contactor open, pilot to state F, no discharge request."""
        if self.outputs is not None:
            self.outputs.contactor = False
            self.outputs.pwm_pm = 0
            self.outputs.request_ma = 0
            self.plant.step(self.last_ms or 0, 0, self.outputs)

    def energy_in_wh(self):
        return self.plant.energy_in_mwh() // 1000

    def energy_out_wh(self):
        return self.plant.energy_out_mwh() // 1000

    def bus_stats(self):
        # short: the station's protocol counters join these in one 1 kB diag answer
        out = {}
        if self.rs485 is None:
            out['meter'] = 'plant model'
        elif self.rs485.overruns:
            out['rs485_port'] = {'overruns': self.rs485.overruns}
        lost = self.ports.dropped('link')
        if lost or self.hb_dropped:
            out['link_port'] = {'overruns': lost}
            if self.hb_dropped:
                out['link_port']['hb_dropped'] = self.hb_dropped   # a played heartbeat loss
        if self.can is None:
            out['can'] = 'plant model'
        else:
            port = {'vehicle': self.modes['ev_can']}
            if self.can.bad_records:
                port['bad_records'] = self.can.bad_records
            if self.can.overruns:
                port['overruns'] = self.can.overruns
            out['can_port'] = port
        return out

    # -- host link ------------------------------------------------------------------------

    def link_read(self, max_n=LINK_RX_CAP):
        """At most max_n bytes of what the host sent, or None. The port holds what waits as
        the board's UART ring does: up to LINK_RX_CAP bytes; bytes arriving with it full are
        lost (bus_stats: link_port overruns), as on the board."""
        if self.heartbeat_lost or self.hb_held:
            return self._quiet_host_read(max_n)
        return self.ports.read('link', max_n, LINK_RX_CAP)

    def _quiet_host_read(self, max_n):
        """The link while the board plays a heartbeat loss: the host's frames go through,
        less its heartbeats (counted in hb_dropped), as if the host had stopped sending them."""
        data = self.ports.read('link', 0, LINK_RX_CAP)
        if data and self.heartbeat_lost:
            if self.hb_filter is None:
                from core import link as L
                self.hb_filter = L.Link(self._hb_pass)
            self.hb_filter.feed(data, -1, 0, 0, self._hb_take)
        elif data:
            self.hb_held += data
        held = self.hb_held
        if not held:
            return None
        out, self.hb_held = held[:max_n], held[max_n:]
        return out

    def _hb_take(self, msg):
        if msg.get('t') == 'hb':
            self.hb_dropped += 1    # as if it never arrived: no echo either
            return
        from core import link as L
        self.hb_held += L.encode_frame(msg)

    def _hb_pass(self, data):
        pass   # the filter only reads

    def link_write(self, data):
        self.ports.write('link', data)

    def link_readinto(self, buf, max_n):
        """As link_read, into buf (the station's): the number of bytes, 0 when none."""
        if self.heartbeat_lost or self.hb_held:
            data = self._quiet_host_read(max_n)
        elif self.port_buffers:
            return self.ports.readinto('link', buf, max_n, LINK_RX_CAP)
        elif self._inbox is not None and not self._inbox['link']:
            return 0
        else:
            data = self.ports.read('link', max_n, LINK_RX_CAP)
        if not data:
            return 0
        n = len(data)
        buf[0:n] = data
        return n

    def link_write_n(self, buf, n):
        """Write buf[:n] to the link (as a UART's write(buf, n))."""
        if self.port_buffers:
            self.ports.write_n('link', buf, n)
        else:
            self.ports.write('link', memoryview(buf)[:n])

    # -- the plant port: scenario events, one JSON object per line ------------------------

    def serve_plant_port(self, now_ms):
        data = self.ports.read('plant')
        if not data:
            return
        self.plant_buf += data
        while b'\n' in self.plant_buf:
            line, self.plant_buf = self.plant_buf.split(b'\n', 1)
            line = line.strip()
            if line:
                self.ports.write('plant', self._answer(line, now_ms))
        if len(self.plant_buf) > 4096:
            self.plant_buf = b''
            self.ports.write('plant', b'{"ok": false, "error": "line longer than 4096 bytes dropped"}\n')

    def _answer(self, line, now_ms):
        """The reply line to one plant port line. This runs inside the control step (from
        read_inputs), so nothing a line holds may raise past here: whatever goes wrong
        becomes a refusal line and the controller keeps running."""
        try:
            return (json.dumps(self.plant_event(line, now_ms)) + '\n').encode()
        except Exception as e:  # noqa: BLE001 - a bug in an event's handling, not the line's
            return (json.dumps({'ok': False, 'error': 'event not applied: {}: {}'.format(
                type(e).__name__, e)}) + '\n').encode()

    def plant_event(self, line, now_ms):
        try:
            text = line.decode()
        except UnicodeError:
            # bytes.decode has no errors='replace' on MicroPython; repr shows the bytes
            return {'ok': False, 'error': 'not UTF-8 text: {}'.format(repr(line[:40]))}
        try:
            ev = json.loads(text)
        except ValueError:
            return {'ok': False, 'error': 'not a JSON object: ' + text[:60]}
        if not isinstance(ev, dict) or not isinstance(ev.get('do'), str):
            return {'ok': False, 'error': 'an event is a JSON object with a "do" key'}
        do = ev.pop('do')
        if do in ('reboot', 'state') and ev:
            return {'ok': False, 'do': do, 'error': 'unknown key {!r} (allowed: none)'.format(sorted(ev)[0])}
        if do == 'reboot':
            _mark_reset('hard_reset')     # the reset button
            self.ports.reset()
            return {'ok': True, 'do': 'reboot'}
        if do == 'state':
            return {'ok': True, 'do': 'state', 'state': self.plant_state()}
        if do in HOST_EVENTS:
            return self.host_event(do, ev, now_ms)
        if do not in PLANT_EVENTS:
            return {'ok': False, 'do': do, 'error': 'unknown event {!r} (known: {})'.format(
                do, ', '.join(PLANT_EVENTS + tuple(HOST_EVENTS) + ('reboot', 'state')))}
        try:
            self.plant.apply_event(do, ev, now_ms)
        except ValueError as e:
            return {'ok': False, 'do': do, 'error': str(e)}
        return {'ok': True, 'do': do}

    def attach_station(self, station):
        self.station = station
        if self.grid_to_nominal:
            # the grid the station is set up for: the settings' nominal voltage and the
            # GRID_PROFILE's nominal frequency (a scenario's plant says its own grid)
            self.grid_to_nominal = False
            p = self.plant
            p.grid_mv = p.meter_mv = station.cfg.nominal_mv
            p.grid_mhz = p.meter_mhz = station.cfg.nominal_mhz

    def host_event(self, do, args, now_ms):
        """A host-side scenario event, with the meaning `v2g sim` gives it (scenario_run.py):
        setpoint, limit and config become the host's commands through the station's command
        path (journal, event log); the reply carries the controller's result. Heartbeat loss
        makes the station drop the host's heartbeat frames until restored."""
        problem = host_event_problem(do, args)
        if problem:
            return {'ok': False, 'do': do, 'error': problem}
        st = self.station
        if st is None:
            return {'ok': False, 'do': do, 'error': 'no controller is running to take it'}
        if do == 'heartbeat_loss' or do == 'heartbeat_restore':
            lost = do == 'heartbeat_loss'
            self.heartbeat_lost = lost
            if not lost:
                self.hb_filter = None   # a frame cut in two by the restore is lost with it
            _mark(HB_LOST_FILE, lost)
            if lost:
                msg = ('host heartbeats arriving on the link are dropped: charge only (V2G-101) '
                       'after HEARTBEAT_TIMEOUT_S {} s without one'.format(st.cfg.get('HEARTBEAT_TIMEOUT_S')))
            else:
                msg = ('host heartbeats on the link are taken again; after a V2G-101 discharge '
                       'also needs a fresh command')
            return {'ok': True, 'do': do, 'msg': msg, 'hb_dropped': self.hb_dropped}
        txn = args.get('txn') if do != 'config' else None   # config's keys are all settings
        if txn is None:
            # unique across resets: the journal outlives them
            self.host_txns += 1
            txn = 'plant-{}-{}'.format(st.boot_count, self.host_txns)
        if do == 'setpoint':
            op, cmd = 'soc_target', {'soc_pct': args['soc_target_pct']}
            if 'mode' in args:
                cmd['mode'] = args['mode']
        elif do == 'limit':
            op, cmd = 'limit', {'charge_a': args['charge_a'], 'discharge_a': args['discharge_a']}
        else:
            op, cmd = 'config_set', dict(args)
        # the station's own command path, as for a command off the link: journal, event log
        ok, code, msg, data = st.on_command({'txn': txn, 'op': op, 'args': cmd}, now_ms)
        reply = {'ok': ok, 'do': do, 'op': op, 'txn': txn, 'code': code}
        reply['msg' if ok else 'error'] = msg
        if data:
            reply['data'] = data
        return reply

    def plant_state(self):
        p = self.plant
        return {'cp': p.cp_state(), 'soc_pm': p.soc_pm(), 'ma': p.ev_ma, 'grid_mv': p.grid_mv,
                'grid_mhz': p.grid_mhz, 'contactor': p.contactor_closed,
                'e_in_wh': self.energy_in_wh(), 'e_out_wh': self.energy_out_wh(),
            'pump': p.pump_running(), 'flow_switch': p.flow_switch(p.now_ms), 'evse_dc': p.evse_temp_dc,
            'led': status_led.NAMES[self.led], 'led_level': self.led_level}
