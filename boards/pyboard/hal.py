"""HAL of the pyboard v1.1 class controller (STM32F405) on `machine` and `pyb`.

Status: compiled with mpy-cross for armv7emsp in CI; it cannot run on the host (there is no
`machine`/`pyb` there) and has not been run on hardware by the test suite. The simulated
board (boards/sim) is the one the tests exercise; this file mirrors its interface.

Hardware (pins.py): pilot PWM 1 kHz on a timer channel and pilot sense on an ADC sampled in
a burst across one PWM period (the highest sample is the pilot high level, the lowest the
low level); contactor coil output and auxiliary-contact feedback; RS-485 meter on a UART
with a driver-enable pin; VCU/BMS on pyb.CAN; EVSE temperature from an NTC on an ADC;
independent watchdog. Bus settings (meter model/address/baud/poll, CAN bitrate) are read
from v2g_vars.json once at start, with the controller's own validation; a change through
config_set takes effect on the buses at the next reset.

Safe state (safe_state): contactor open, pilot at steady -12 V (state F), no discharge
request on CAN.
"""
import sys
import time
from array import array

import machine
import pyb
from micropython import const

from board import pins
from core import can_msgs, meter_map, modbus
from core import config as config_mod

BOARD_NAME = 'pyboard'
# The carrier's contactor and pilot wiring are rated 32 A (board.json repeats this for the host).
BOARD_LIMITS = {'MAX_CHARGE_AMPS': (6, 32), 'MAX_DISCHARGE_AMPS': (0, 32)}

CP_SAMPLES = const(40)            # 40 samples at 40 kHz: one 1 ms PWM period
CP_SAMPLE_HZ = const(40000)
NEVER = const(1 << 29)
CAN_TX_PERIOD_MS = const(100)
LINK_BUF = const(512)

# NTC 10 k B3950 under a 10 k pull-up to 3.3 V: (ADC mV, 0.1 degC), falling mV.
_NTC = ((3014, -200), (2816, -100), (2543, 0), (2206, 100), (1835, 200), (1470, 300),
        (1143, 400), (871, 500), (657, 600), (493, 700), (371, 800), (281, 900),
        (215, 1000), (165, 1100), (129, 1200), (101, 1300))

_RESET_NAMES = {
    machine.PWRON_RESET: 'power_on', machine.HARD_RESET: 'hard_reset',
    machine.WDT_RESET: 'watchdog', machine.DEEPSLEEP_RESET: 'deepsleep',
    machine.SOFT_RESET: 'soft_reset',
}


def ntc_dc(mv):
    """EVSE temperature in 0.1 degC from the NTC divider voltage (linear between points)."""
    if mv >= _NTC[0][0]:
        return _NTC[0][1]
    for i in range(1, len(_NTC)):
        hi_mv, hi_dc = _NTC[i - 1]
        lo_mv, lo_dc = _NTC[i]
        if mv >= lo_mv:
            return hi_dc + (hi_mv - mv) * (lo_dc - hi_dc) // (hi_mv - lo_mv)
    return _NTC[-1][1]


def _settings():
    """The validated settings (defaults when the file is missing or refused)."""
    try:
        with open('v2g_vars.json', 'rb') as f:
            return config_mod.load_json(f.read(), board=BOARD_LIMITS)
    except (OSError, ValueError):
        return config_mod.validate({}, board=BOARD_LIMITS)


class Hal:
    BOARD_NAME = BOARD_NAME
    BOARD_LIMITS = BOARD_LIMITS

    def __init__(self):
        cfg = _settings()
        # Outputs first, straight to the safe state, before anything can fail.
        self.contactor = machine.Pin(pins.CONTACTOR_OUT, machine.Pin.OUT, value=0)
        self.contactor_fb = machine.Pin(pins.CONTACTOR_FB, machine.Pin.IN, machine.Pin.PULL_UP)
        self.cp_timer = pyb.Timer(pins.CP_TIMER, freq=pins.CP_FREQ_HZ)
        self.cp_period = self.cp_timer.period() + 1
        self.cp_ch = self.cp_timer.channel(pins.CP_CHANNEL, pyb.Timer.PWM, pin=pyb.Pin(pins.CP_PWM),
                                           pulse_width=0)
        self.cp_adc = pyb.ADC(pins.CP_ADC)
        self.pp_adc = pyb.ADC(pins.PP_ADC)
        self.temp_adc = pyb.ADC(pins.TEMP_ADC)
        self.adc_timer = pyb.Timer(6, freq=CP_SAMPLE_HZ)
        self.cp_buf = array('H', [0] * CP_SAMPLES)
        self.pwm_pm = 0
        # RS-485 meter
        self.de = machine.Pin(pins.RS485_DE, machine.Pin.OUT, value=0)
        self.meter_uart = machine.UART(pins.RS485_UART, cfg['METER_BAUD'], bits=8, parity=None, stop=1,
                                       timeout=0, rxbuf=256)
        self.master = modbus.ModbusMaster(cfg['METER_BAUD'], 200)
        self.meter = meter_map.MeterReader(self.master, meter_map.model_from_name(cfg['METER_MODEL']),
                                           cfg['METER_ADDRESS'])
        self.meter_poll_ms = cfg['METER_POLL_MS']
        self.meter_next_ms = 0
        self.meter_rx = bytearray(64)
        # CAN
        self.can = pyb.CAN(pins.CAN_BUS, pyb.CAN.NORMAL, baudrate=cfg['CAN_BITRATE'], sample_point=75,
                           auto_restart=True)
        self.can.setfilter(0, pyb.CAN.LIST16, 0, (can_msgs.BMS_STATUS_ID, can_msgs.BMS_LIMITS_ID,
                                                   can_msgs.BMS_INFO_ID, can_msgs.BMS_INFO_ID))
        self.can_stats = can_msgs.CanStats()
        self.can_rx = can_msgs.CanRx(self.can_stats)
        self.can_tx = can_msgs.CanTx(self.can_stats)
        self.can_data = bytearray(8)
        # recv into a preallocated list: [id, extended, rtr, filter, data] (MicroPython >= 1.20)
        self.can_msg = [0, False, False, 0, memoryview(self.can_data)]
        self.can_out = bytearray(8)
        self.can_next_ms = 0
        self.can_tx_errors = 0
        self.request_ma = 0
        # host link
        self.link = machine.UART(pins.LINK_UART, pins.LINK_BAUD, timeout=0, rxbuf=LINK_BUF)
        self.link_buf = bytearray(LINK_BUF)
        # The watchdog cannot be stopped once started, so it is started only when no USB host
        # (a maintenance laptop on the REPL) is attached at boot; otherwise `v2g flash`, which
        # stops the application, would be cut short by a watchdog reset.
        self.wdt = None
        if not pyb.USB_VCP().isconnected():
            self.wdt = machine.WDT(timeout=pins.WDT_TIMEOUT_MS)
        self._reset_cause = _RESET_NAMES.get(machine.reset_cause(), 'unknown')

    # -- time, watchdog, reset ------------------------------------------------------------

    def ticks_ms(self):
        return time.ticks_ms()

    def feed_watchdog(self):
        if self.wdt is not None:
            self.wdt.feed()

    def reset_cause(self):
        return self._reset_cause

    def reset(self):
        self.safe_state()
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

    def _meter_pump(self, now_ms):
        us = time.ticks_us()
        m = self.master
        if not self.meter.busy() and time.ticks_diff(now_ms, self.meter_next_ms) >= 0:
            self.meter_next_ms = now_ms + self.meter_poll_ms
            self.meter.start(now_ms)
        n = m.tx_ready(us)
        if n > 0:
            self.de.value(1)
            self.meter_uart.write(memoryview(m.tx)[:n])   # returns after the last stop bit
            self.de.value(0)
            m.sent(time.ticks_us())
        k = self.meter_uart.readinto(self.meter_rx)
        if k:
            m.feed(self.meter_rx, k, time.ticks_us())
        if self.meter.busy():
            r = m.poll(time.ticks_us())
            if r != modbus.BUSY:
                self.meter.on_result(r, now_ms)

    def _can_pump(self, now_ms):
        while self.can.any(0):
            self.can.recv(0, self.can_msg)
            self.can_rx.feed(self.can_msg[0], self.can_data, 8, now_ms)
        if time.ticks_diff(now_ms, self.can_next_ms) >= 0:
            self.can_next_ms = now_ms + CAN_TX_PERIOD_MS
            o = self.can_tx.vcu_power_request
            o.req_current_ma = self.request_ma
            if self.request_ma > 0:
                o.req_mode = can_msgs.REQ_MODE_CHARGE
            elif self.request_ma < 0:
                o.req_mode = can_msgs.REQ_MODE_DISCHARGE
            else:
                o.req_mode = can_msgs.REQ_MODE_IDLE
            o.contactor_closed = 1 if self.contactor.value() else 0
            self.can_tx.frame_vcu_power_request(self.can_out)
            try:
                self.can.send(self.can_out, can_msgs.VCU_POWER_REQUEST_ID, timeout=0)
            except OSError:
                self.can_tx_errors += 1     # bus off or mailbox full: counted, retried next period

    def read_inputs(self, inputs, now_ms):
        self._pilot(inputs)
        inputs.pp_limit_a = self._pp_limit_a()
        inputs.contactor_closed = self.contactor_fb.value() == 0
        self._meter_pump(now_ms)
        r = self.meter.reading
        inputs.meter_ok = r.valid
        inputs.meter_age_ms = r.age_ms(now_ms)
        inputs.meter_ma = r.vals[meter_map.F_MA1]
        inputs.meter_mv = r.vals[meter_map.F_MV1]
        inputs.meter_mhz = r.vals[meter_map.F_MHZ]
        inputs.evse_temp_dc = ntc_dc(self.temp_adc.read() * 3300 // 4095)
        self._can_pump(now_ms)
        rx = self.can_rx
        inputs.bms_age_ms = rx.age_ms(0, now_ms)
        inputs.bms_soc_pm = rx.bms_status.soc_pm
        inputs.bms_temp_dc = rx.bms_status.temp_max_dc
        inputs.bms_max_charge_ma = rx.bms_limits.max_charge_current_ma
        inputs.bms_max_discharge_ma = rx.bms_limits.max_discharge_current_ma
        inputs.bms_capacity_wh = rx.bms_info.capacity_wh

    # -- outputs --------------------------------------------------------------------------

    def _set_pwm(self, pwm_pm):
        if pwm_pm != self.pwm_pm:
            self.pwm_pm = pwm_pm
            self.cp_ch.pulse_width(self.cp_period * pwm_pm // 1000)

    def apply(self, outputs, now_ms):
        self._set_pwm(outputs.pwm_pm)
        self.contactor.value(1 if outputs.contactor else 0)
        self.request_ma = outputs.request_ma

    def safe_state(self):
        """Contactor open, pilot at steady -12 V (state F), no discharge request."""
        self.contactor.value(0)
        self.pwm_pm = -1
        self._set_pwm(0)
        self.request_ma = 0

    # -- energy and statistics --------------------------------------------------------------

    def energy_in_wh(self):
        return self.meter.reading.vals[meter_map.F_IMPORT_WH] // 1000

    def energy_out_wh(self):
        return self.meter.reading.vals[meter_map.F_EXPORT_WH] // 1000

    def bus_stats(self):
        ms = self.master.stats
        cs = self.can_stats
        now = time.ticks_ms()
        return {
            'meter': {'ok': ms.ok, 'timeouts': ms.timeouts, 'crc_errors': ms.crc_errors,
                      'exceptions': ms.exceptions_total(), 'wrong_unit': ms.wrong_unit,
                      'snapshots_ok': self.meter.snapshots_ok,
                      'snapshots_failed': self.meter.snapshots_failed,
                      'age_ms': self.meter.reading.age_ms(now)},
            'can': {'rx_ok': cs.rx_ok, 'unknown_id': cs.unknown_id, 'bad_dlc': cs.bad_dlc,
                    'bad_checksum': cs.bad_checksum, 'bad_range': cs.bad_range,
                    'counter_skip': cs.counter_skip, 'tx': cs.tx, 'tx_errors': self.can_tx_errors,
                    'bms_age_ms': self.can_rx.age_ms(0, now)},
        }

    # -- host link --------------------------------------------------------------------------

    def link_read(self):
        n = self.link.readinto(self.link_buf)
        if not n:
            return None
        return bytes(self.link_buf[:n])

    def link_write(self, data):
        self.link.write(data)
