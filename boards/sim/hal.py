"""HAL of the simulated board: the plant model stands in for the power stage, the EV, the
meter and the grid, and runs in real time on the virtual board.

Ports: on the virtual board the host's pseudo-terminals reach the firmware through the VM's
`hostio` module (link, plant, rs485, can); elsewhere (tests under CPython) in-memory queues
stand in, and the test plays the host.
"""
import json
import sys
import time

from board.plant import PLANT_EVENTS, Plant

BOARD_NAME = 'sim'
BOARD_LIMITS = {}   # the simulated power stage is rated for the whole config range

# Events that are not the plant's: where they come from on a real station.
HOST_EVENTS = {
    'setpoint': 'a host command: send it over the link (v2g console, the bridge)',
    'limit': 'a host command: send it over the link (v2g console, the bridge)',
    'config': 'a host command: send config_set over the link',
    'heartbeat_loss': 'the host link: stop the host (or its heartbeats) to simulate it',
    'heartbeat_restore': 'the host link: start the host again',
}


class HostioPorts:
    """The virtual board's ports, served by the VM host (host_tools/vm/mpvm.mjs)."""

    def __init__(self, hostio):
        self.io = hostio

    def read(self, name):
        data = self.io.read(name)
        return bytes(data) if data is not None else None

    def write(self, name, data):
        self.io.write(name, data.hex())

    def stop_requested(self):
        return bool(self.io.interrupted())

    def reset(self):
        self.io.reset()


class MemoryPorts:
    """In-memory ports for tests: `inbox[name]` is what the host sent, `outbox[name]` what
    the firmware wrote."""

    def __init__(self):
        self.inbox = {'link': b'', 'plant': b'', 'rs485': b'', 'can': b''}
        self.outbox = {'link': b'', 'plant': b'', 'rs485': b'', 'can': b''}
        self.stop = False

    def read(self, name):
        data = self.inbox[name]
        if not data:
            return None
        self.inbox[name] = b''
        return data

    def write(self, name, data):
        self.outbox[name] += bytes(data)

    def stop_requested(self):
        return self.stop

    def reset(self):
        self.stop = True


def default_ports():
    try:
        import hostio
    except ImportError:
        return MemoryPorts()
    return HostioPorts(hostio)


class Hal:
    BOARD_NAME = BOARD_NAME
    BOARD_LIMITS = BOARD_LIMITS

    def __init__(self, ports=None, plant=None, clock=None):
        self.ports = ports or default_ports()
        self.plant = plant or Plant()
        self.clock = clock
        self.last_ms = None
        self.outputs = None
        self.plant_buf = b''

    # -- time, watchdog, reset ------------------------------------------------------------

    def ticks_ms(self):
        if self.clock is not None:
            return self.clock()
        return time.ticks_ms()

    def feed_watchdog(self):
        pass   # the plant has no watchdog; a crashed loop stops stepping, visible in telemetry

    def reset_cause(self):
        return 'power_on'

    def stop_requested(self):
        return self.ports.stop_requested()

    def log_exception(self, e):
        sys.print_exception(e) if hasattr(sys, 'print_exception') else print(repr(e))

    # -- the plant stands in for the hardware ---------------------------------------------

    def read_inputs(self, inputs, now_ms):
        self.serve_plant_port(now_ms)
        if self.last_ms is not None and self.outputs is not None:
            self.plant.step(self.last_ms, now_ms - self.last_ms, self.outputs)
        self.last_ms = now_ms
        self.plant.fill_inputs(inputs, now_ms)

    def apply(self, outputs, now_ms):
        self.outputs = outputs

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
        return {'meter': 'plant model (no RS-485 traffic)', 'can': 'plant model (no CAN traffic)'}

    # -- host link ------------------------------------------------------------------------

    def link_read(self):
        return self.ports.read('link')

    def link_write(self, data):
        self.ports.write('link', data)

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
                self.ports.write('plant', (json.dumps(self.plant_event(line, now_ms)) + '\n').encode())
        if len(self.plant_buf) > 4096:
            self.plant_buf = b''
            self.ports.write('plant', b'{"ok": false, "error": "line longer than 4096 bytes dropped"}\n')

    def plant_event(self, line, now_ms):
        try:
            ev = json.loads(line)
        except ValueError:
            return {'ok': False, 'error': 'not a JSON object: ' + line[:60].decode()}
        if not isinstance(ev, dict) or not isinstance(ev.get('do'), str):
            return {'ok': False, 'error': 'an event is a JSON object with a "do" key'}
        do = ev.pop('do')
        if do == 'reboot':
            self.ports.reset()
            return {'ok': True, 'do': 'reboot'}
        if do == 'state':
            return {'ok': True, 'do': 'state', 'state': self.plant_state()}
        if do in HOST_EVENTS:
            return {'ok': False, 'do': do, 'error': '{} is {}'.format(do, HOST_EVENTS[do])}
        if do not in PLANT_EVENTS:
            return {'ok': False, 'do': do, 'error': 'unknown event {!r}'.format(do)}
        try:
            self.plant.apply_event(do, ev, now_ms)
        except ValueError as e:
            return {'ok': False, 'do': do, 'error': str(e)}
        return {'ok': True, 'do': do}

    def plant_state(self):
        p = self.plant
        return {'cp': p.cp_state(), 'soc_pm': p.soc_pm(), 'ma': p.ev_ma, 'grid_mv': p.grid_mv,
                'grid_mhz': p.grid_mhz, 'contactor': p.contactor_closed,
                'e_in_wh': self.energy_in_wh(), 'e_out_wh': self.energy_out_wh()}
