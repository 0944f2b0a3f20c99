"""Heap per Station.tick in steady state: a charging session with the host present (a
heartbeat every second, echoed; the host's rtt reports; a telemetry sample every second;
the event log's periodic flush with nothing new) allocates nothing, on the board as here.

On MicroPython every measured tick runs under micropython.heap_lock(): any allocation raises
MemoryError at the line that made it. On CPython (where every int above 256 is an
object) the same run checks with tracemalloc that the ticks keep nothing.
"""
import json
import sys

from fwtest import in_dir, scratch, wipe

from app import station as station_mod
from board import hal as sim_hal
from core import link as L
from core.controller import CONTROL_PERIOD_MS

WORK = scratch('station_heap')
MICROPYTHON = sys.implementation.name == 'micropython'


class SteadyHost:
    """A charging station on the simulated board, with BufferPorts (the link allocates
    nothing on the board's side) and a host that sends a heartbeat each second and answers
    each echo with an rtt report. Everything the host does runs between ticks."""

    def __init__(self):
        wipe(WORK)
        with open('v2g_vars.json', 'w') as f:
            f.write(json.dumps({'GRID_ENTER_SERVICE_DELAY_S': 0, 'GRID_RAMP_S': 0}))
        self.ports = sim_hal.BufferPorts()
        self.now = 0
        self.hal = sim_hal.Hal(ports=self.ports, clock=lambda: self.now)
        self.st = station_mod.Station(self.hal, self.now)
        self.hal.plant.apply_event('plug', {}, 0)
        self.hal.plant.apply_event('ev_ready', {}, 0)
        self.host = L.Link(lambda b: None)
        self.seq = 0
        self.got = {'hback': 0, 'tel': 0, 'other': 0}
        self.samples = []

    def host_turn(self):
        """The host's part of one 50 ms step: read what the station sent, answer echoes
        with rtt, send the heartbeat when a second starts."""
        for m in self.host.feed(self.ports.sent()):
            if m['t'] == 'hback':
                self.got['hback'] += 1
                self.ports.send(L.encode_frame(L.rtt((self.now - m['host_ms']) & 0x3FFFFFFF)))
            elif m['t'] == 'tel':
                self.got['tel'] += 1
                self.samples.extend(m['samples'])
            else:
                self.got['other'] += 1
        if self.now % 1000 == 0:
            self.seq += 1
            self.ports.send(L.encode_frame(L.hb(self.seq, self.now)))

    def run(self, ticks, tick):
        for _ in range(ticks):
            self.host_turn()
            tick(self.now)
            self.now += CONTROL_PERIOD_MS

    def plain_tick(self, now):
        self.st.tick(now)

    def locked_tick(self, now):
        import micropython
        micropython.heap_lock()
        try:
            self.st.tick(now)
        finally:
            micropython.heap_unlock()


@in_dir(WORK)
def test_a_steady_charging_step_with_the_host_present_allocates_nothing():
    rig = SteadyHost()
    rig.run(400, rig.plain_tick)     # into the session: the first of everything may allocate
    assert rig.st.ctl.out.mode == 'charging', rig.st.ctl.out.mode
    rig.got = {'hback': 0, 'tel': 0, 'other': 0}
    rig.samples = []
    if MICROPYTHON:
        import gc
        gc.collect()
        before = gc.mem_alloc()
        rig.run(400, rig.locked_tick)
        # the ticks allocated nothing (heap_lock); the host's side between them did
        assert gc.mem_alloc() >= before
    else:
        import tracemalloc
        kept = [0]

        def traced_tick(now):
            before = tracemalloc.get_traced_memory()[0]
            rig.st.tick(now)
            kept[0] += tracemalloc.get_traced_memory()[0] - before
        rig.run(20, rig.plain_tick)
        tracemalloc.start()
        try:
            rig.run(400, traced_tick)
        finally:
            tracemalloc.stop()
        # nothing grows from tick to tick (a few int objects replace others: not a leak)
        assert kept[0] < 4096, kept[0]
    # it was the steady state: every heartbeat echoed, a sample a second, the rtt taken
    assert rig.got['hback'] >= 19 and rig.got['tel'] >= 19 and rig.got['other'] == 0, rig.got
    assert rig.st.ctl.rtt_ms == CONTROL_PERIOD_MS
    assert rig.st.ctl.out.mode == 'charging'
    assert all(s['mode'] == 'charging' and s['errors'] == [] for s in rig.samples)
    assert rig.st.link.stats['tx_errors'] == 0 and rig.st.link.stats['crc_errors'] == 0


@in_dir(WORK)
def test_the_in_place_telemetry_is_the_message_the_general_encoder_makes():
    from core import cbor
    rig = SteadyHost()
    rig.run(100, rig.plain_tick)
    st = rig.st
    st.tel_batch = 4    # the three stay in the batch
    for i in range(3):
        st.sample(1000 + i, st.ctl.out)
    payload = bytes(st.tel.buf[:st.tel.payload()])
    msg = cbor.loads(payload)
    assert msg['t'] == 'tel' and [s['t_ms'] for s in msg['samples']] == [1000, 1001, 1002]
    assert cbor.dumps(msg) == payload    # deterministic: the bytes cbor.dumps would send
    s = msg['samples'][0]
    assert s['mode'] == st.ctl.out.mode and s['cp'] == st.ctl.out.cp_state
    assert s['w'] == (s['mv'] // 100) * s['ma'] // 10000
