"""Generate the firmware CAN codec (firmware/core/can_msgs.py) from the DBC.

The DBC (firmware/can/v2g.dbc) is the single source of the 0x600-series
frames. The firmware cannot parse a DBC, so this tool turns every message into
a small class of int fields plus pack/unpack functions that use byte
arithmetic only (no struct, no floats, no allocation), and a receiver that
checks DLC, checksum, rolling counter and value ranges.

Firmware units follow the signal's DBC unit: A -> mA, V -> mV, % -> per-mille,
degC -> 0.1 degC, Wh -> Wh, no unit -> raw. A signal whose factor or offset is
not a whole number of firmware units is refused (that would need floats).

    python -m host_tools.gen_can            # rewrite can_msgs.py
    python -m host_tools.gen_can --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import cantools

ROOT = Path(__file__).resolve().parent.parent
DBC_PATH = ROOT / "firmware" / "can" / "v2g.dbc"
OUT_PATH = ROOT / "firmware" / "core" / "can_msgs.py"

# DBC unit -> (firmware attribute suffix, multiplier from the DBC unit)
UNITS = {
    "A": ("_ma", 1000),
    "V": ("_mv", 1000),
    "%": ("_pm", 10),
    "degC": ("_dc", 10),
    "Wh": ("_wh", 1),
    "": ("", 1),
}
OUR_NODE = "EVSE"
MAX_BITS = 24  # keeps every intermediate below MicroPython's small-int limit

# Cycle times and value names other modules read (firmware, boards, host tools, bench, tests).
# Every other one is written underscored: mpy-cross folds it away (no global, no name in
# RAM); CPython still has it as `_NAME`. tests/host/test_can_dbc.py checks this list against
# the tree. Message ids (<NAME>_ID) and classes are always public.
EXPORTED = frozenset((
    "VCU_POWER_REQUEST_CYCLE_MS", "BMS_STATUS_CYCLE_MS", "BMS_INFO_CYCLE_MS",
    "REQ_MODE_IDLE", "REQ_MODE_CHARGE", "REQ_MODE_DISCHARGE", "REQ_MODE_STOP",
    "CP_STATE_C", "CP_STATE_F",
    "CP_STATE_NAMES",
    "MODE_CHARGE_ONLY", "MODE_FAULT", "MODE_NAMES",
    "LIMIT_CHARGE_SRC_STATION", "LIMIT_CHARGE_SRC_BMS", "LIMIT_CHARGE_SRC_NAMES",
    "LIMIT_DISCHARGE_SRC_CSMS",
))


def public(name: str) -> str:
    """The name as can_msgs.py spells it: underscored unless another module reads it."""
    return name if name in EXPORTED else "_" + name


class GenError(ValueError):
    pass


def snake(name: str) -> str:
    if len(name) <= 3:
        return name.lower()
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return s.lower()


def camel(msg_name: str) -> str:
    return "".join(p[:1].upper() + p[1:].lower() if p.isupper() else p for p in msg_name.split("_"))


def _frac(x) -> Fraction:
    return Fraction(str(x))


class Sig:
    def __init__(self, msg, s):
        where = f"{msg.name}.{s.name}"
        if s.byte_order != "little_endian":
            raise GenError(f"{where}: only little-endian (Intel) signals are supported")
        if s.length > MAX_BITS:
            raise GenError(f"{where}: longer than {MAX_BITS} bits")
        if s.start + s.length > 8 * msg.length:
            raise GenError(f"{where}: does not fit the message length")
        unit = s.unit or ""
        if unit not in UNITS:
            raise GenError(f"{where}: unit {unit!r} has no firmware unit")
        suffix, scale = UNITS[unit]
        mul = _frac(s.scale) * scale
        off = _frac(s.offset) * scale
        if mul.denominator != 1 or off.denominator != 1 or mul == 0:
            raise GenError(f"{where}: factor/offset not a whole number of firmware units")
        self.name = s.name
        self.start = s.start
        self.length = s.length
        self.signed = s.is_signed
        self.mul = int(mul)
        self.off = int(off)
        base = snake(s.name)
        self.attr = base if base.endswith(suffix) else base + suffix
        if self.signed:
            lo, hi = -(1 << (s.length - 1)), (1 << (s.length - 1)) - 1
        else:
            lo, hi = 0, (1 << s.length) - 1
        # the DBC's physical range, in raw units, inside what the bits hold
        if s.minimum is not None:
            lo = max(lo, math.ceil((_frac(s.minimum) - _frac(s.offset)) / _frac(s.scale)))
        if s.maximum is not None:
            hi = min(hi, math.floor((_frac(s.maximum) - _frac(s.offset)) / _frac(s.scale)))
        self.raw_min, self.raw_max = lo, hi
        self.choices = dict(s.choices) if s.choices else None

    def extract(self) -> str:
        """Expression for the raw unsigned value from bytearray d."""
        end = self.start + self.length  # exclusive bit
        terms = []
        pos = 0  # where this byte's bits land in the result
        bit = self.start
        while bit < end:
            byte, bsh = divmod(bit, 8)
            take = min(8 - bsh, end - bit)
            mask = (1 << take) - 1
            expr = f"d[{byte}]"
            if bsh:
                expr = f"({expr} >> {bsh})"
            if take < 8 - bsh:
                expr = f"({expr} & 0x{mask:X})"
            if pos:
                expr = f"({expr} << {pos})"
            terms.append(expr)
            pos += take
            bit += take
        return " | ".join(terms)

    def insert(self, var: str) -> list[str]:
        """Statements OR-ing raw (unsigned, masked) `var` into d."""
        out = []
        end = self.start + self.length
        bit = self.start
        pos = 0
        while bit < end:
            byte, bsh = divmod(bit, 8)
            take = min(8 - bsh, end - bit)
            mask = (1 << take) - 1
            expr = var
            if pos:
                expr = f"({expr} >> {pos})"
            expr = f"({expr} & 0x{mask:X})"
            if bsh:
                expr = f"({expr} << {bsh})"
            out.append(f"d[{byte}] |= {expr}")
            pos += take
            bit += take
        return out


class Msg:
    def __init__(self, m):
        if m.is_extended_frame:
            raise GenError(f"{m.name}: extended ids are not used on this bus")
        self.name = m.name
        self.id = m.frame_id
        self.dlc = m.length
        self.cls = camel(m.name)
        self.fn = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", self.cls).lower()
        self.const = self.fn.upper()
        self.cycle_ms = m.cycle_time or 0
        self.tx = OUR_NODE in m.senders
        self.sigs = []
        self.counter = None
        self.checksum = False
        for s in m.signals:
            if s.name == "Checksum":
                if s.start != 56 or s.length != 8 or m.length != 8:
                    raise GenError(f"{m.name}: Checksum must be byte 7 of an 8-byte frame")
                self.checksum = True
                continue
            sig = Sig(m, s)
            if s.name == "Counter":
                if s.length != 4 or s.is_signed:
                    raise GenError(f"{m.name}: Counter must be 4 bits unsigned")
                self.counter = sig
            self.sigs.append(sig)


def load(path: Path = DBC_PATH) -> list[Msg]:
    db = cantools.database.load_file(str(path))
    msgs = [Msg(m) for m in sorted(db.messages, key=lambda m: m.frame_id)]
    ids = [m.id for m in msgs]
    if len(set(ids)) != len(ids):
        raise GenError("duplicate message ids")
    return msgs


def _enum_lines(msgs: list[Msg]) -> list[str]:
    out = []
    done = set()
    for m in msgs:
        for s in m.sigs:
            if not s.choices:
                continue
            key = snake(s.name).upper()
            if key in done:
                continue
            done.add(key)
            for v, name in sorted(s.choices.items()):
                cname = re.sub(r"[^A-Za-z0-9]", "_", str(name)).upper()
                out.append(f"{public(key + '_' + cname)} = const({v})")
            vals = sorted(s.choices)
            if vals == list(range(len(vals))):
                names = public(key + "_NAMES")
                folded = names.startswith("_")
                out.append(f"{names} = " + ("const((" if folded else "("))
                for v in vals:
                    out.append(f'    "{s.choices[v]}",')
                out.append("))" if folded else ")")
            out.append("")
    return out


def generate(msgs: list[Msg] | None = None) -> str:
    msgs = load() if msgs is None else msgs
    L = []
    a = L.append
    a('"""CAN codec for the 0x600-series VCU/BMS frames (GENERATED, do not edit).')
    a("")
    a("Source: firmware/can/v2g.dbc; generator: host_tools/gen_can.py. Pure: ints only,")
    a("byte arithmetic, no allocation once the objects exist.")
    a('"""')
    a("")
    a("try:")
    a("    from micropython import const")
    a("except ImportError:  # CPython (host tools, tests): const() is the value")
    a("    def const(x):")
    a("        return x")
    a("")
    a("from core import ticks")
    a("")
    for m in msgs:
        a(f"{m.const}_ID = const(0x{m.id:03X})")
    a("")
    for m in msgs:
        a(f"{public(m.const + '_CYCLE_MS')} = const({m.cycle_ms})")
    a("")
    L.extend(_enum_lines(msgs))
    a("")
    a("def checksum(d, can_id):")
    a('    """Byte 7: 0xFF XOR low byte of (sum of bytes 0..6 + id low byte + id high byte)."""')
    a("    s = (can_id & 0xFF) + (can_id >> 8)")
    a("    for i in range(7):")
    a("        s += d[i]")
    a("    return (s & 0xFF) ^ 0xFF")
    a("")
    a("")
    for m in msgs:
        a("")
        a(f"class {m.cls}:")
        a(f'    """0x{m.id:03X} {m.name}, DLC {m.dlc}, every {m.cycle_ms} ms."""')
        a("")
        a("    def __init__(self):")
        for s in m.sigs:
            a(f"        self.{s.attr} = 0")
        a("")
        a("")
        a(f"def unpack_{m.fn}(d, o):")
        a(f'    """Decode d[0:{m.dlc}] into o. False (o unchanged) if a value is outside the DBC range."""')
        for i, s in enumerate(m.sigs):
            a(f"    r{i} = {s.extract()}")
            if s.signed:
                a(f"    if r{i} & 0x{1 << (s.length - 1):X}:")
                a(f"        r{i} -= 0x{1 << s.length:X}")
        conds = []
        for i, s in enumerate(m.sigs):
            full_lo = -(1 << (s.length - 1)) if s.signed else 0
            full_hi = (1 << (s.length - 1)) - 1 if s.signed else (1 << s.length) - 1
            if s.raw_min > full_lo:
                conds.append(f"r{i} < {s.raw_min}")
            if s.raw_max < full_hi:
                conds.append(f"r{i} > {s.raw_max}")
        if conds:
            a("    if " + " or ".join(conds) + ":")
            a("        return False")
        for i, s in enumerate(m.sigs):
            expr = f"r{i}"
            if s.mul != 1:
                expr = f"{expr} * {s.mul}"
            if s.off:
                expr = f"{expr} + {s.off}" if s.off > 0 else f"{expr} - {-s.off}"
            a(f"    o.{s.attr} = {expr}")
        a("    return True")
        a("")
        a("")
        a(f"def pack_{m.fn}(o, d):")
        a(f'    """Encode o into d[0:{m.dlc}], rounding to the DBC resolution and saturating at')
        a('    its range; returns how many values were saturated."""')
        a(f"    for i in range({m.dlc}):")
        a("        d[i] = 0")
        a("    n = 0")
        for s in m.sigs:
            v = f"o.{s.attr}"
            if s.off:
                v = f"{v} - {s.off}" if s.off > 0 else f"{v} + {-s.off}"
            if s.mul != 1:
                v = f"({v} + {s.mul // 2}) // {s.mul}"
            a(f"    r = {v}")
            a(f"    if r < {s.raw_min}:")
            a(f"        r = {s.raw_min}")
            a("        n += 1")
            a(f"    elif r > {s.raw_max}:")
            a(f"        r = {s.raw_max}")
            a("        n += 1")
            if s.signed:
                a(f"    r &= 0x{(1 << s.length) - 1:X}")
            for stmt in s.insert("r"):
                a(f"    {stmt}")
        if m.checksum:
            a(f"    d[7] = checksum(d, 0x{m.id:03X})")
        a("    return n")
        a("")
    rx = [m for m in msgs if not m.tx]
    tx = [m for m in msgs if m.tx]
    a("")
    a("class CanStats:")
    a("    def __init__(self):")
    for name in ("rx_ok", "unknown_id", "bad_dlc", "bad_checksum", "bad_range", "counter_repeat",
                 "counter_skip", "tx", "saturated"):
        a(f"        self.{name} = 0")
    a("")
    a("")
    a("class CanRx:")
    a('    """Frames the vehicle sends. feed() checks and decodes into the objects below;')
    a("    a rejected frame is counted and changes nothing. last_ms[i] is when message i")
    a('    (index in RX_IDS) was last accepted, -1 before the first."""')
    a("")
    a("    RX_IDS = (" + ", ".join(f"{m.const}_ID" for m in rx) + ",)")
    a("")
    a("    def __init__(self, stats=None):")
    a("        self.stats = stats if stats is not None else CanStats()")
    for m in rx:
        a(f"        self.{m.fn} = {m.cls}()")
    a(f"        self.last_ms = [-1] * {len(rx)}")
    a(f"        self.last_counter = [-1] * {len(rx)}")
    a("")
    a("    def feed(self, can_id, d, n, now_ms):")
    a('        """Returns the accepted id, or 0 when the frame was rejected."""')
    a("        st = self.stats")
    for i, m in enumerate(rx):
        kw = "if" if i == 0 else "elif"
        a(f"        {kw} can_id == {m.const}_ID:")
        a(f"            if n != {m.dlc}:")
        a("                st.bad_dlc += 1")
        a("                return 0")
        if m.checksum:
            a(f"            if d[7] != checksum(d, {m.const}_ID):")
            a("                st.bad_checksum += 1")
            a("                return 0")
        if m.counter is not None:
            a(f"            c = {m.counter.extract()}")
            a(f"            last = self.last_counter[{i}]")
            a("            if c == last:")
            a("                st.counter_repeat += 1  # a stuck sender repeats its frame")
            a("                return 0")
        a(f"            if not unpack_{m.fn}(d, self.{m.fn}):")
        a("                st.bad_range += 1")
        a("                return 0")
        if m.counter is not None:
            a("            if last >= 0 and c != (last + 1) & 15:")
            a("                st.counter_skip += 1")
            a(f"            self.last_counter[{i}] = c")
        a(f"            self.last_ms[{i}] = now_ms")
        a("            st.rx_ok += 1")
        a("            return can_id")
    a("        st.unknown_id += 1")
    a("        return 0")
    a("")
    a("    def age_ms(self, i, now_ms):")
    a('        """ms since RX_IDS[i] was last accepted; very large if never.')
    a("")
    a("        Ticks wrap at 2**30 (time.ticks_ms), so the age is taken modulo 2**30. An age")
    a("        beyond 2**29 is not believable (a stamp from the future, or silence long enough")
    a("        to come round again): the message then counts as never received, for good,")
    a('        so a BMS silent for days cannot look fresh after the wrap."""')
    a("        t = self.last_ms[i]")
    a("        if t < 0:")
    a("            return ticks.NEVER")
    a("        d = ticks.age(now_ms, t)")
    a("        if d == ticks.NEVER:")
    a("            self.last_ms[i] = -1")
    a("        return d")
    a("")
    a("")
    a("class CanTx:")
    a('    """Frames the controller sends: fill the object, then frame_<name>(buf) packs it')
    a('    with the next rolling counter and returns the DLC (the id is <NAME>_ID)."""')
    a("")
    a("    def __init__(self, stats=None):")
    a("        self.stats = stats if stats is not None else CanStats()")
    for m in tx:
        a(f"        self.{m.fn} = {m.cls}()")
    a("")
    for m in tx:
        a(f"    def frame_{m.fn}(self, d):")
        a(f"        o = self.{m.fn}")
        if m.counter is not None:
            a(f"        c = o.{m.counter.attr}")
        a(f"        self.stats.saturated += pack_{m.fn}(o, d)")
        if m.counter is not None:
            a(f"        o.{m.counter.attr} = (c + 1) & 15")
        a("        self.stats.tx += 1")
        a(f"        return {m.dlc}")
        a("")
    while L and L[-1] == "":
        L.pop()
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if can_msgs.py is not what the DBC gives")
    ap.add_argument("--dbc", type=Path, default=DBC_PATH)
    ap.add_argument("--out", type=Path, default=OUT_PATH)
    args = ap.parse_args(argv)
    try:
        text = generate(load(args.dbc))
    except GenError as e:
        print(f"gen_can: {args.dbc}: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"gen_can: {args.out} is out of date; run python -m host_tools.gen_can", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
