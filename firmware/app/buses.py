"""The field buses of the station: the meter task on RS-485 and the CAN task.

A board offers `hal.rs485` and `hal.can` (None when the board has no such bus, or when the
simulated board feeds that data straight from its plant model). The station calls:

    buses.read(now_ms, inputs, cfg)      before the control step: meter and BMS Inputs
    buses.write(now_ms, out, inputs)     after it: the controller's CAN frames
    buses.name_failures(evs, log)        V2G-120 events say why the meter went silent
    buses.stats(now_ms)                  counters for diagnostics
"""
from app.canbus import CanTask
from app.meter import MeterTask


class Buses:
    def __init__(self, hal, cfg):
        self.hal = hal
        rs485 = getattr(hal, 'rs485', None)
        can = getattr(hal, 'can', None)
        self.meter = MeterTask(rs485, cfg, hal.ticks_us) if rs485 is not None else None
        self.can = CanTask(can, cfg) if can is not None else None

    def read(self, now_ms, inputs, cfg):
        if self.meter is not None:
            self.meter.step(now_ms, inputs, cfg)
        if self.can is not None:
            self.can.receive(now_ms, inputs, cfg)

    def write(self, now_ms, out, inputs):
        if self.can is not None:
            self.can.transmit(now_ms, out, inputs)

    def name_failures(self, evs, log):
        """Append the meter's last failure to a raised V2G-120, in the event sent to the host
        and in the event log (the core knows the reading is stale, only the shell knows why)."""
        if self.meter is None:
            return
        for k in range(len(evs)):
            t, code, on, msg = evs[k]
            if code == 'V2G-120' and on:
                why = self.meter.failure()
                if why:
                    # the cause beside the fact, before the consequence: an event's text is bounded
                    i = msg.find(': ')
                    new = (msg[:i] + ' [' + why + ']' + msg[i:]) if i > 0 else (msg + ' [' + why + ']')
                    evs[k] = (t, code, on, new)
                    log.amend(t, code, msg, new)

    def stats(self, now_ms):
        out = {}
        if self.meter is not None:
            out['meter'] = self.meter.stats()
        if self.can is not None:
            out['can'] = self.can.report(now_ms)
        return out
