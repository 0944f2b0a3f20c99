"""Eastron SDM630 / SDM120 register maps, the snapshot reader and its poll cycle (pure).

Both meters: function 0x04 (input registers), each value an IEEE-754 float32
in two registers, high word first. Addresses are the on-wire (0-based) ones.

Grid protection needs voltage and frequency often; the current and the energy
counters only every METER_POLL_MS. The master carries one transaction at a time, so
the snapshot is cut into short blocks (each fits a 50 ms control step at 9600 baud)
and the reader runs them in a cycle of three slots, one transaction each:

    V   the block holding the voltages        (0x0000, every cycle)
    f   the block holding frequency + energy  (0x0046, every cycle)
    X   the next other block of a snapshot    (current, power, PF; skipped when
                                               no snapshot is under way)

At 38400 baud the shell moves the bytes between control steps too (app/meter.py io,
between_steps()): a read takes about 20 ms and the cycle about 60 ms. Slower, a read
takes a control step or more, so voltage and frequency are at most three steps old. A
snapshot (its V and f blocks come from the cycle anyway) takes three cycles. V and f
lie 70 registers apart on both meters, too far for one short read. sense_ms() gives the
resulting worst time from a grid step to the control step that sees it; the
grid protection decides its trips that much earlier (core/grid.py). The blocks
are data (BLOCKS_*): a meter that disagrees needs a table change, not a code
change. The SDM630's total power is the sum of its three phase powers (the
meter's own total lies outside every short block).
"""

try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

from core import modbus, ticks

SDM630 = const(1)
SDM120 = const(2)
MAX_BLOCK_REGS = const(80)  # 40 floats: Eastron's documented request limit

# Register addresses (float32 = 2 registers)
REG_V_L1 = const(0x0000)
REG_V_L2 = const(0x0002)
REG_V_L3 = const(0x0004)
REG_I_L1 = const(0x0006)
REG_I_L2 = const(0x0008)
REG_I_L3 = const(0x000A)
REG_P_L1 = const(0x000C)
REG_P_L2 = const(0x000E)
REG_P_L3 = const(0x0010)
REG_PF_L1 = const(0x001E)
REG_PF_L2 = const(0x0020)
REG_PF_L3 = const(0x0022)
REG_P_TOTAL = const(0x0034)  # SDM630 only
REG_FREQ = const(0x0046)
REG_IMPORT_KWH = const(0x0048)
REG_EXPORT_KWH = const(0x004A)

# (start, count) per transaction; the block holding F_MV1 is the V slot's, the one
# holding F_MHZ the f slot's. 6 registers = 17 reply bytes: 34 ms on the wire at 9600
# with the t3.5 silences, so a transaction fits a 50 ms step with METER_REPLY_MS to spare.
BLOCKS_SDM630 = ((0x0000, 6), (0x0046, 6), (0x0006, 6), (0x000C, 6), (0x001E, 6))
BLOCKS_SDM120 = ((0x0000, 2), (0x0046, 6), (0x0006, 8), (0x001E, 2))
# For a port that cannot say when a reply ended (no rs485.rx_idle_us): every read then
# takes two steps whatever its size, so the snapshot's further values come in one read
# of three steps (I .. PF, 84 ms on the wire at 9600) and a snapshot completes every
# cycle (350 ms) instead of every third (900 ms).
BLOCKS_SDM630_TWO_STEP = ((0x0000, 6), (0x0046, 6), (0x0006, 30))
BLOCKS_SDM120_TWO_STEP = ((0x0000, 2), (0x0046, 6), (0x0006, 26))

# The meter's own time to answer, beyond the t3.5 silence it waits for the end of our
# request, that the cycle allows for (Eastron publishes none; our assumption). A slower
# meter stretches the cycle: MeterReader.slow counts the transactions that overran.
METER_REPLY_MS = const(10)
# How late the pump may look at the line after the moment it waited for: the shell sleeps
# in whole milliseconds (app/meter.py next_io_ms).
PUMP_WAKE_US = const(1000)

# Field ids of MeterReading and the register that fills each.
F_MV1 = const(0)
F_MV2 = const(1)
F_MV3 = const(2)
F_MA1 = const(3)
F_MA2 = const(4)
F_MA3 = const(5)
F_MW1 = const(6)
F_MW2 = const(7)
F_MW3 = const(8)
F_MW_TOTAL = const(9)
F_PF1 = const(10)
F_PF2 = const(11)
F_PF3 = const(12)
F_MHZ = const(13)
F_IMPORT_WH = const(14)
F_EXPORT_WH = const(15)
N_FIELDS = const(16)

FIELD_NAMES = (
    "mv1", "mv2", "mv3", "ma1", "ma2", "ma3", "mw1", "mw2", "mw3", "mw_total",
    "pf1_pm", "pf2_pm", "pf3_pm", "mhz", "import_wh", "export_wh",
)

# (field, register); V -> mV, A -> mA, W -> mW, PF -> per-mille, Hz -> mHz, kWh -> Wh
MAP_SDM630 = (
    (F_MV1, REG_V_L1), (F_MV2, REG_V_L2), (F_MV3, REG_V_L3),
    (F_MA1, REG_I_L1), (F_MA2, REG_I_L2), (F_MA3, REG_I_L3),
    (F_MW1, REG_P_L1), (F_MW2, REG_P_L2), (F_MW3, REG_P_L3),
    (F_PF1, REG_PF_L1), (F_PF2, REG_PF_L2), (F_PF3, REG_PF_L3),
    (F_MHZ, REG_FREQ), (F_IMPORT_WH, REG_IMPORT_KWH), (F_EXPORT_WH, REG_EXPORT_KWH),
)
MAP_SDM120 = (
    (F_MV1, REG_V_L1), (F_MA1, REG_I_L1), (F_MW1, REG_P_L1), (F_PF1, REG_PF_L1),
    (F_MHZ, REG_FREQ), (F_IMPORT_WH, REG_IMPORT_KWH), (F_EXPORT_WH, REG_EXPORT_KWH),
)

def model_from_name(name):
    """Config value METER_MODEL -> model id; ValueError naming the value. (Compared, not
    looked up in a dict: a dict made at import is RAM even frozen.)"""
    if name == "SDM630":
        return SDM630
    if name == "SDM120":
        return SDM120
    raise ValueError("METER_MODEL must be SDM630 or SDM120, not {!r}".format(name))


def _plan(blocks, fmap):
    # For each block: tuple of (field, register offset inside the block), so a
    # reply is decoded without searching.
    out = []
    for start, count in blocks:
        if count < 1 or count > MAX_BLOCK_REGS:
            raise ValueError("meter block of {} registers: must be 1..{}".format(count, MAX_BLOCK_REGS))
        if start < 0 or start + count > 0x10000:
            raise ValueError("meter block at {}: outside the register space".format(start))
        items = []
        for field, reg in fmap:
            if start <= reg and reg + 2 <= start + count:
                items.append((field, reg - start))
        out.append(tuple(items))
    return tuple(out)


class MeterReading:
    """One consistent snapshot. vals[F_*] in milli-units; a field the model
    lacks stays 0 (SDM120: L2/L3; its total power is copied from L1)."""

    def __init__(self):
        self.vals = [0] * N_FIELDS
        self.valid = False
        self.t_ms = 0  # now_ms when the snapshot completed
        self.seq = 0  # completed snapshots

    def get(self, name):
        return self.vals[FIELD_NAMES.index(name)]

    def age_ms(self, now_ms):
        """ms since the last valid snapshot; very large when there never was one.

        Ticks wrap at 2**30, so the age is taken modulo 2**30. An age beyond 2**29
        is not believable (a stamp from the future, or a meter silent so long the
        ticks came round again): the reading is then dropped for good, so a meter
        that went quiet cannot look fresh after the wrap."""
        if not self.valid:
            return ticks.NEVER
        d = ticks.age(now_ms, self.t_ms)
        if d == ticks.NEVER:
            self.valid = False
        return d

    def copy_from(self, other):
        v = self.vals
        o = other.vals
        for i in range(N_FIELDS):
            v[i] = o[i]


def _holding(blocks, reg):
    """Index of the block that holds the float at reg, or -1."""
    for i in range(len(blocks)):
        start, count = blocks[i]
        if start <= reg and reg + 2 <= start + count:
            return i
    return -1


def blocks_of(model, rx_time=True):
    """The model's block table; rx_time False: for a port that cannot tell when a reply ended."""
    if model == SDM630:
        return BLOCKS_SDM630 if rx_time else BLOCKS_SDM630_TWO_STEP
    if model == SDM120:
        return BLOCKS_SDM120 if rx_time else BLOCKS_SDM120_TWO_STEP
    raise ValueError("unknown meter model id")


def slot_steps(count, baud, step_ms):
    """Control steps one read of `count` registers holds the line for when the shell moves
    bytes once per step: request, reply, the t3.5 silences and METER_REPLY_MS, rounded up
    to whole steps."""
    us = modbus.ModbusMaster(baud, 100).wire_time_us(count) + METER_REPLY_MS * 1000
    return -(-us // (step_ms * 1000))


def cycle_steps(model, baud, step_ms, blocks=None):
    """(V slot, f slot, longest X slot, whole cycle) in control steps, one transaction per
    step; the f slot is 0 when one block holds both."""
    blocks = blocks_of(model) if blocks is None else blocks
    vb = _holding(blocks, REG_V_L1)
    fb = _holding(blocks, REG_FREQ)
    v = slot_steps(blocks[vb][1], baud, step_ms)
    f = slot_steps(blocks[fb][1], baud, step_ms) if fb != vb else 0
    x = 0
    for i in range(len(blocks)):
        if i != vb and i != fb:
            n = slot_steps(blocks[i][1], baud, step_ms)
            x = n if n > x else x
    return v, f, x, v + f + x


def pump_slot_us(count, baud):
    """Microseconds one read of `count` registers holds the line when the shell pumps the
    bytes between control steps (app/meter.py io): request, reply, both t3.5 silences,
    METER_REPLY_MS, and PUMP_WAKE_US for each of the pump's three looks at the line (the
    request's end, the reply's due time, the silence after it), which fall on whole
    milliseconds."""
    return (modbus.ModbusMaster(baud, 100).wire_time_us(count) + METER_REPLY_MS * 1000
            + 3 * PUMP_WAKE_US)


def cycle_us(model, baud, blocks=None):
    """(V slot, f slot, longest X slot, whole cycle) in microseconds, pumped between
    control steps; the f slot is 0 when one block holds both."""
    blocks = blocks_of(model) if blocks is None else blocks
    vb = _holding(blocks, REG_V_L1)
    fb = _holding(blocks, REG_FREQ)
    v = pump_slot_us(blocks[vb][1], baud)
    f = pump_slot_us(blocks[fb][1], baud) if fb != vb else 0
    x = 0
    for i in range(len(blocks)):
        if i != vb and i != fb:
            n = pump_slot_us(blocks[i][1], baud)
            x = n if n > x else x
    return v, f, x, v + f + x


def _sense_steps(model, baud, step_ms, blocks):
    # one transaction per step: the step lands just after its block's request (on a
    # step), the next read of that block leaves a cycle later and is used a read later
    v, f, _x, cycle = cycle_steps(model, baud, step_ms, blocks)
    q = v if v > f else f
    return (cycle + q - 1) * step_ms


def _sense_pumped(model, baud, step_ms, blocks):
    # pumped: the step lands just after its block's request (any time before it), the
    # next read of that block leaves a cycle later, its reply is in a read's time later,
    # and the first control step after that uses it
    v, f, _x, cycle = cycle_us(model, baud, blocks)
    q = v if v > f else f
    step_us = step_ms * 1000
    return -(-(cycle + q) // step_us) * step_ms


def between_steps(model, baud, step_ms, blocks=None):
    """True when pumping the meter's bytes between control steps shows a grid step sooner
    than one transaction per step: at 38400 baud (100 ms against 150 ms for the SDM630).
    At 19200 baud and below it does not: a transaction there takes most of a step or more,
    and a request sent on the step a grid step lands on already sees it."""
    blocks = blocks_of(model) if blocks is None else blocks
    return _sense_pumped(model, baud, step_ms, blocks) < _sense_steps(model, baud, step_ms, blocks)


def sense_ms(model, baud, step_ms, blocks=None):
    """Worst time from a grid step (on a control step) to the control step that first
    uses a reading showing it, for voltage and for frequency alike, with the meter task
    pumping between steps where that is sooner (between_steps). A step between two
    control steps adds up to one step (docs/grid.md)."""
    blocks = blocks_of(model) if blocks is None else blocks
    a = _sense_steps(model, baud, step_ms, blocks)
    b = _sense_pumped(model, baud, step_ms, blocks)
    return b if b < a else a


def read_every_ms(model, baud, step_ms, blocks=None):
    """The longest time between two reads of the voltage (or of the frequency): the cycle,
    pumped or one transaction per step as the meter task runs it."""
    blocks = blocks_of(model) if blocks is None else blocks
    if between_steps(model, baud, step_ms, blocks):
        return -(-cycle_us(model, baud, blocks)[3] // 1000)
    return cycle_steps(model, baud, step_ms, blocks)[3] * step_ms


class MeterReader:
    """Drives a ModbusMaster through the blocks of the meter.

    Two ways, one transaction at a time; the shell runs the master's byte pump and
    hands each final result to on_result():

    - the poll cycle (the meter task): snapshot(now_ms) asks for a snapshot when one
      is due; next(now_ms) sends the next transaction of the V, f, X cycle whenever
      the master is idle. Every V or f read refreshes `mv`/`mhz` at once; a snapshot
      completes when each of its blocks has been read since it was asked for.
    - start(now_ms): one whole snapshot, its blocks back to back (tools, tests).

    Only a snapshot whose every block was read fully and sanely replaces `reading`;
    any error aborts the snapshot and leaves the previous reading to age.
    """

    def __init__(self, master, model, unit, blocks=None):
        """blocks: (start, count) pairs overriding the model's table (a meter that
        refuses to read across unassigned registers); every mapped value must fall
        inside one block."""
        if model == SDM630:
            fmap = MAP_SDM630
        elif model == SDM120:
            fmap = MAP_SDM120
        else:
            raise ValueError("unknown meter model id")
        self.blocks = blocks_of(model) if blocks is None else blocks
        if not self.blocks:
            raise ValueError("meter block table is empty")
        if len(self.blocks) > 16:
            raise ValueError("meter block table longer than 16 blocks")
        self.plan = _plan(self.blocks, fmap)
        # a table of our own, built here: the module's constant tuples stay out of each poll
        self.blocks = tuple([(start, count) for start, count in self.blocks])
        covered = 0
        for items in self.plan:
            covered += len(items)
        if covered != len(fmap):
            raise ValueError("meter block table misses or repeats a value of the map")
        if unit < 1 or unit > 247:
            raise ValueError("METER_ADDRESS out of 1..247")
        self.master = master
        self.model = model
        self.unit = unit
        self.v_block = _holding(self.blocks, REG_V_L1)
        self.f_block = _holding(self.blocks, REG_FREQ)
        self.all_bits = (1 << len(self.blocks)) - 1
        self.reading = MeterReading()
        self._stage = MeterReading()
        self.block = -1  # the block in flight, -1: none
        self.chain = False  # start(): the blocks of one snapshot back to back
        self.pending = 0  # blocks the snapshot under way still needs (bit i: block i)
        self.slot = 0  # next slot of the cycle: 0 V, 1 f, 2 X
        # the latest voltage and frequency, each from its own read
        self.mv = 0
        self.mhz = 0
        self.mv_ms = 0
        self.mhz_ms = 0
        self.have_mv = False
        self.have_mhz = False
        self.last_ok = False  # the last transaction gave sane values
        self.snapshots_ok = 0
        self.snapshots_failed = 0
        self.bad_values = 0  # NaN/inf from the meter

    def busy(self):
        """A transaction is in flight (or start()'s snapshot still runs)."""
        return self.block >= 0

    def start(self, now_ms):
        """Begin a snapshot read back to back; False if a transaction is in flight."""
        if self.block >= 0:
            return False
        start, count = self.blocks[0]
        if not self.master.request(self.unit, start, count):
            return False
        self.block = 0
        self.chain = True
        self.pending = self.all_bits
        return True

    def snapshot(self, now_ms):
        """Ask the cycle for a snapshot; False while one is under way."""
        if self.pending:
            return False
        self.pending = self.all_bits
        return True

    def next(self, now_ms):
        """Send the next transaction of the cycle; False if one is in flight or the
        master refused. The X slot is skipped when no snapshot needs another block."""
        if self.block >= 0:
            return False
        for _ in range(3):
            s = self.slot
            self.slot = s + 1 if s < 2 else 0
            if s == 0:
                b = self.v_block
            elif s == 1:
                b = self.f_block
                if b == self.v_block:
                    continue      # one block holds both
            else:
                b = self._next_other()
                if b < 0:
                    continue
            start, count = self.blocks[b]
            if not self.master.request(self.unit, start, count):
                return False
            self.block = b
            return True
        return False

    def _next_other(self):
        p = self.pending
        for i in range(len(self.blocks)):
            if p & (1 << i) and i != self.v_block and i != self.f_block:
                return i
        return -1

    def on_result(self, result, now_ms):
        """Feed the master's final result. Returns True when a snapshot completed."""
        b = self.block
        if b < 0:
            return False
        self.block = -1
        self.last_ok = False
        if result != modbus.OK:
            self._fail()
            return False
        rx = self.master.rx
        vals = self._stage.vals
        for field, off in self.plan[b]:
            v = modbus.f32_milli(rx, 3 + 2 * off)
            if v == modbus.MILLI_INVALID:
                self.bad_values += 1
                self._fail()
                return False
            vals[field] = v
        self.last_ok = True
        if b == self.v_block:
            self.mv = vals[F_MV1]
            self.mv_ms = now_ms
            self.have_mv = True
        if b == self.f_block:
            self.mhz = vals[F_MHZ]
            self.mhz_ms = now_ms
            self.have_mhz = True
        had = self.pending & (1 << b)
        self.pending &= ~(1 << b)
        if self.chain:
            if b + 1 < len(self.blocks):
                start, count = self.blocks[b + 1]
                if not self.master.request(self.unit, start, count):
                    self._fail()
                    return False
                self.block = b + 1
                return False
            self.chain = False
        if not had or self.pending:
            return False
        return self._complete(now_ms)

    def _complete(self, now_ms):
        vals = self._stage.vals
        if self.model == SDM120:
            vals[F_MW_TOTAL] = vals[F_MW1]
        else:
            vals[F_MW_TOTAL] = _sat_add(_sat_add(vals[F_MW1], vals[F_MW2]), vals[F_MW3])
        r = self.reading
        r.copy_from(self._stage)
        r.valid = True
        r.t_ms = now_ms
        r.seq += 1
        self.snapshots_ok += 1
        return True

    def _fail(self):
        # safe state: no transaction in flight, the snapshot under way dropped (the
        # previous reading kept and ageing), the cycle goes on
        self.block = -1
        self.chain = False
        if self.pending:
            self.pending = 0
            self.snapshots_failed += 1


def _sat_add(a, b):
    """a + b saturated at +-MILLI_MAX without passing the small-int range."""
    if a > 0 and b > modbus.MILLI_MAX - a:
        return modbus.MILLI_MAX
    if a < 0 and b < -modbus.MILLI_MAX - a:
        return -modbus.MILLI_MAX
    return a + b
