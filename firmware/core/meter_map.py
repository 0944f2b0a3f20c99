"""Eastron SDM630 / SDM120 register maps and the snapshot reader (pure).

Both meters: function 0x04 (input registers), each value an IEEE-754 float32
in two registers, high word first. Addresses are the on-wire (0-based) ones.

One snapshot is read in as few transactions as the meter allows. Eastron's
protocol notes allow up to 40 parameters (80 registers) per request, and
everything a snapshot needs lies in 0x0000..0x004B (76 registers), so one
request per snapshot. It carries 16 unused registers (33 ms at 9600 baud), but
a second transaction costs more: its own 13 bytes and two t3.5 silences, the
meter's reply latency once more, and one more pass of the shell's byte pump
(docs/field-buses.md has the numbers). We assume, as Eastron meters do, that
unassigned registers inside a block read back as zero instead of raising an
exception. The blocks are data (BLOCKS_*), so a meter that disagrees needs a
table change, not a code change.
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

# (start, count) per transaction: V, I, P, PF, total P, f, import and export kWh in one read
BLOCKS_SDM630 = ((0x0000, 0x004C),)
BLOCKS_SDM120 = ((0x0000, 0x004C),)

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
    (F_MW1, REG_P_L1), (F_MW2, REG_P_L2), (F_MW3, REG_P_L3), (F_MW_TOTAL, REG_P_TOTAL),
    (F_PF1, REG_PF_L1), (F_PF2, REG_PF_L2), (F_PF3, REG_PF_L3),
    (F_MHZ, REG_FREQ), (F_IMPORT_WH, REG_IMPORT_KWH), (F_EXPORT_WH, REG_EXPORT_KWH),
)
MAP_SDM120 = (
    (F_MV1, REG_V_L1), (F_MA1, REG_I_L1), (F_MW1, REG_P_L1), (F_PF1, REG_PF_L1),
    (F_MHZ, REG_FREQ), (F_IMPORT_WH, REG_IMPORT_KWH), (F_EXPORT_WH, REG_EXPORT_KWH),
)

MODEL_NAMES = {"SDM630": SDM630, "SDM120": SDM120}


def model_from_name(name):
    """Config value METER_MODEL -> model id; ValueError naming the value."""
    m = MODEL_NAMES.get(name)
    if m is None:
        raise ValueError("METER_MODEL must be SDM630 or SDM120, not {!r}".format(name))
    return m


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


class MeterReader:
    """Drives a ModbusMaster through the blocks of one snapshot.

    start(now_ms) begins a snapshot when the master is idle; the shell runs the
    master's byte pump and hands each final result to on_result(). Only a
    snapshot whose every block was read fully and sanely replaces `reading`;
    any error aborts the snapshot and leaves the previous reading to age.
    """

    def __init__(self, master, model, unit, blocks=None):
        """blocks: (start, count) pairs overriding the model's table (a meter that
        refuses to read across unassigned registers); every mapped value must fall
        inside one block."""
        if model == SDM630:
            fmap = MAP_SDM630
            default = BLOCKS_SDM630
        elif model == SDM120:
            fmap = MAP_SDM120
            default = BLOCKS_SDM120
        else:
            raise ValueError("unknown meter model id")
        self.blocks = default if blocks is None else blocks
        if not self.blocks:
            raise ValueError("meter block table is empty")
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
        self.reading = MeterReading()
        self._stage = MeterReading()
        self.block = -1  # -1: no snapshot running
        self.snapshots_ok = 0
        self.snapshots_failed = 0
        self.bad_values = 0  # NaN/inf from the meter

    def busy(self):
        return self.block >= 0

    def start(self, now_ms):
        """Begin a snapshot; False if one runs or the master is busy."""
        if self.block >= 0:
            return False
        start, count = self.blocks[0]
        if not self.master.request(self.unit, start, count):
            return False
        self.block = 0
        return True

    def on_result(self, result, now_ms):
        """Feed the master's final result. Returns True when a snapshot completed."""
        if self.block < 0:
            return False
        if result != modbus.OK:
            self._fail()
            return False
        rx = self.master.rx
        vals = self._stage.vals
        for field, off in self.plan[self.block]:
            v = modbus.f32_milli(rx, 3 + 2 * off)
            if v == modbus.MILLI_INVALID:
                self.bad_values += 1
                self._fail()
                return False
            vals[field] = v
        self.block += 1
        if self.block < len(self.blocks):
            start, count = self.blocks[self.block]
            if not self.master.request(self.unit, start, count):
                self._fail()
                return False
            return False
        if self.model == SDM120:
            vals[F_MW_TOTAL] = vals[F_MW1]
        r = self.reading
        r.copy_from(self._stage)
        r.valid = True
        r.t_ms = now_ms
        r.seq += 1
        self.snapshots_ok += 1
        self.block = -1
        return True

    def _fail(self):
        # safe state: no snapshot running, previous reading kept and ageing
        self.block = -1
        self.snapshots_failed += 1
