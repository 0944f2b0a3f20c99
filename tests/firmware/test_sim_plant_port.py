"""The simulated board's plant port under bad input: every line gets one JSON answer and the
control step goes on. Runs on both interpreters: MicroPython's json raises UnicodeError (not
ValueError) for bytes that are not UTF-8, which is what stopped the controller."""
import json

from fwtest import in_dir, scratch, wipe

from app import station as station_mod
from board import hal as sim_hal
from core.controller import CONTROL_PERIOD_MS

WORK = scratch('plant_port')


class Rig:
    def __init__(self):
        wipe(WORK)
        self.ports = sim_hal.MemoryPorts()
        self.now = 0
        self.hal = sim_hal.Hal(ports=self.ports, clock=lambda: self.now)
        self.st = station_mod.Station(self.hal, self.now)

    def run(self, ms):
        end = self.now + ms
        while self.now < end:
            self.st.tick(self.now)      # an exception here is what ended the control loop
            self.now += CONTROL_PERIOD_MS

    def replies(self):
        data = self.ports.outbox['plant']
        self.ports.outbox['plant'] = b''
        return [json.loads(x) for x in data.decode().splitlines()]

    def telemetry_samples(self):
        from core import link as L
        data = self.ports.outbox['link']
        self.ports.outbox['link'] = b''
        return [s for m in L.Link(lambda b: None).feed(data) if m['t'] == 'tel' for s in m['samples']]


# 'x' then 40 two-byte characters: a cut at byte 60 falls inside one
CUT = b'x' + '\u00e9'.encode() * 40 + b' not json'


@in_dir(WORK)
def test_lines_that_are_not_utf8_or_json_are_refused_and_the_step_goes_on():
    rig = Rig()
    rig.ports.inbox['plant'] += b'\xff\xfe not json\n'
    rig.ports.inbox['plant'] += CUT + b'\n'
    rig.ports.inbox['plant'] += b'{"do": "plug", "kind": "\xff"}\n'   # JSON, but not UTF-8
    rig.ports.inbox['plant'] += b'[1, 2]\n'
    rig.run(200)
    r = rig.replies()
    assert len(r) == 4, r
    assert r[0]['ok'] is False and 'not UTF-8' in r[0]['error'] and '\\xff\\xfe' in r[0]['error']
    assert r[1]['ok'] is False and r[1]['error'].startswith('not a JSON object: x\u00e9')
    assert r[2]['ok'] is False and 'not UTF-8' in r[2]['error']
    assert r[3] == {'ok': False, 'error': 'an event is a JSON object with a "do" key'}
    rig.ports.outbox['link'] = b''
    rig.ports.inbox['plant'] += b'{"do": "plug"}\n'
    rig.run(1200)
    assert rig.replies() == [{'ok': True, 'do': 'plug'}]
    tel = rig.telemetry_samples()
    assert tel and tel[-1]['cp'] == 'B'       # the controller is still stepping and sees the EV


@in_dir(WORK)
def test_unknown_keys_and_a_failing_event_are_refused_not_raised():
    rig = Rig()
    rig.ports.inbox['plant'] += b'{"do": "plug", "volts": 1}\n'
    rig.ports.inbox['plant'] += b'{"do": "state", "x": 1}\n'
    rig.run(100)
    r = rig.replies()
    assert r[0]['ok'] is False and r[0]['do'] == 'plug' and 'volts' in r[0]['error']
    assert r[1] == {'ok': False, 'do': 'state', 'error': "unknown key 'x' (allowed: none)"}

    def broken(do, args, now_ms=None):
        raise KeyError('cp')
    rig.hal.plant.apply_event = broken          # a bug in the plant model's handling
    rig.ports.inbox['plant'] += b'{"do": "plug"}\n'
    rig.run(100)
    r = rig.replies()
    assert r[0]['ok'] is False and 'KeyError' in r[0]['error'], r
    rig.run(100)                                # still stepping
