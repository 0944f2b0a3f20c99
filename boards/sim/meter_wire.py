"""The meter port's wire model: an RS-485 line and an Eastron meter on it, in simulated time.

The virtual board's pseudo-terminal moves bytes as fast as the kernel copies them; this
model gives each byte its time on the one half-duplex wire instead (10 bits at the
configured baud, 8N1), so the firmware's own meter task (app/meter.py) runs against the
timing a real line has, deterministically, in the scenario driver's clock:

    wire = MeterWire(plant, clock_us, model='SDM630', unit=1)
    MeterTask(wire, cfg, clock_us)      # wire offers the board HAL's rs485 interface

The meter takes a request once its last byte is through, waits the t3.5 silence that
ends the frame and REPLY_US more (its own latency), and answers from what the plant
shows at that moment (voltage on all three phases, the EV's current and power on L1,
frequency, energy). The plant's meter faults apply: 'timeout' (silent), 'crc' (last
byte flipped), 'exception' (code 04).
"""
import struct

from core import modbus

REPLY_US = 5000            # the meter's latency beyond t3.5 (meter_map.METER_REPLY_MS allows 10 ms)
_MASK = 0x3FFFFFFF         # ticks_us wrap

# input register -> what the plant shows, as (quantity, scale to the meter's unit)
_SDM630 = {0x00: 'v', 0x02: 'v', 0x04: 'v', 0x06: 'i', 0x0C: 'p', 0x1E: 'pf', 0x20: 'pf',
           0x22: 'pf', 0x34: 'p', 0x46: 'f', 0x48: 'imp', 0x4A: 'exp'}
_SDM120 = {0x00: 'v', 0x06: 'i', 0x0C: 'p', 0x1E: 'pf', 0x46: 'f', 0x48: 'imp', 0x4A: 'exp'}


class MeterWire:
    def __init__(self, plant, clock_us, model='SDM630', unit=1, reply_us=REPLY_US):
        if model not in ('SDM630', 'SDM120'):
            raise ValueError('meter model must be SDM630 or SDM120, not {!r}'.format(model))
        self.plant = plant
        self.clock_us = clock_us       # simulated time, whole microseconds, not wrapped
        self.regs = _SDM630 if model == 'SDM630' else _SDM120
        self.unit = unit
        self.reply_us = reply_us
        self.baud = None
        self.char_us = 0
        self.t35_us = 0
        self.free_us = 0               # the wire is busy until then
        self.tx_end_us = 0             # our last request's last byte is through then
        self.rx = []                   # (arrival us, byte) on their way to the controller
        self.idle_us = None            # end of the last byte handed to the controller
        self.requests = 0
        self.spans = []                # (request start, last reply byte) us, for the bench

    def open(self, baud):
        m = modbus.ModbusMaster(baud, 100)     # the same character and t3.5 times as the master
        self.baud = baud
        self.char_us = m.char_us
        self.t35_us = m.t35_us

    # -- the board HAL's rs485 interface ------------------------------------------------

    def write(self, buf, n):
        now = self.clock_us()
        start = now if now > self.free_us else self.free_us
        end = start + n * self.char_us
        self.free_us = end
        self.tx_end_us = end
        reply = self.answer(bytes(buf[:n]))
        self.spans.append([start, None])
        if reply:
            t = end + self.t35_us + self.reply_us
            for b in reply:
                t += self.char_us
                self.rx.append((t, b))
            self.free_us = t
            self.spans[-1][1] = t
        if len(self.spans) > 64:
            del self.spans[0]

    def tx_done(self):
        # a UART that sends in the background: done once the last byte is through (the
        # simulated clock cannot move inside write() as a board's blocking write does)
        return self.clock_us() >= self.tx_end_us

    def readinto(self, buf):
        now = self.clock_us()
        n = 0
        q = self.rx
        while n < len(q) and n < len(buf) and q[n][0] <= now:
            buf[n] = q[n][1]
            self.idle_us = q[n][0]
            n += 1
        if n:
            del q[:n]
        return n

    def rx_idle_us(self):
        return None if self.idle_us is None else self.idle_us & _MASK

    # -- the meter ----------------------------------------------------------------------

    def value(self, what):
        p = self.plant
        if what == 'v':
            return p.grid_mv / 1000
        if what == 'i':
            return abs(p.ev_ma) / 1000
        if what == 'p':
            return (p.grid_mv / 1000) * (p.ev_ma / 1000)
        if what == 'pf':
            return 1.0
        if what == 'f':
            return p.grid_mhz / 1000
        if what == 'imp':
            return p.energy_in_mwh() / 1000000
        return p.energy_out_mwh() / 1000000

    def answer(self, req):
        """The meter's reply bytes to a request, b'' for none."""
        if len(req) != 8 or modbus.crc16(req, 6) != req[6] | (req[7] << 8) or req[0] != self.unit:
            return b''      # not a frame for us: a real meter stays silent
        self.requests += 1
        fault = self.plant.meter_fault
        if fault == 'timeout':
            return b''
        addr = (req[2] << 8) | req[3]
        count = (req[4] << 8) | req[5]
        if fault == 'exception' or req[1] != 4:
            out = bytearray([self.unit, req[1] | 0x80, 4 if fault == 'exception' else 1])
        elif count < 1 or count > modbus.MAX_REGS or addr + count > 0x50:
            out = bytearray([self.unit, 0x84, 2])
        else:
            out = bytearray([self.unit, 4, 2 * count])
            r = addr
            while r < addr + count:
                base = r & ~1
                what = self.regs.get(base)
                word = struct.pack('>f', self.value(what) if what else 0.0)
                out += word[0:2] if r == base else word[2:4]
                r += 1
        c = modbus.crc16(out, len(out))
        out.append(c & 0xFF)
        out.append(c >> 8)
        if fault == 'crc':
            out[-1] ^= 0xA5
        return bytes(out)
