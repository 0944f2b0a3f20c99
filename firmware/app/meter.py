"""The meter task: polls the RS-485 energy meter through the HAL and fills the Inputs.

Called from the station tick (`step`) and, at 38400 baud, between ticks (`io`, when
`next_io_ms()` says), in the same time base as the control step (simulated time in
`v2g sim`, ticks on a board). The pure Modbus master and meter
reader (core/modbus.py, core/meter_map.py) decide what a frame and a reading are; this
task only pumps bytes between them and `hal.rs485`:

    rs485.open(baud)          line settings (8N1); the HAL drives the transceiver's DE pin
    rs485.write(buf, n)       queue n bytes of buf
    rs485.tx_done()           True once the last byte left the wire
    rs485.readinto(buf)       bytes received since the last call, copied into buf; returns n
    rs485.rx_idle_us()        optional: ticks_us when the last byte read had left the wire

Timing: the reader's cycle (core/meter_map.py) reads voltage, frequency and one further
block of a snapshot in turn; a snapshot is asked for every METER_POLL_MS. Where it shows
a grid step sooner (meter_map.between_steps: at 38400 baud), bytes move between control
steps too: the shell's loop sleeps until the earlier of the next control step and
next_io_ms() (the silence before a request ends, the request has left the wire, the
reply is due within the meter's allowance) and calls io() then, so a transaction follows
the last as soon as the line allows and several fit one step. The control step itself
never waits for the meter. At 19200 baud and below bytes move once per control step
(step()), a transaction per step: a reply read in a step lets the next request leave in
the same step when the port says when the reply ended (rx_idle_us) and the t3.5 silence
has passed; without that the master must count the silence from the read, and every
transaction takes two steps: the reader then takes the snapshot's further values in one
longer read (meter_map.BLOCKS_*_TWO_STEP) so snapshots keep coming every cycle. The trip
timing (core/grid.py sense_ms) assumes the port tells, or the pump between steps.

A failed transaction leaves the last reading ageing; the controller raises V2G-120 after
METER_STALE_S. `failure()` names why the readings stopped (timeout, CRC, exception code...)
so the shell can say it in the event.
"""
from core import meter_map, modbus, ticks
from core.controller import CONTROL_PERIOD_MS

_MAX_INT = ticks.NEVER
_LATE_LOOK_MS = 2       # a reply later than the meter's allowance is looked for this often


def reply_timeout_ms(poll_ms):
    # Half a poll period, within 100..500 ms: long enough for the meter's own latency
    # (Eastron: tens of ms) and the shell's step granularity, short enough that one
    # lost reply never costs more than one poll.
    t = poll_ms // 2
    return 100 if t < 100 else (500 if t > 500 else t)


# a failed transaction's words, by its result code (ERR_TIMEOUT..ERR_BAD_FUNCTION = -1..-6;
# -5, ERR_EXCEPTION, carries the meter's own code): a constant tuple, where a dict made at
# import would be RAM even frozen
_RESULT_NAMES = ('timeout (no reply)', 'CRC error', 'reply from the wrong unit',
                 'bad length (truncated or over-long reply)', None, 'unexpected function code')


class MeterTask:
    def __init__(self, port, cfg, ticks_us):
        self.port = port
        self.ticks_us = ticks_us
        self.rxbuf = bytearray(256)
        self.cfg = None
        self.master = None
        self.reader = None
        self.pending_sent = False
        self.next_poll_ms = None
        self.last_result = modbus.OK
        self.fail_streak = 0      # failed transactions since the last good one
        self.fail_code = modbus.OK
        self.exc_code = 0
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.configure(cfg)

    def configure(self, cfg):
        """(Re)build master and reader for the settings in force; the reading restarts."""
        self.cfg = cfg
        self.master = modbus.ModbusMaster(cfg.meter_baud, reply_timeout_ms(cfg.meter_poll_ms))
        self.rx_idle_us = getattr(self.port, 'rx_idle_us', None)   # bound once: no allocation per step
        model = meter_map.model_from_name(cfg.meter_model)
        # bytes between control steps where that shows a grid step sooner (the grid
        # protection's sense_ms assumes the same)
        self.between = meter_map.between_steps(model, cfg.meter_baud, CONTROL_PERIOD_MS)
        self.reply_us = meter_map.METER_REPLY_MS * 1000
        self.reader = meter_map.MeterReader(self.master, model, cfg.meter_address,
                                            meter_map.blocks_of(model, self.rx_idle_us is not None
                                                                or self.between))
        self.port.open(cfg.meter_baud)
        self.pending_sent = False
        self.next_poll_ms = None

    def step(self, now_ms, inputs, cfg):
        if cfg is not self.cfg and (cfg.meter_baud != self.cfg.meter_baud
                                    or cfg.meter_model != self.cfg.meter_model
                                    or cfg.meter_address != self.cfg.meter_address
                                    or cfg.meter_poll_ms != self.cfg.meter_poll_ms):
            self.configure(cfg)
        self.cfg = cfg
        self.pump(now_ms)
        rd = self.reader
        if self.next_poll_ms is None or ticks.due(now_ms, self.next_poll_ms):
            if rd.snapshot(now_ms):     # refused while the last one still runs: asked again next step
                self.next_poll_ms = ticks.add(now_ms, cfg.meter_poll_ms)
        if not rd.busy() and rd.next(now_ms):
            self.pump(now_ms)           # leaves now if the line has been quiet for t3.5
        self.fill(inputs, now_ms)

    def io(self, now_ms):
        """Between control steps, when next_io_ms() said: the byte pump, and the cycle's next
        request as soon as the line is free. The snapshot's schedule and the Inputs stay the
        control step's (step)."""
        self.pump(now_ms)
        if not self.reader.busy() and self.reader.next(now_ms):
            self.pump(now_ms)

    def next_io_ms(self, now_ms):
        """When the line next needs io() (ticks_ms, at least 1 ms on), or None: bytes move
        only with the control step at this line speed, or nothing is in hand."""
        if not self.between:
            return None
        w = self.master.wait_us(self.ticks_us(), self.reply_us)
        if w is None:
            return None
        if w <= 0:
            return ticks.add(now_ms, _LATE_LOOK_MS)     # due and not done: a late reply
        # the shell sleeps whole ms counted from ticks_ms, which lags ticks_us by up to
        # 1 ms: one ms more, so the pump never looks early
        return ticks.add(now_ms, w // 1000 + 1)

    def pump(self, now_ms):
        """One pass of the byte pump: send, note the end of sending, receive, judge."""
        m = self.master
        port = self.port
        now_us = self.ticks_us()
        if self.pending_sent and port.tx_done():
            self.pending_sent = False
            m.sent(now_us)
        n = m.tx_ready(now_us)
        if n:
            port.write(m.tx, n)
            self.tx_bytes += n
            self.pending_sent = True
            if port.tx_done():
                self.pending_sent = False
                m.sent(self.ticks_us())
        n = port.readinto(self.rxbuf)
        if n:
            self.rx_bytes += n
            m.feed(self.rxbuf, n, self.ticks_us(), self.rx_idle_us() if self.rx_idle_us is not None else None)
        r = m.poll(self.ticks_us())
        if r != modbus.BUSY:
            self.last_result = r
            if r == modbus.ERR_EXCEPTION:
                self.exc_code = m.exc_code
            self.reader.on_result(r, now_ms)
            if self.reader.last_ok:
                self.fail_streak = 0
                self.fail_code = modbus.OK
            else:
                # a transport error, or an OK reply whose values were refused (NaN)
                self.fail_streak += 1
                self.fail_code = r if r != modbus.OK else 1

    def fill(self, inputs, now_ms):
        rd = self.reader.reading
        v = rd.vals
        age = rd.age_ms(now_ms)
        inputs.meter_age_ms = age if age < _MAX_INT else _MAX_INT
        inputs.meter_ok = rd.valid and self.fail_streak == 0
        if not rd.valid:
            # nothing measured yet: no value from anywhere else may pass for a reading
            inputs.meter_ma = 0
            inputs.meter_mv = 0
            inputs.meter_mhz = 0
            return
        # Eastron phase currents are magnitudes; the sign of the total active power says
        # the direction (+ import, into the vehicle). On a three-phase meter the highest
        # phase current is what the limits are about.
        ma = v[meter_map.F_MA1]
        if ma < 0:
            ma = -ma
        x = v[meter_map.F_MA2]      # unrolled: a tuple of the two would be built every call
        x = x if x >= 0 else -x
        if x > ma:
            ma = x
        x = v[meter_map.F_MA3]
        x = x if x >= 0 else -x
        if x > ma:
            ma = x
        inputs.meter_ma = -ma if v[meter_map.F_MW_TOTAL] < 0 else ma
        # voltage and frequency from their own reads, fresher than the snapshot
        inputs.meter_mv = self.reader.mv if self.reader.have_mv else v[meter_map.F_MV1]
        inputs.meter_mhz = self.reader.mhz if self.reader.have_mhz else v[meter_map.F_MHZ]

    def import_wh(self):
        rd = self.reader.reading
        return rd.vals[meter_map.F_IMPORT_WH] if rd.valid else 0   # meter_map keeps Wh

    def export_wh(self):
        rd = self.reader.reading
        return rd.vals[meter_map.F_EXPORT_WH] if rd.valid else 0

    def failure(self):
        """Why the readings stopped, or '' while they arrive."""
        if self.fail_streak == 0:
            if not self.reader.reading.valid:
                return 'no reading yet'
            return ''
        c = self.fail_code
        if c == modbus.ERR_EXCEPTION:
            why = 'exception code {:02d}'.format(self.exc_code)
        elif c == 1:
            why = 'invalid value (NaN or infinity)'
        else:
            why = _RESULT_NAMES[-1 - c] if -len(_RESULT_NAMES) <= c < 0 else None
            if why is None:
                why = 'error {}'.format(c)
        return 'meter unit {}: {}, {} failed transaction(s) in a row'.format(
            self.cfg.meter_address, why, self.fail_streak)

    def stats(self):
        """Counters for diagnostics; zero counters are left out (a diag answer holds 1 kB)."""
        s = self.master.stats
        out = {}
        for k, v in (('snap_ok', self.reader.snapshots_ok), ('snap_failed', self.reader.snapshots_failed),
                     ('frames_ok', s.ok), ('timeouts', s.timeouts), ('crc_errors', s.crc_errors),
                     ('wrong_unit', s.wrong_unit), ('bad_length', s.bad_length),
                     ('bad_function', s.bad_function), ('stray_bytes', s.stray_bytes),
                     ('overruns', s.overruns), ('bad_values', self.reader.bad_values)):
            if v:
                out[k] = v
        exc = {}
        for code in range(16):
            if s.exceptions[code]:
                exc['other' if code == 0 else '{:02d}'.format(code)] = s.exceptions[code]
        if exc:
            out['exceptions'] = exc
        why = self.failure()
        if why:
            out['failure'] = why
        return out
