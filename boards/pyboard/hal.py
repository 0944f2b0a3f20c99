"""HAL of the pyboard v1.1 class controller (STM32F405) on `machine` and `pyb`.

Status: compiled with mpy-cross for armv7emsp in CI. It runs only on the board; the test
suite exercises it against fake `machine`/`pyb` modules (tests/host/test_pyboard_hal.py,
under CPython and in the MicroPython VM), not on hardware.

Hardware (pins.py): pilot PWM 1 kHz on a timer channel and pilot sense on an ADC sampled in
a burst across one PWM period (the highest sample is the pilot high level, the lowest the
low level); contactor coil output and auxiliary-contact feedback; EVSE temperature from an
NTC on an ADC; independent watchdog; host link on a UART.

Cooling loop (board.json "cooling"): the pump relay on a pin; its tachometer's pulses are
counted by a hard pin IRQ into a one-word array (no allocation in the handler) and handed to
the controller as Inputs.cooling_count, whose changes are what core/cooling.py checks.
Status LED: the board's four LEDs show core/status_led.py's pattern (on/off: a breathing
pattern shows as one second on, one off).

Field buses: the HAL only offers the ports (see docs/field-buses.md, "The board's bus
interface"); the station's meter and CAN tasks (app/meter.py, app/canbus.py) do the Modbus
and BMS work with the settings in force, so a config_set of METER_BAUD or CAN_BITRATE
reopens the port at once.
- `hal.rs485`: UART 6 with a driver-enable pin. On STM32 `UART.write` returns only after
  the transmission-complete flag (the last stop bit left the wire), so DE is dropped right
  after it and `tx_done()` is always True. The transceiver's receiver is disabled while
  DE is up (/RE tied to DE on the carrier), so our own request never echoes back.
  `rx_idle_us()` says when a reply ended, from the UART's receive-idle interrupt
  (`UART.IRQ_RXIDLE`, MicroPython >= 1.24): a hard handler stores ticks_us() and the
  position in the byte stream it followed, so the meter task may send its next request in
  the step that read a reply (docs/field-buses.md). A firmware without IRQ_RXIDLE gets no
  `rx_idle_us` and the meter task counts the Modbus silence from its own reads.
- `hal.can`: pyb.CAN 2, normal mode, one filter bank accepting every id into FIFO 0 (the
  codec filters); recv reuses one list (MicroPython >= 1.20 layout: id, extended, remote,
  filter, data).

Safe state (safe_state): contactor open, pilot at steady -12 V (state F). The controller's
CAN frames stop with the control loop, so no charge or discharge request goes out either.
"""
import sys
import time
from array import array

import machine
import pyb
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from board import pins
from core import config as config_mod
from core import status_led

BOARD_NAME = 'pyboard'
# The carrier's contactor and pilot wiring are rated 32 A (board.json repeats this for the host).
BOARD_LIMITS = {'MAX_CHARGE_AMPS': (6, 32), 'MAX_DISCHARGE_AMPS': (0, 32)}

CP_SAMPLES = const(40)            # 40 samples at 40 kHz: one 1 ms PWM period
CP_SAMPLE_HZ = const(40000)
# Host link receive buffer, UART ring and read buffer alike. The host keeps up to 4 fota_chunk
# frames in flight (host_tools/fota.py DEFAULT_WINDOW); a frame is at most 1024 bytes before
# COBS, 1030 on the wire (COBS adds one byte per 254, plus the delimiter), so a window is
# 4120 bytes. The rest, 2024 bytes, is 176 ms of line time at 115200 baud: a control step may
# run about three periods late (a flash write) before a byte is lost. A step takes at most
# the station's LINK_STEP_BYTES (1152, twice the line's 576 bytes a step) and a few frames of
# it, so the link never holds the step up; a host sending faster than that loses bytes here.
LINK_BUF = const(6144)
LINK_WINDOW_FRAMES = const(4)
LINK_FRAME_WIRE = const(1030)
RS485_RXBUF = const(256)

# NTC 10 k B3950 under a 10 k pull-up to 3.3 V: ADC mV (falling) and 0.1 degC, point by point.
# Arrays, not a tuple of pairs: frozen into an image a constant tuple's ints were heap objects
# and reading them allocated on every control step (tests/host/test_frozen_rules.py).
_NTC_MV = array('h', [3014, 2816, 2543, 2206, 1835, 1470, 1143, 871, 657, 493, 371, 281,
                      215, 165, 129, 101])
_NTC_DC = array('h', [-200, -100, 0, 100, 200, 300, 400, 500, 600, 700, 800, 900,
                      1000, 1100, 1200, 1300])
# Outside these the divider is not an NTC in range: above, the NTC is open (broken wire,
# unplugged: the pull-up alone gives 3.3 V); below, the sense line is shorted to ground.
NTC_OPEN_MV = const(3100)
NTC_SHORT_MV = const(60)
NTC_FAULT_SAMPLES = const(3)      # consecutive bad readings before it counts (one ADC spike does not)
# A faulty sensor reads as the highest EVSE_TEMP_LIMIT_C the settings allow, so the thermal
# stage trips (V2G-009, contactor open) whatever limit is configured.
EVSE_SENSOR_FAULT_DC = int(config_mod.SCHEMA['EVSE_TEMP_LIMIT_C'][2] * 10)

_COUNT_MASK = const(0x3FFFFFFF)
# status_led colour -> the LEDs lit, bit i = pyb.LED(i + 1): green, blue, amber, red, cyan
_LED_BITS = getattr(pins, 'LED_BITS', b'\x02\x08\x04\x01\x0a')   # a board's own LEDs: its pins.py

_RESET_NAMES = {
    machine.PWRON_RESET: 'power_on', machine.HARD_RESET: 'hard_reset',
    machine.WDT_RESET: 'watchdog', machine.DEEPSLEEP_RESET: 'deepsleep',
    machine.SOFT_RESET: 'soft_reset',
}
# The STM32 port reads a brown-out as PWRON_RESET (BORRSTF with PORRSTF); a port that tells
# them apart has BROWN_OUT_RESET, and then the report says so.
if hasattr(machine, 'BROWN_OUT_RESET'):
    _RESET_NAMES[machine.BROWN_OUT_RESET] = 'brown_out'


def trial_watchdog():
    """The watchdog boot.py started for a slot on trial, or None. boot.py and main.py run in
    the __main__ namespace on a board, so that is where boot.py leaves it."""
    try:
        import __main__
    except ImportError:
        return None
    return getattr(__main__, 'TRIAL_WDT', None)


def ntc_dc(mv):
    """EVSE temperature in 0.1 degC from the NTC divider voltage (linear between points,
    clamped to the table's ends; the caller rejects open and shorted sensors first)."""
    if mv >= _NTC_MV[0]:
        return _NTC_DC[0]
    for i in range(1, len(_NTC_MV)):
        hi_mv = _NTC_MV[i - 1]
        lo_mv = _NTC_MV[i]
        if mv >= lo_mv:
            hi_dc = _NTC_DC[i - 1]
            return hi_dc + (hi_mv - mv) * (_NTC_DC[i] - hi_dc) // (hi_mv - lo_mv)
    return _NTC_DC[len(_NTC_DC) - 1]


def ntc_fault(mv):
    """'open', 'short' or None for a divider voltage."""
    if mv > NTC_OPEN_MV:
        return 'open'
    if mv < NTC_SHORT_MV:
        return 'short'
    return None


def _views(buf, cache, n):
    """buf[:n] as a memoryview, made once per (buffer, length): a Modbus request or a CAN
    frame has one of a few lengths, so after the first poll nothing is allocated."""
    v = cache.get(n)
    if v is None:
        v = memoryview(buf)[:n]
        cache[n] = v
    return v


# The receive-idle record the UART's hard IRQ handler shares with readinto (array slots:
# the handler may not allocate): when the interrupt came, the stream position of the last
# byte before it, and the bytes readinto has returned (positions wrap at 2**30).
_IDLE_TICKS = const(0)
_IDLE_AT = const(1)
_IDLE_READ = const(2)


class PybRs485:
    """The RS-485 port on a UART and a driver-enable pin (interface: docs/field-buses.md)."""

    def __init__(self, uart_id, de_pin):
        self.uart_id = uart_id
        self.de = de_pin
        self.uart = None
        self.baud = None
        self.open_error = ''
        self.idle_error = ''
        self.write_errors = 0
        self._tx_src = None
        self._tx_views = {}
        self._idle = array('i', [0, -1, 0])
        self._on_idle_cb = None
        if hasattr(machine.UART, 'IRQ_RXIDLE'):
            self._on_idle_cb = self._on_idle   # bound once: a hard handler may not allocate
        else:
            # this firmware cannot tell when a reply ended: no rx_idle_us for the meter task
            self.rx_idle_us = None

    def open(self, baud):
        self.de.value(0)
        try:
            if self.uart is None:
                self.uart = machine.UART(self.uart_id)
            # timeout=0: reads never wait for a first byte; rxbuf holds a whole reply
            self.uart.init(baud, bits=8, parity=None, stop=1, timeout=0, rxbuf=RS485_RXBUF)
            self.baud = baud
            self.open_error = ''
        except (OSError, ValueError) as e:
            # a port that cannot open stays silent: the meter reading ages into V2G-120
            self.uart = None
            self.baud = None
            self.open_error = 'baud {}: {}'.format(baud, e)
            return
        self._idle[_IDLE_AT] = -1           # nothing heard at this speed yet
        if self._on_idle_cb is not None:
            try:
                self.uart.irq(handler=self._on_idle_cb, trigger=machine.UART.IRQ_RXIDLE, hard=True)
                self.idle_error = ''
            except (OSError, ValueError, TypeError) as e:
                # the port works; rx_idle_us stays None and the meter task counts from its reads
                self.idle_error = 'receive-idle interrupt: {}'.format(e)

    def _on_idle(self, uart):
        # hard IRQ: slots only. The STM32F4 also raises it after a first character; the
        # position makes that harmless (readinto must have returned exactly up to it).
        s = self._idle
        s[_IDLE_TICKS] = time.ticks_us()
        s[_IDLE_AT] = (s[_IDLE_READ] + uart.any()) & _COUNT_MASK

    def rx_idle_us(self):
        """ticks_us() of the receive-idle interrupt that followed the last byte readinto
        returned, or None when none has (more may still be arriving). The idle flag rises a
        character after the stop bit, so this is up to a character late, never early: the
        Modbus silence counted from it is never short."""
        s = self._idle
        if s[_IDLE_AT] != s[_IDLE_READ]:
            return None
        return s[_IDLE_TICKS]

    def write(self, buf, n):
        if self.uart is None:
            return
        if buf is not self._tx_src:
            self._tx_src = buf
            self._tx_views = {}
        data = _views(buf, self._tx_views, n)
        self.de.value(1)
        try:
            self.uart.write(data)     # returns after the last stop bit (TC flag)
        except OSError:
            self.write_errors += 1    # the master times out and counts it as well
        finally:
            self.de.value(0)

    def tx_done(self):
        return True                   # write() returned after the line went idle

    def readinto(self, buf):
        u = self.uart
        if u is None:
            return 0
        k = u.any()
        if not k:
            return 0
        if k > len(buf):
            k = len(buf)
        # ask for exactly what is waiting: a longer read would wait timeout_char for more
        n = u.readinto(buf, k) or 0
        if n:
            s = self._idle
            s[_IDLE_READ] = (s[_IDLE_READ] + n) & _COUNT_MASK
        return n

    def stats(self):
        out = {}
        if self.open_error:
            out['open_error'] = self.open_error
        if self.write_errors:
            out['write_errors'] = self.write_errors
        if self.idle_error:
            out['idle_error'] = self.idle_error
        return out


class PybCan:
    """The CAN port on pyb.CAN (interface: docs/field-buses.md)."""

    def __init__(self, bus):
        self.bus = bus
        self.can = None
        self.bitrate = None
        self.rx_id = 0
        self.rx_ext = False
        self.data = bytearray(8)
        self.mv = memoryview(self.data)
        # pyb.CAN.recv(0, list) fills this list in place and resizes the memoryview to the DLC
        self.msg = [0, False, False, 0, self.mv]
        self.open_error = ''
        self.remote_frames = 0
        self.rx_errors = 0
        self._tx_src = None
        self._tx_views = {}

    def open(self, bitrate):
        try:
            if self.can is None:
                self.can = pyb.CAN(self.bus)
            self.can.init(pyb.CAN.NORMAL, extframe=False, baudrate=bitrate, sample_point=75,
                          auto_restart=True)
            # mask 0: every standard and extended id into FIFO 0; the codec decides
            self.can.setfilter(0, pyb.CAN.MASK16, 0, (0, 0, 0, 0))
            self.bitrate = bitrate
            self.open_error = ''
        except (OSError, ValueError) as e:
            # no BMS frames arrive: the controller's CAN timeout takes the station safe
            self.can = None
            self.bitrate = None
            self.open_error = 'bitrate {}: {}'.format(bitrate, e)

    def send(self, can_id, buf, dlc):
        if self.can is None:
            return False
        if buf is not self._tx_src:
            self._tx_src = buf
            self._tx_views = {}
        try:
            self.can.send(_views(buf, self._tx_views, dlc), can_id, timeout=0)
        except OSError:
            return False              # all three mailboxes busy, or bus off
        return True

    def recv(self, buf):
        can = self.can
        if can is None:
            return -1
        msg = self.msg
        while can.any(0):
            msg[4] = self.mv
            try:
                can.recv(0, msg, timeout=0)
            except OSError:
                self.rx_errors += 1
                return -1
            if msg[2]:
                self.remote_frames += 1   # a remote request carries no data for the codec
                continue
            dlc = len(msg[4])
            self.rx_id = msg[0]
            self.rx_ext = bool(msg[1])
            d = self.data
            for i in range(8):
                buf[i] = d[i] if i < dlc else 0
            return dlc
        return -1

    def stats(self):
        out = {}
        if self.open_error:
            out['open_error'] = self.open_error
        if self.remote_frames:
            out['remote_frames'] = self.remote_frames
        if self.rx_errors:
            out['rx_errors'] = self.rx_errors
        if self.can is not None and self.can.state() == pyb.CAN.BUS_OFF:
            out['state'] = 'bus off'
        return out


class Hal:
    BOARD_NAME = BOARD_NAME
    BOARD_LIMITS = BOARD_LIMITS
    # The update slots live on the littlefs filesystem (board.json: 352 blocks of 512 bytes),
    # not in the raw update partition, so no slot can hold more than the whole filesystem;
    # the installer's free-space check at fota_begin gives the real, smaller limit.
    UPDATE_SLOT_BYTES = 352 * 512

    def __init__(self):
        # Outputs first, straight to the safe state, before anything that can fail:
        # contactor open, then the pilot at steady -12 V (state F).
        self.contactor = machine.Pin(pins.CONTACTOR_OUT, machine.Pin.OUT, value=0)
        self.pump = machine.Pin(pins.COOLING_OUT, machine.Pin.OUT, value=0)
        self.cp_timer = pyb.Timer(pins.CP_TIMER, freq=pins.CP_FREQ_HZ)
        self.cp_ch = self.cp_timer.channel(pins.CP_CHANNEL, pyb.Timer.PWM, pin=pyb.Pin(pins.CP_PWM),
                                           pulse_width=0)
        self.cp_period = self.cp_timer.period() + 1
        self.pwm_pm = 0
        de = machine.Pin(pins.RS485_DE, machine.Pin.OUT, value=0)
        # inputs
        self.contactor_fb = machine.Pin(pins.CONTACTOR_FB, machine.Pin.IN, machine.Pin.PULL_UP)
        self.tach_count = array('L', [0])
        self.tach = machine.Pin(pins.COOLING_TACH, machine.Pin.IN, machine.Pin.PULL_UP)
        self.tach.irq(handler=self._tach_pulse, trigger=machine.Pin.IRQ_FALLING, hard=True)
        self.leds = [pyb.LED(i + 1) for i in range(pins.LED_COUNT)]
        self.led_bits = -1
        self.station = None          # for the status LED: whether an update is in progress
        self.cp_adc = pyb.ADC(pins.CP_ADC)
        self.pp_adc = pyb.ADC(pins.PP_ADC)
        self.temp_adc = pyb.ADC(pins.TEMP_ADC)
        self.adc_timer = pyb.Timer(6, freq=CP_SAMPLE_HZ)
        self.cp_buf = array('H', [0] * CP_SAMPLES)
        self.ntc_bad = 0              # consecutive out-of-range NTC readings
        self.ntc_faults = 0           # times the sensor went faulty
        self.ntc_state = None         # None, 'open' or 'short'
        self.evse_temp_dc = 250
        # field bus ports: opened by the station's meter and CAN tasks with the settings
        self.rs485 = PybRs485(pins.RS485_UART, de)
        self.can = PybCan(pins.CAN_BUS)
        # host link
        self.link = machine.UART(pins.LINK_UART, pins.LINK_BAUD, timeout=0, rxbuf=LINK_BUF)
        # The watchdog cannot be stopped once started, so it is started only when no USB host
        # (a maintenance laptop on the REPL) is attached at boot; otherwise `v2g flash`, which
        # stops the application, would be cut short by a watchdog reset. A slot on trial is
        # the exception: boot.py has already started it (a trial must revert even with a
        # laptop attached), so it is taken over here, at our timeout, and fed.
        self.wdt = None
        if not pyb.USB_VCP().isconnected() or trial_watchdog() is not None:
            self.wdt = machine.WDT(timeout=pins.WDT_TIMEOUT_MS)
        rc = machine.reset_cause()
        # a cause this table does not know keeps its number, for the report to show
        self._reset_cause = _RESET_NAMES.get(rc) or 'unknown ({})'.format(rc)

    # -- time, watchdog, reset ------------------------------------------------------------

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_us(self):
        return time.ticks_us()

    def feed_watchdog(self):
        if self.wdt is not None:
            self.wdt.feed()

    def reset_cause(self):
        return self._reset_cause

    def reset(self):
        """Outputs to the safe state, then a hard reset of the MCU."""
        try:
            self.safe_state()
        finally:
            machine.reset()

    def stop_requested(self):
        return False    # Ctrl-C on a board raises KeyboardInterrupt instead

    def log_exception(self, e):
        sys.print_exception(e)
        try:
            with open('state/last_exception.txt', 'w') as f:
                sys.print_exception(e, f)
        except OSError:
            pass

    # -- inputs ---------------------------------------------------------------------------

    def _tach_pulse(self, pin):
        # hard IRQ: small-int arithmetic on a preallocated array only
        c = self.tach_count
        c[0] = (c[0] + 1) & _COUNT_MASK

    def _pilot(self, inputs):
        self.cp_adc.read_timed(self.cp_buf, self.adc_timer)
        lo = 4095
        hi = 0
        for v in self.cp_buf:
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        inputs.cp_high_mv = self._cp_mv(hi)
        inputs.cp_low_mv = self._cp_mv(lo)

    def _cp_mv(self, raw):
        adc_mv = raw * 3300 // 4095
        return (adc_mv - pins.CP_OFFSET_MV) * pins.CP_GAIN_NUM // pins.CP_GAIN_DEN

    def _pp_limit_a(self):
        # IEC 61851-1 PP resistor to PE under a 330 R pull-up to 3.3 V: 1.5k 13 A, 680 R 20 A,
        # 220 R 32 A, 100 R 63 A; open = no cable (0).
        mv = self.pp_adc.read() * 3300 // 4095
        if mv > 2900:
            return 0
        if mv > 2200:
            return 13
        if mv > 1500:
            return 20
        if mv > 900:
            return 32
        return 63

    def _evse_temp_dc(self):
        mv = self.temp_adc.read() * 3300 // 4095
        fault = ntc_fault(mv)
        if fault is None:
            self.ntc_bad = 0
            self.ntc_state = None
            self.evse_temp_dc = ntc_dc(mv)
        elif self.ntc_bad < NTC_FAULT_SAMPLES:
            self.ntc_bad += 1
            if self.ntc_bad == NTC_FAULT_SAMPLES:
                self.ntc_faults += 1
                self.ntc_state = fault
                self.evse_temp_dc = EVSE_SENSOR_FAULT_DC
        # until a fault is confirmed the last good temperature stands
        return self.evse_temp_dc

    def read_inputs(self, inputs, now_ms):
        """Pilot, proximity, contactor feedback and EVSE temperature. Meter and BMS Inputs
        are filled by the station's bus tasks through hal.rs485 and hal.can."""
        self._pilot(inputs)
        inputs.pp_limit_a = self._pp_limit_a()
        inputs.contactor_closed = self.contactor_fb.value() == 0
        inputs.evse_temp_dc = self._evse_temp_dc()
        inputs.cooling_count = self.tach_count[0]

    # -- outputs --------------------------------------------------------------------------

    def _set_pwm(self, pwm_pm):
        if pwm_pm != self.pwm_pm:
            self.pwm_pm = pwm_pm
            self.cp_ch.pulse_width(self.cp_period * pwm_pm // 1000)

    def attach_station(self, station):
        self.station = station

    def apply(self, outputs, now_ms):
        self._set_pwm(outputs.pwm_pm)
        self.contactor.value(1 if outputs.contactor else 0)
        self.pump.value(1 if outputs.cooling else 0)
        st = self.station
        p = status_led.select(outputs.mode, outputs.errors, st is not None and st.update.busy)
        self._leds(_LED_BITS[status_led.COLOR[p]] if status_led.lit(p, now_ms) else 0)

    def _leds(self, bits):
        if bits == self.led_bits:
            return
        self.led_bits = bits
        for i in range(pins.LED_COUNT):
            if bits & (1 << i):
                self.leds[i].on()
            else:
                self.leds[i].off()

    def safe_state(self):
        """Contactor open, pilot at steady -12 V (state F), pump off (no current flows), red LED."""
        self.contactor.value(0)
        self.pwm_pm = -1
        self._set_pwm(0)
        self.pump.value(0)
        self._leds(_LED_BITS[status_led.RED])

    # -- energy and statistics --------------------------------------------------------------

    def energy_in_wh(self):
        """The board has no energy counter of its own: 0. The billing meter's import and
        export registers (Wh) come from the station's meter task (app/meter.py), which the
        station uses whenever a meter port exists, as it always does on this board."""
        return 0

    def energy_out_wh(self):
        """See energy_in_wh: 0; the meter task reports the export register."""
        return 0

    def bus_stats(self):
        # The ports' view (open errors, bus state) and the EVSE sensor; the station's meter
        # and CAN tasks add their protocol counters under 'meter' and 'can'. Zero counters
        # are left out: a diag answer holds 1 kB.
        out = {}
        p = self.rs485.stats()
        if p:
            out['rs485_port'] = p
        p = self.can.stats()
        if p:
            out['can_port'] = p
        if self.ntc_faults or self.ntc_state:
            out['evse_ntc'] = {'faults': self.ntc_faults, 'state': self.ntc_state or 'ok'}
        return out

    # -- host link --------------------------------------------------------------------------

    def link_read(self, max_n=LINK_BUF):
        """What arrived on the link since the last call, at most max_n bytes (a bytearray:
        len() and slicing, and Link.feed scans it at C speed), or None. The read buffer is as
        large as the UART's ring, so one read can empty it; the rest of a longer wait stays
        in the ring for the next step. Only the bytes waiting are asked for (a longer read
        would wait for more): one allocation, of their size. The station reads with
        link_readinto into its own buffer, so the HAL keeps no 6 kB buffer for this."""
        k = self.link.any()
        if not k:
            return None
        if k > max_n:
            k = max_n
        if k > LINK_BUF:
            k = LINK_BUF
        buf = bytearray(k)
        n = self.link.readinto(buf, k)
        if not n:
            return None
        return buf if n == k else buf[:n]

    def link_write(self, data):
        self.link.write(data)

    def link_readinto(self, buf, max_n):
        """As link_read, into the caller's buf: the number of bytes (0 when none). The
        station's steady state reads this way and allocates nothing."""
        k = self.link.any()
        if not k:
            return 0
        if k > max_n:
            k = max_n
        if k > len(buf):
            k = len(buf)
        return self.link.readinto(buf, k) or 0

    def link_write_n(self, buf, n):
        """Write buf[:n]: a stream's write(buf, n), so no slice is made for a frame."""
        self.link.write(buf, n)
