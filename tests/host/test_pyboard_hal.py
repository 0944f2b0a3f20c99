"""The pyboard HAL (boards/pyboard/hal.py) against fake `machine` and `pyb` modules.

The HAL runs only on the board, so these tests install fakes with just what it uses
(Pin, ADC, Timer/PWM channel, UART, CAN, WDT, USB_VCP, reset causes), load pins.py and
hal.py from source into fresh namespaces, and drive it, including through the station's
meter and CAN tasks (app/buses.py) with a fake SDM630 on the RS-485 UART and BMS frames
on the CAN bus.

Only firmware/, boards/sim/ and tests/firmware/ are laid out in the firmware test VM, so
this module lives with the host tests: pytest runs each test under CPython, and
test_same_tests_in_micropython_vm runs them all again in the real MicroPython VM with
boards/pyboard mounted beside the firmware.
"""
import struct
import sys

try:
    import pytest
except ImportError:      # inside the MicroPython VM
    pytest = None

from core import can_msgs as M
from core import config as config_mod
from core import link as L
from core.controller import Inputs, Outputs

PYBOARD_DIR = None       # the VM runner sets it; under CPython it is found from __file__

W = None                 # the fake board of the running test


def _dir():
    if PYBOARD_DIR:
        return PYBOARD_DIR
    import os
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'boards', 'pyboard')


def raw(mv):
    """ADC counts for a voltage in mV (12-bit, 3.3 V)."""
    return (mv * 4095 + 3299) // 3300


class World:
    def __init__(self):
        self.events = []
        self.pins = {}
        self.adc = {'X19': raw(3000), 'X20': raw(3300), 'X11': raw(1835)}
        self.cp = (raw(3000), raw(300))
        self.uarts = {}
        self.can = None
        self.usb = False
        self.fail = ()           # fake classes whose constructor raises
        self.reset_cause = 1
        self.now_us = 0
        self.irqs = {}
        self.leds = {}

    def ev(self, *e):
        self.events.append(e)


class FakePin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    IRQ_FALLING = 2

    def __init__(self, name, mode=None, pull=None, value=None):
        self.name = name
        self.v = 1 if pull == FakePin.PULL_UP else 0
        if value is not None:
            self.v = value
        W.pins[name] = self
        W.ev('pin', name, mode, value)

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        W.ev('set', self.name, v)

    def irq(self, handler=None, trigger=0, hard=False):
        W.irqs[self.name] = (handler, trigger, hard)


class FakeLED:
    def __init__(self, n):
        self.n = n
        W.leds[n] = False

    def on(self):
        W.leds[self.n] = True

    def off(self):
        W.leds[self.n] = False


class FakeChannel:
    def __init__(self, pulse_width):
        self.pw = pulse_width
        W.ev('pwm', pulse_width)

    def pulse_width(self, pw):
        self.pw = pw
        W.ev('pwm', pw)


class FakeTimer:
    PWM = 0

    def __init__(self, n, freq=None):
        self.n = n
        W.ev('timer', n)
        self.ch = None

    def period(self):
        return 83999

    def channel(self, ch, mode, pin=None, pulse_width=0):
        self.ch = FakeChannel(pulse_width)
        W.channel = self.ch
        return self.ch


class FakeADC:
    def __init__(self, name):
        if 'ADC' in W.fail:
            raise OSError(19)
        self.name = name
        W.ev('adc', name)

    def read(self):
        return W.adc[self.name]

    def read_timed(self, buf, timer):
        for i in range(len(buf)):
            buf[i] = W.cp[0] if i < len(buf) // 2 else W.cp[1]


class FakeUARTNoIdle:
    """A UART of a MicroPython without UART.IRQ_RXIDLE (before 1.24)."""

    def __init__(self, uid, baud=None, **kw):
        self.uid = uid
        self.baud = baud
        self.rx = bytearray()
        self.sent = []
        self.sent_us = []
        self.de_at_write = []
        self.answer = None        # function(request bytes) -> reply bytes
        self.inits = 0
        self.cap = kw.get('rxbuf')  # the ring buffer: bytes past it are lost, as on STM32
        self.dropped = 0
        self.irq_args = None
        # timed: a reply arrives byte by byte after the request (deliver()), with the
        # receive-idle interrupt one character after its last byte and, as on the STM32F4,
        # one after its first byte as well; untimed: at once, without interrupts
        self.timed = False
        self.coming = []          # (end of byte us, byte or None: the idle interrupt)
        W.uarts[uid] = self
        W.ev('uart', uid)

    def init(self, baud, **kw):
        if baud not in (2400, 4800, 9600, 19200, 38400, 115200):
            raise ValueError('baud')
        self.baud = baud
        self.inits += 1

    def char_us(self):
        return 10000000 // self.baud

    def write(self, data, n=None):
        # a MicroPython stream's write(buf, max_len): the first n bytes
        b = bytes(data) if n is None else bytes(data[:n])
        self.sent.append(b)
        self.sent_us.append(W.now_us)
        de = W.pins.get('Y3')
        self.de_at_write.append(de.v if de is not None else None)
        if self.answer is not None:
            reply = self.answer(b)
            if not self.timed:
                self.rx += reply
            elif reply:
                # after the request, the t3.5 silence (4 characters) and 5 ms of the meter's own
                self.schedule(reply, W.now_us + (len(b) + 4) * self.char_us() + 5000)
        return len(b)

    def schedule(self, data, start_us):
        """data on the wire from start_us, one character time per byte."""
        c = self.char_us()
        t = start_us
        for i in range(len(data)):
            t += c
            self.coming.append((t, data[i]))
            if i == 0:
                self.coming.append((t, None))     # the STM32F4's interrupt after a first byte
        self.coming.append((t + c, None))         # the idle flag: one character of quiet line

    def deliver(self):
        """Bytes and interrupts due by W.now_us, in their order."""
        now = W.now_us
        while self.coming and self.coming[0][0] <= now:
            t, b = self.coming.pop(0)
            if b is not None:
                self.arrive(bytes([b]))
            elif self.irq_args is not None:
                W.now_us = t              # the handler reads ticks_us() when it runs
                self.irq_args[0](self)
                W.now_us = now

    def arrive(self, data):
        """Bytes off the wire into the ring buffer; what does not fit is lost (overrun)."""
        room = len(data) if self.cap is None else max(0, self.cap - len(self.rx))
        self.rx += data[:room]
        self.dropped += len(data) - min(room, len(data))

    def any(self):
        return len(self.rx)

    def readinto(self, buf, n=None):
        if n is None:
            n = len(buf)
        n = min(n, len(self.rx), len(buf))
        if n == 0:
            return None
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n


class FakeUART(FakeUARTNoIdle):
    IRQ_RXIDLE = 0x1000
    irq_fails = False

    def irq(self, handler=None, trigger=0, hard=False):
        if FakeUART.irq_fails:
            raise ValueError('trigger not supported')
        self.irq_args = (handler, trigger, hard)


class FakeCAN:
    NORMAL = 1
    MASK16 = 0
    LIST16 = 1
    BUS_OFF = 4

    def __init__(self, bus):
        self.bus = bus
        self.queue = []           # (id, ext, rtr, data) waiting in FIFO 0
        self.out = []             # (id, bytes) sent
        self.full = False
        self.inits = []
        self.filters = []
        self.st = 1
        W.can = self
        W.ev('can', bus)

    def init(self, mode, extframe=False, baudrate=0, sample_point=75, auto_restart=False):
        if baudrate not in (125000, 250000, 500000, 1000000):
            raise ValueError('CAN bitrate cannot be met')
        self.inits.append((mode, baudrate, auto_restart))

    def setfilter(self, bank, mode, fifo, params):
        self.filters.append((bank, mode, fifo, tuple(params)))

    def any(self, fifo):
        return len(self.queue) > 0

    def recv(self, fifo, lst, timeout=5000):
        cid, ext, rtr, data = self.queue.pop(0)
        mv = lst[4]
        mv[:len(data)] = data
        lst[0] = cid
        lst[1] = ext
        lst[2] = rtr
        lst[3] = 0
        lst[4] = mv[:len(data)]   # pyb.CAN resizes the memoryview to the DLC in place
        return lst

    def send(self, data, cid, timeout=5000):
        if self.full:
            raise OSError(116)
        self.out.append((cid, bytes(data)))

    def state(self):
        return self.st


class FakeWDT:
    def __init__(self, timeout=0):
        W.wdt = self
        self.feeds = 0
        W.ev('wdt', timeout)

    def feed(self):
        self.feeds += 1


class FakeVCP:
    def isconnected(self):
        return W.usb


def _machine_reset():
    W.ev('machine.reset')


def _reset_cause():
    return W.reset_cause


class FakeMachine:
    Pin = FakePin
    UART = FakeUART
    WDT = FakeWDT
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5
    reset = staticmethod(_machine_reset)
    reset_cause = staticmethod(_reset_cause)


class FakePyb:
    Pin = FakePin
    LED = FakeLED
    Timer = FakeTimer
    ADC = FakeADC
    CAN = FakeCAN
    USB_VCP = FakeVCP


class FakeTime:
    @staticmethod
    def ticks_us():
        return W.now_us & 0x3FFFFFFF

    @staticmethod
    def ticks_ms():
        return (W.now_us // 1000) & 0x3FFFFFFF


class Namespace:
    def __init__(self, d):
        for k in d:
            setattr(self, k, d[k])


def _exec(name, extra=None):
    path = _dir() + '/' + name
    with open(path) as f:
        src = f.read()
    d = {'__name__': 'pyboard_' + name[:-3]}
    exec(compile(src, path, 'exec'), d)
    return d


def load_hal(uart=FakeUART):
    """A fresh fake board and the pyboard HAL module loaded against it (a namespace)."""
    global W
    W = World()
    saved = {}
    for k in ('machine', 'pyb', 'board'):
        saved[k] = sys.modules.get(k)
    FakeMachine.UART = uart
    sys.modules['machine'] = FakeMachine
    sys.modules['pyb'] = FakePyb
    try:
        pins = Namespace(_exec('pins.py'))
        sys.modules['board'] = Namespace({'pins': pins})
        d = _exec('hal.py')
    finally:
        for k in saved:
            if saved[k] is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = saved[k]
    d['time'] = FakeTime      # the HAL's clock is the test's
    return Namespace(d)


def new_hal():
    mod = load_hal()
    return mod, mod.Hal()


def settings(**kw):
    return config_mod.validate(kw, board={'MAX_CHARGE_AMPS': (6, 32), 'MAX_DISCHARGE_AMPS': (0, 32)})


# -- start-up and the safe state ---------------------------------------------------------

def test_outputs_safe_before_anything_else():
    mod, hal = new_hal()
    assert W.events[0] == ('pin', 'Y9', FakePin.OUT, 0)           # contactor open first
    first_pwm = [i for i in range(len(W.events)) if W.events[i][0] == 'pwm'][0]
    first_input = [i for i in range(len(W.events)) if W.events[i][0] in ('adc', 'uart', 'can')][0]
    assert W.events[first_pwm] == ('pwm', 0)                      # pilot steady -12 V (F)
    assert first_pwm < first_input


def test_failing_peripheral_leaves_outputs_safe():
    mod = load_hal()
    W.fail = ('ADC',)
    try:
        mod.Hal()
        raised = False
    except OSError:
        raised = True
    assert raised
    assert W.pins['Y9'].v == 0
    assert W.channel.pw == 0


def test_apply_then_safe_state_and_reset():
    mod, hal = new_hal()
    out = Outputs()
    out.contactor = True
    out.pwm_pm = 266
    hal.apply(out, 0)
    assert W.pins['Y9'].v == 1
    assert W.channel.pw == 84000 * 266 // 1000
    W.events = []
    hal.reset()
    assert ('set', 'Y9', 0) in W.events and ('pwm', 0) in W.events
    assert W.events[-1] == ('machine.reset',)                    # outputs safe, then reset
    assert W.pins['Y9'].v == 0 and W.channel.pw == 0


def test_pump_output_and_tachometer_count():
    mod, hal = new_hal()
    assert W.pins['Y11'].v == 0                                   # pump off from the start
    handler, trigger, hard = W.irqs['Y12']
    assert trigger == FakePin.IRQ_FALLING and hard
    out = Outputs()
    out.cooling = True
    hal.apply(out, 0)
    assert W.pins['Y11'].v == 1
    inp = Inputs()
    hal.read_inputs(inp, 0)
    first = inp.cooling_count
    for _ in range(7):
        handler(W.pins['Y12'])                                    # tachometer pulses
    hal.read_inputs(inp, 50)
    assert inp.cooling_count == first + 7
    hal.tach_count[0] = 0x3FFFFFFF
    handler(W.pins['Y12'])
    hal.read_inputs(inp, 100)
    assert inp.cooling_count == 0                                 # wraps like the ticks
    hal.safe_state()
    assert W.pins['Y11'].v == 0


def _lit():
    return tuple(n for n in sorted(W.leds) if W.leds[n])


def test_status_led_patterns_on_the_board_leds():
    mod, hal = new_hal()
    out = Outputs()
    out.mode = 'idle'
    hal.apply(out, 0)
    assert _lit() == (2,)                                         # solid green
    out.mode = 'fault'
    hal.apply(out, 0)
    assert _lit() == (1,)                                         # red ...
    hal.apply(out, 200)
    assert _lit() == ()                                           # ... blinking
    out.mode = 'discharging'
    hal.apply(out, 1000)
    assert _lit() == (4,)                                         # blue
    out.mode = 'charge_only'
    hal.apply(out, 0)
    assert _lit() == (3,)                                         # amber
    from core import errors as E
    out.errors = E.E101
    hal.apply(out, 300)
    assert _lit() == ()                                           # amber flashes: link lost
    hal.apply(out, 0)
    assert _lit() == (3,)

    class Busy:
        class update:
            busy = True
    hal.attach_station(Busy)
    out.errors = 0
    hal.apply(out, 0)
    assert _lit() == (2, 4)                                       # cyan: update in progress
    hal.safe_state()
    assert _lit() == (1,)


def test_a_reset_cause_the_table_does_not_know_keeps_its_number():
    mod = load_hal()
    W.reset_cause = 9
    assert mod.Hal().reset_cause() == 'unknown (9)'


def test_watchdog_only_without_usb_and_reset_cause():
    mod = load_hal()
    W.usb = True
    W.reset_cause = 3
    hal = mod.Hal()
    assert hal.wdt is None
    assert hal.reset_cause() == 'watchdog'
    hal.feed_watchdog()
    mod, hal = new_hal()
    hal.feed_watchdog()
    assert W.wdt.feeds == 1


def test_trial_watchdog_from_boot_is_fed_even_with_usb():
    # boot.py starts the watchdog for a slot on trial and leaves it in __main__; the HAL must
    # keep feeding it with a laptop attached, or every trial would end in a watchdog reset
    import __main__
    mod = load_hal()
    W.usb = True
    __main__.TRIAL_WDT = FakeWDT(8000)
    try:
        hal = mod.Hal()
    finally:
        del __main__.TRIAL_WDT
    assert hal.wdt is not None and W.wdt is hal.wdt
    assert [e for e in W.events if e[0] == 'wdt'] == [('wdt', 8000), ('wdt', 2000)]
    hal.feed_watchdog()
    assert W.wdt.feeds == 1


# -- EVSE temperature sensor ---------------------------------------------------------------

def test_ntc_table():
    mod = load_hal()
    assert mod.ntc_dc(1835) == 200
    assert mod.ntc_dc(2000) > 100 and mod.ntc_dc(2000) < 200
    assert mod.ntc_fault(3300) == 'open'
    assert mod.ntc_fault(10) == 'short'
    assert mod.ntc_fault(1835) is None


def test_open_ntc_reads_at_the_limit_and_is_counted():
    mod, hal = new_hal()
    inp = Inputs()
    hal.read_inputs(inp, 0)
    assert 195 <= inp.evse_temp_dc <= 205
    assert 'evse_ntc' not in hal.bus_stats()
    W.adc['X11'] = raw(3300)               # broken wire: the pull-up alone
    hal.read_inputs(inp, 50)
    hal.read_inputs(inp, 100)
    assert 195 <= inp.evse_temp_dc <= 205  # one or two spikes are not a fault yet
    hal.read_inputs(inp, 150)
    assert inp.evse_temp_dc == mod.EVSE_SENSOR_FAULT_DC
    assert hal.bus_stats()['evse_ntc'] == {'faults': 1, 'state': 'open'}
    for t in range(10):
        hal.read_inputs(inp, 200 + t)
    assert hal.bus_stats()['evse_ntc']['faults'] == 1           # one fault, not one per step
    W.adc['X11'] = raw(1835)
    hal.read_inputs(inp, 300)
    assert 195 <= inp.evse_temp_dc <= 205
    assert hal.bus_stats()['evse_ntc'] == {'faults': 1, 'state': 'ok'}
    W.adc['X11'] = raw(20)                 # shorted sense line
    for t in range(3):
        hal.read_inputs(inp, 400 + t)
    assert inp.evse_temp_dc == mod.EVSE_SENSOR_FAULT_DC
    assert hal.bus_stats()['evse_ntc'] == {'faults': 2, 'state': 'short'}


def test_sensor_fault_temperature_trips_every_allowed_limit():
    mod = load_hal()
    hi = config_mod.SCHEMA['EVSE_TEMP_LIMIT_C'][2]
    cfg = settings(EVSE_TEMP_LIMIT_C=hi, EVSE_TEMP_DERATE_C=hi - 10)
    assert mod.EVSE_SENSOR_FAULT_DC >= cfg.evse_limit_dc
    assert mod.EVSE_SENSOR_FAULT_DC >= settings().evse_limit_dc


# -- RS-485 port ---------------------------------------------------------------------------

def test_rs485_port():
    mod, hal = new_hal()
    port = hal.rs485
    port.open(19200)
    u = W.uarts[6]
    assert u.baud == 19200
    buf = bytearray(b'\x01\x04\x00\x00\x00\x02\x71\xcb????')
    port.write(buf, 8)
    assert u.sent == [bytes(buf[:8])]
    assert u.de_at_write == [1] and W.pins['Y3'].v == 0          # DE up for the write only
    assert port.tx_done()
    v = port._tx_views[8]
    port.write(buf, 8)
    assert port._tx_views[8] is v                                # no new view per request
    rx = bytearray(16)
    assert port.readinto(rx) == 0
    u.rx += b'\x01\x02\x03'
    assert port.readinto(rx) == 3 and rx[:3] == b'\x01\x02\x03'
    u.rx += bytes(range(20))
    assert port.readinto(rx) == 16 and port.readinto(rx) == 4


def test_rs485_open_failure_is_reported_not_raised():
    mod, hal = new_hal()
    hal.rs485.open(12345)
    hal.rs485.write(bytearray(8), 8)
    assert hal.rs485.readinto(bytearray(8)) == 0
    assert 'baud 12345' in hal.bus_stats()['rs485_port']['open_error']


def test_rs485_rx_idle_from_the_receive_idle_interrupt():
    mod, hal = new_hal()
    port = hal.rs485
    port.open(9600)
    u = W.uarts[6]
    handler, trigger, hard = u.irq_args
    assert trigger == FakeUART.IRQ_RXIDLE and hard is True       # a hard handler: stamped on time
    c = u.char_us()
    rx = bytearray(32)
    assert port.rx_idle_us() is None                             # nothing heard yet
    start = 1000000
    u.schedule(bytes(range(1, 10)), start)                       # 9 bytes, the last ends at start + 9c
    W.now_us = start + 3 * c + 10
    u.deliver()                                                  # 3 bytes in, the line still busy
    assert port.readinto(rx) == 3 and port.rx_idle_us() is None
    W.now_us = start + 10 * c + 10
    u.deliver()                                                  # the rest, then the idle interrupt
    assert port.readinto(rx) == 6 and rx[:6] == bytes(range(4, 10))
    assert port.rx_idle_us() == start + 10 * c                   # a character after the last stop bit
    assert port.readinto(rx) == 0 and port.rx_idle_us() == start + 10 * c
    # bytes after it: until an idle interrupt follows them, the old time is not theirs
    later = start + 100000
    u.schedule(b'\x01\x02\x03', later)
    W.now_us = later + 2 * c
    u.deliver()
    assert port.readinto(rx) == 2 and port.rx_idle_us() is None
    W.now_us = later + 4 * c
    u.deliver()
    assert port.readinto(rx) == 1 and port.rx_idle_us() == later + 4 * c
    # a reopened port (new baud) has heard nothing at its new speed
    port.open(19200)
    assert port.rx_idle_us() is None and u.irq_args[1] == FakeUART.IRQ_RXIDLE


def test_rs485_without_receive_idle_interrupt_offers_no_rx_idle():
    mod = load_hal(uart=FakeUARTNoIdle)
    hal = mod.Hal()
    assert getattr(hal.rs485, 'rx_idle_us', None) is None       # the meter task counts from its reads
    hal.rs485.open(9600)
    assert W.uarts[6].baud == 9600 and 'rs485_port' not in hal.bus_stats()
    FakeUART.irq_fails = True                                    # a port that refuses the trigger
    try:
        mod, hal = new_hal()
        hal.rs485.open(9600)
    finally:
        FakeUART.irq_fails = False
    u = W.uarts[6]
    u.rx += b'\x01\x02'
    assert hal.rs485.readinto(bytearray(8)) == 2 and hal.rs485.rx_idle_us() is None
    assert 'receive-idle interrupt' in hal.bus_stats()['rs485_port']['idle_error']


# -- CAN port --------------------------------------------------------------------------------

def test_can_port():
    mod, hal = new_hal()
    port = hal.can
    port.open(250000)
    c = W.can
    assert c.bus == 2
    assert c.inits == [(FakeCAN.NORMAL, 250000, True)]
    assert c.filters == [(0, FakeCAN.MASK16, 0, (0, 0, 0, 0))]  # every id; the codec filters
    buf = bytearray(8)
    assert port.recv(buf) == -1
    c.queue.append((0x601, False, False, b'\x11\x22\x33\x44\x55'))
    c.queue.append((0x1ABCDE, True, False, b'\x01\x02\x03\x04\x05\x06\x07\x08'))
    c.queue.append((0x602, False, True, b''))                    # remote request: skipped
    c.queue.append((0x602, False, False, b'\x09'))
    assert port.recv(buf) == 5                                   # the real DLC
    assert port.rx_id == 0x601 and not port.rx_ext
    assert buf == bytearray(b'\x11\x22\x33\x44\x55\x00\x00\x00')
    assert port.recv(buf) == 8 and port.rx_ext and port.rx_id == 0x1ABCDE
    assert port.recv(buf) == 1 and port.rx_id == 0x602 and buf[0] == 9 and buf[1] == 0
    assert port.recv(buf) == -1
    assert hal.bus_stats()['can_port'] == {'remote_frames': 1}
    tx = bytearray(b'ABCDEFGH')
    assert port.send(0x600, tx, 8) is True
    assert port.send(0x611, tx, 3) is True
    assert c.out == [(0x600, b'ABCDEFGH'), (0x611, b'ABC')]
    c.full = True
    assert port.send(0x600, tx, 8) is False
    c.st = FakeCAN.BUS_OFF
    assert hal.bus_stats()['can_port']['state'] == 'bus off'


def test_can_open_failure_is_reported_not_raised():
    mod, hal = new_hal()
    hal.can.open(33333)
    assert hal.can.recv(bytearray(8)) == -1
    assert hal.can.send(0x600, bytearray(8), 8) is False
    assert 'bitrate 33333' in hal.bus_stats()['can_port']['open_error']
    hal.can.open(500000)
    assert 'can_port' not in hal.bus_stats()


# -- the station's meter and CAN tasks on this board ---------------------------------------

def crc16(b):
    crc = 0xFFFF
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class Sdm630:
    """Answers function 0x04 reads for unit 1 from float registers."""

    def __init__(self):
        self.regs = [0] * 0x50

    def put(self, reg, x):
        b = struct.pack('>f', x)
        self.regs[reg] = (b[0] << 8) | b[1]
        self.regs[reg + 1] = (b[2] << 8) | b[3]

    def answer(self, req):
        if len(req) != 8 or req[0] != 1 or req[1] != 4:
            return b''
        addr = (req[2] << 8) | req[3]
        count = (req[4] << 8) | req[5]
        body = bytearray([1, 4, 2 * count])
        for i in range(count):
            r = self.regs[addr + i]
            body.append(r >> 8)
            body.append(r & 0xFF)
        c = crc16(body)
        return bytes(body) + bytes([c & 0xFF, c >> 8])


def bms_frames(soc_pm, charge_ma, fault_bits, counter):
    s = M.BmsStatus()
    s.soc_pm = soc_pm
    s.counter = counter
    s.pack_voltage_mv = 400000
    s.temp_max_dc = 300
    d1 = bytearray(8)
    M.pack_bms_status(s, d1)
    lim = M.BmsLimits()
    lim.max_charge_current_ma = charge_ma
    lim.max_discharge_current_ma = charge_ma
    lim.fault_bits = fault_bits
    lim.counter = counter
    d2 = bytearray(8)
    M.pack_bms_limits(lim, d2)
    return (M.BMS_STATUS_ID, False, False, bytes(d1)), (M.BMS_LIMITS_ID, False, False, bytes(d2))


def test_meter_and_bms_through_the_station_tasks():
    from app.buses import Buses
    mod, hal = new_hal()
    meter = Sdm630()
    for r in (0, 2, 4):
        meter.put(r, 230.0)
    meter.put(6, 10.0)
    meter.put(8, 16.0)            # L2 carries the most: the limits are about it
    meter.put(0x0A, 12.0)
    meter.put(0x0C, -2300.0)      # phase powers < 0: the vehicle feeds the grid (the
    meter.put(0x0E, -3680.0)      # firmware sums them; the meter's own total is not read)
    meter.put(0x10, -3020.0)
    meter.put(0x34, -9000.0)
    meter.put(0x46, 50.0)
    meter.put(0x48, 1.5)          # import kWh
    meter.put(0x4A, 0.25)         # export kWh
    cfg = settings(METER_POLL_MS=200, CAN_BITRATE=500000)
    buses = Buses(hal, cfg)
    W.uarts[6].answer = meter.answer
    assert W.uarts[6].baud == 38400 and W.can.inits[0][1] == 500000     # METER_BAUD's default
    inp = Inputs()
    out = Outputs()
    counter = 0
    for step in range(40):
        now = step * 50
        W.now_us = now * 1000
        if step % 2 == 0:
            counter = (counter + 1) & 15
            W.can.queue.extend(bms_frames(800, 32000, 0, counter))
        hal.read_inputs(inp, now)
        buses.read(now, inp, cfg)
        buses.write(now, out, inp)
    assert all(de == 1 for de in W.uarts[6].de_at_write) and W.pins['Y3'].v == 0
    assert inp.meter_ok
    assert inp.meter_ma == -16000                  # max phase current, signed by total power
    assert inp.meter_mv == 230000 and inp.meter_mhz == 50000
    assert buses.meter.import_wh() == 1500 and buses.meter.export_wh() == 250
    assert hal.energy_in_wh() == 0 and hal.energy_out_wh() == 0
    assert inp.bms_soc_pm == 800 and inp.bms_max_charge_ma == 32000
    assert inp.bms_age_ms <= 100
    ids = [cid for cid, data in W.can.out]
    assert M.VCU_POWER_REQUEST_ID in ids and M.EVSE_STATUS_ID in ids and M.EVSE_LIMITS_ID in ids
    assert all(len(data) == 8 for cid, data in W.can.out)
    # a BMS fault: no current either way
    now += 50
    counter = (counter + 1) & 15
    W.can.queue.extend(bms_frames(800, 32000, 4, counter))
    buses.read(now, inp, cfg)
    assert inp.bms_max_charge_ma == 0 and inp.bms_max_discharge_ma == 0
    # status frames alone keep arriving, the limits stop: the BMS data is stale
    for _k in range(20):
        now += 50
        counter = (counter + 1) & 15
        W.can.queue.append(bms_frames(800, 32000, 0, counter)[0])
        buses.read(now, inp, cfg)
    assert inp.bms_age_ms >= 1000
    stats = hal.bus_stats()
    stats.update(buses.stats(now))
    assert stats['meter']['snap_ok'] >= 1 and stats['can']['rx_ok'] >= 20


def test_meter_reads_one_block_per_step_on_the_receive_idle_time():
    """On a line with real timing (9600 baud: a 6-register read holds it 43 ms), the reply's
    end from the idle interrupt lets the next request leave in the step that read the reply:
    V, f and the snapshot's blocks one per 50 ms step, as core/meter_map.py's cycle and the
    grid protection's sense time assume."""
    from app.meter import MeterTask
    from core import meter_map
    mod, hal = new_hal()
    meter = Sdm630()
    for r in (0, 2, 4):
        meter.put(r, 231.0)
    meter.put(6, 12.0)
    meter.put(0x46, 49.9)
    cfg = settings(METER_POLL_MS=500, METER_BAUD=9600)
    task = MeterTask(hal.rs485, cfg, hal.ticks_us)
    u = W.uarts[6]
    u.answer = meter.answer
    u.timed = True
    assert task.reader.blocks == meter_map.BLOCKS_SDM630          # the short blocks: one step each
    assert task.next_io_ms(0) is None                             # bytes move with the steps only
    inp = Inputs()
    steps = 40
    for step in range(steps):
        W.now_us = 1000000 + step * 50000
        u.deliver()
        task.step(W.now_us // 1000, inp, cfg)
    gaps = [b - a for a, b in zip(u.sent_us, u.sent_us[1:])]
    assert gaps and max(gaps) == 50000, gaps                      # a request every step
    assert len(u.sent) >= steps - 1
    assert task.master.stats.ok >= steps - 2 and task.master.stats.timeouts == 0
    assert task.reader.snapshots_ok >= 3
    assert inp.meter_ok and inp.meter_mv == 231000 and inp.meter_mhz == 49900 and inp.meter_ma == 12000


def test_meter_pumped_between_steps_at_38400_on_the_receive_idle_time():
    """At the default 38400 baud the shell's loop also wakes at the meter task's I/O moments
    between control steps (app/run.py): with the reply's end from the idle interrupt, the
    next request leaves as soon as the line allows, two or three per 50 ms step."""
    from app.meter import MeterTask
    mod, hal = new_hal()
    meter = Sdm630()
    for r in (0, 2, 4):
        meter.put(r, 231.0)
    meter.put(6, 12.0)
    meter.put(0x46, 49.9)
    cfg = settings(METER_POLL_MS=500)
    assert cfg.meter_baud == 38400
    task = MeterTask(hal.rs485, cfg, hal.ticks_us)
    u = W.uarts[6]
    u.answer = meter.answer
    u.timed = True
    inp = Inputs()
    now = next_step = 1000
    looks = 0
    while now < 3000:
        W.now_us = now * 1000
        u.deliver()
        if now == next_step:
            task.step(now, inp, cfg)
            next_step += 50
        else:
            task.io(now)
            looks += 1
        io = task.next_io_ms(now)
        assert io is None or io > now
        now = io if io is not None and io < next_step else next_step
    gaps = [b - a for a, b in zip(u.sent_us, u.sent_us[1:])]
    assert max(gaps) <= 20000, gaps                               # a request at least every 20 ms
    assert len(u.sent) >= 2000 // 20 - 1 and looks >= 2000 // 50
    v_at = [t for t, req in zip(u.sent_us, u.sent) if req[2:4] == b'\x00\x00']
    assert max(b - a for a, b in zip(v_at, v_at[1:])) <= 60000    # V at least every 60 ms
    assert task.master.stats.timeouts == 0 and task.master.stats.ok >= len(u.sent) - 1
    assert task.reader.snapshots_ok >= 3
    assert inp.meter_ok and inp.meter_mv == 231000 and inp.meter_mhz == 49900 and inp.meter_ma == 12000


# -- host link ---------------------------------------------------------------------------------

def test_link_read():
    mod, hal = new_hal()
    u = W.uarts[2]
    assert hal.link_read() is None
    wire = []
    L.Link(wire.append).send(L.hello('1.0', 'pyboard', 'abc', 'power_on', 1))
    sent = b''.join(bytes(w) for w in wire)
    u.rx += sent
    data = hal.link_read()
    assert len(data) == len(sent) and bytes(data[:len(sent)]) == sent
    msgs = L.Link(lambda b: None).feed(data)
    assert len(msgs) == 1 and msgs[0]['t'] == 'hello'
    assert hal.link_read() is None
    u.rx += bytes(5000)
    assert len(hal.link_read()) == 5000 and hal.link_read() is None   # drained in one step
    u.rx += bytes(mod.LINK_BUF + 100)
    assert len(hal.link_read()) == mod.LINK_BUF and len(hal.link_read()) == 100


def _max_chunk_frame(off):
    """The largest fota_chunk command frame the link carries, as sent on the wire."""
    n = 1000
    while True:
        try:
            return L.encode_frame(L.cmd('t%d' % off, 'fota_chunk', {'off': off, 'data': bytes([off & 0xFF]) * n}))
        except ValueError:
            n -= 8


def test_link_buffer_holds_a_window_of_the_largest_frames():
    mod, hal = new_hal()
    frame = _max_chunk_frame(123456)
    assert len(frame) <= mod.LINK_FRAME_WIRE
    assert W.uarts[2].cap == mod.LINK_BUF >= mod.LINK_WINDOW_FRAMES * mod.LINK_FRAME_WIRE
    assert mod.LINK_BUF >= 5 * 1024
    # the station reads the link into its own buffer (link_readinto): the HAL keeps no
    # buffer of the ring's size beside it (6 kB of the pyboard's heap)
    assert not [k for k, v in hal.__dict__.items() if isinstance(v, bytearray) and len(v) >= 1024]


def test_link_keeps_up_with_a_window_at_the_line_rate():
    # 115200 baud = 11520 bytes/s: 576 bytes arrive per 50 ms control step. The host sends
    # windows of four of the largest chunk frames back to back; some steps run late (a flash
    # write holds the loop for three periods). Every frame must come through, no byte lost.
    mod, hal = new_hal()
    u = W.uarts[2]
    wire = b''
    for w in range(6):
        wire += b''.join(_max_chunk_frame(1000 * (4 * w + i)) for i in range(4))
    link = L.Link(lambda b: None)
    got = []
    pos = 0
    step = 0
    while pos < len(wire) or u.any():
        u.arrive(wire[pos:pos + 576])
        pos += 576
        step += 1
        if step % 10 in (7, 8, 9):
            continue                  # the loop is late: nothing is read this period
        data = hal.link_read()
        if data:
            got += link.feed(data)
    assert u.dropped == 0
    assert [m['args']['off'] for m in got] == [1000 * i for i in range(24)]


# -- the same tests in the MicroPython VM ---------------------------------------------------------

def test_same_tests_in_micropython_vm():
    if pytest is None:
        return
    import json
    from pathlib import Path

    from host_tools import vm
    here = Path(__file__).resolve()
    root = here.parents[2]
    names = [n for n in sorted(globals()) if n.startswith('test_') and n != 'test_same_tests_in_micropython_vm']
    code = '\n'.join([
        'import sys, json, io',
        'sys.path.insert(0, "/tests")',
        'import test_pyboard_hal as t',
        't.PYBOARD_DIR = "/pyboard"',
        'for n in {!r}:'.format(names),
        '    try:',
        '        getattr(t, n)()',
        '        print(json.dumps({"name": n, "ok": True}))',
        '    except Exception as e:',
        '        b = io.StringIO(); sys.print_exception(e, b)',
        '        print(json.dumps({"name": n, "ok": False, "err": b.getvalue()}))',
    ])
    mounts = vm.firmware_mounts("sim", extra=[(root / "boards" / "pyboard", "/pyboard"),
                                               (here, "/tests/test_pyboard_hal.py")])
    try:
        out = vm.run_micropython(code, mounts=mounts, timeout=300)
    except vm.VmMissing as e:
        pytest.skip(str(e))
    results = {}
    for line in out.splitlines():
        if line.startswith('{'):
            rec = json.loads(line)
            results[rec['name']] = rec
    failed = [n + ': ' + results[n].get('err', '') for n in names if not results.get(n, {}).get('ok')]
    missing = [n for n in names if n not in results]
    assert not missing and not failed, '\n'.join(missing + failed)
