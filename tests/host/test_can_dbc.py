"""The DBC is the single source: the generated firmware codec matches it, and
frames cross between the firmware codec and cantools in both directions."""

import math
import random
import re
from fractions import Fraction

import cantools
import pytest

from host_tools import gen_can, vm

vm.firmware_sys_path("sim")

from core import can_msgs as cm  # noqa: E402

ROOT = gen_can.ROOT
DB = cantools.database.load_file(str(gen_can.DBC_PATH))
MSGS = {m.name: m for m in gen_can.load()}


def _value(name):
    """A generated constant, public or underscored (CPython keeps both as globals)."""
    assert gen_can.public(name) == name or not hasattr(cm, name), name
    return getattr(cm, gen_can.public(name))


def _codec(name):
    m = MSGS[name]
    return m, getattr(cm, m.cls), getattr(cm, "pack_" + m.fn), getattr(cm, "unpack_" + m.fn)


def test_generated_codec_is_up_to_date():
    assert gen_can.OUT_PATH.read_text() == gen_can.generate(), "run: python -m host_tools.gen_can"
    assert gen_can.main(["--check"]) == 0


def test_dbc_value_tables_are_the_controllers_own_numbers():
    # the firmware sends the controller's indices unmapped (app/canbus.py): the DBC names
    # each one as the controller does, every limit source included, so a logger decoding
    # with the DBC reads what the controller's telemetry says
    from core import limits, pilot
    from core.controller import MODES

    sigs = {(m.frame_id, s.name): s for m in DB.messages for s in m.signals}
    mode = sigs[(0x610, "Mode")].choices
    assert [str(mode[v]) for v in sorted(mode)] == list(MODES) and sorted(mode) == list(range(len(MODES)))
    cp = sigs[(0x610, "CpState")].choices
    assert [str(cp[v]) for v in sorted(cp)] == list(pilot.LETTERS[:pilot.F + 1])
    assert sorted(cp) == list(range(pilot.F + 1))
    for name in ("LimitChargeSrc", "LimitDischargeSrc"):
        src = sigs[(0x611, name)].choices
        assert sorted(src) == list(range(limits.N_SOURCES + 1)), name
        assert str(src[0]) == "none"
        assert [str(src[i + 1]) for i in range(limits.N_SOURCES)] == list(limits.SOURCES), name
        assert limits.N_SOURCES + 1 <= 1 << sigs[(0x611, name)].length
    assert cm.LIMIT_CHARGE_SRC_STATION == limits.STATION + 1
    assert cm.MODE_FAULT == MODES.index("fault")


def test_every_dbc_message_has_a_codec_and_id():
    for msg in DB.messages:
        m, cls, pack, unpack = _codec(msg.name)
        assert getattr(cm, m.const + "_ID") == msg.frame_id
        assert _value(m.const + "_CYCLE_MS") == msg.cycle_time
        o = cls()
        for s in msg.signals:
            if s.name != "Checksum":
                assert hasattr(o, next(x.attr for x in m.sigs if x.name == s.name))
    rx_ids = {msg.frame_id for msg in DB.messages if "EVSE" not in msg.senders}
    assert set(cm.CanRx.RX_IDS) == rx_ids


def _phys_to_fw(sig, value):
    return round(value * gen_can.UNITS[sig.unit or ""][1])


def _random_phys(sig, rng):
    raw_lo = int(round((sig.minimum - sig.offset) / sig.scale))
    raw_hi = int(round((sig.maximum - sig.offset) / sig.scale))
    raw = rng.randint(raw_lo, raw_hi)
    return raw * sig.scale + sig.offset


@pytest.mark.parametrize("name", sorted(MSGS))
def test_firmware_encode_cantools_decode(name):
    msg = DB.get_message_by_name(name)
    m, cls, pack, _ = _codec(name)
    rng = random.Random(name)
    for _ in range(300):
        o = cls()
        want = {}
        for s in m.sigs:
            sig = msg.get_signal_by_name(s.name)
            phys = _random_phys(sig, rng)
            want[s.name] = phys
            setattr(o, s.attr, _phys_to_fw(sig, phys))
        d = bytearray(8)
        assert pack(o, d) == 0
        got = msg.decode(bytes(d), decode_choices=False, scaling=True)
        for s in m.sigs:
            assert got[s.name] == pytest.approx(want[s.name], abs=msg.get_signal_by_name(s.name).scale / 2)
        if m.checksum:
            assert got["Checksum"] == cm.checksum(d, msg.frame_id)


@pytest.mark.parametrize("name", sorted(MSGS))
def test_cantools_encode_firmware_decode(name):
    msg = DB.get_message_by_name(name)
    m, cls, _, unpack = _codec(name)
    rng = random.Random(name + "x")
    for _ in range(300):
        vals = {}
        for sig in msg.signals:
            vals[sig.name] = _random_phys(sig, rng) if sig.name != "Checksum" else 0
        d = bytearray(msg.encode(vals, scaling=True, strict=True))
        if m.checksum:
            d[7] = cm.checksum(d, msg.frame_id)
        o = cls()
        assert unpack(d, o)
        for s in m.sigs:
            sig = msg.get_signal_by_name(s.name)
            assert getattr(o, s.attr) == _phys_to_fw(sig, vals[s.name]), (name, s.name)
        # and the receiver path for frames the vehicle sends
        if msg.frame_id in cm.CanRx.RX_IDS:
            rx = cm.CanRx()
            assert rx.feed(msg.frame_id, d, len(d), 5) == msg.frame_id


def test_signal_layout_matches_dbc():
    """start bit, length, byte order, signedness, factor and offset of every signal."""
    for msg in DB.messages:
        m = MSGS[msg.name]
        assert m.dlc == msg.length and m.id == msg.frame_id
        for sig in msg.signals:
            if sig.name == "Checksum":
                assert (sig.start, sig.length) == (56, 8) and m.checksum
                continue
            s = next(x for x in m.sigs if x.name == sig.name)
            assert (s.start, s.length, s.signed) == (sig.start, sig.length, sig.is_signed)
            assert sig.byte_order == "little_endian"
            mult = gen_can.UNITS[sig.unit or ""][1]
            assert s.mul == round(sig.scale * mult) and s.off == round(sig.offset * mult)
            # a single set bit lands where cantools puts it
            o = getattr(cm, m.cls)()
            fw = s.off + s.mul * (1 if s.raw_max >= 1 else -1)
            setattr(o, s.attr, fw)
            d = bytearray(8)
            getattr(cm, "pack_" + m.fn)(o, d)
            got = msg.decode(bytes(d), decode_choices=False, scaling=False)
            assert got[sig.name] == (1 if s.raw_max >= 1 else -1)


def test_generator_refuses_what_firmware_cannot_do(tmp_path):
    bad = gen_can.DBC_PATH.read_text().replace('SoH : 48|8@1+ (0.5,0)', 'SoH : 55|8@0+ (0.5,0)')
    p = tmp_path / "bad.dbc"
    p.write_text(bad)
    with pytest.raises(gen_can.GenError, match="little-endian"):
        gen_can.load(p)
    bad = gen_can.DBC_PATH.read_text().replace('TempMax : 48|8@1+ (1,-40)', 'TempMax : 48|8@1+ (0.33,-40)')
    p.write_text(bad)
    with pytest.raises(gen_can.GenError, match="whole number"):
        gen_can.load(p)


# ---- fixed edge cases, every signal of every message, both directions ----------------------
#
# The random round trips above rarely hit the ends of a range, the sign boundary or every
# value-table entry. Here each of those is set on its own while every other signal of the
# frame sits at its minimum, then at its maximum, so a value that bleeds into a neighbour's
# bits or loses its sign shows up. Ranges are worked out from the DBC here, independently
# of the generator, and compared with what the generator derived.

def _bits(sig):
    if sig.is_signed:
        return -(1 << (sig.length - 1)), (1 << (sig.length - 1)) - 1
    return 0, (1 << sig.length) - 1


def _raw_range(sig):
    """The DBC physical [min|max] in raw units, inside what the bits hold."""
    lo, hi = _bits(sig)
    scale, off = Fraction(str(sig.scale)), Fraction(str(sig.offset))
    lo = max(lo, math.ceil((Fraction(str(sig.minimum)) - off) / scale))
    hi = min(hi, math.floor((Fraction(str(sig.maximum)) - off) / scale))
    return lo, hi


def _fw(sig, raw):
    """Firmware integer (milli-units etc.) of a raw value, exact."""
    mult = gen_can.UNITS[sig.unit or ""][1]
    v = (raw * Fraction(str(sig.scale)) + Fraction(str(sig.offset))) * mult
    assert v.denominator == 1
    return int(v)


def _dbc_checksum(d, can_id):
    # as the DBC's own comment defines it, written out again so cm.checksum is checked too
    return 0xFF ^ ((sum(d[0:7]) + (can_id & 0xFF) + (can_id >> 8)) & 0xFF)


def _edges(sig):
    lo, hi = _raw_range(sig)
    vals = {lo, lo + 1, hi - 1, hi}
    if sig.is_signed:
        vals |= {0, -1}
    if sig.choices:
        vals |= set(sig.choices)
    return sorted(v for v in vals if lo <= v <= hi)


def _data_sigs(msg):
    return [s for s in msg.signals if s.name != "Checksum"]


def _edge_frames(msg):
    """(what, {signal: raw}) for every edge of every signal, on a min and a max background."""
    out = []
    for bg in (0, 1):
        base = {s.name: _raw_range(s)[bg] for s in _data_sigs(msg)}
        out.append(("all " + ("min", "max")[bg], dict(base)))
        for sig in _data_sigs(msg):
            for raw in _edges(sig):
                f = dict(base)
                f[sig.name] = raw
                out.append((f"{sig.name}={raw} on {('min', 'max')[bg]}", f))
    return out


def _attrs(m, o):
    return {s.name: getattr(o, s.attr) for s in m.sigs}



def test_generator_ranges_match_the_dbc():
    for msg in DB.messages:
        m = MSGS[msg.name]
        for sig in _data_sigs(msg):
            s = next(x for x in m.sigs if x.name == sig.name)
            assert (s.raw_min, s.raw_max) == _raw_range(sig), (msg.name, sig.name)
            assert (s.choices or None) == (dict(sig.choices) if sig.choices else None)


@pytest.mark.parametrize("name", sorted(MSGS))
def test_edges_firmware_encode_cantools_decode(name):
    msg = DB.get_message_by_name(name)
    m, cls, pack, _ = _codec(name)
    frames = _edge_frames(msg)
    for what, raws in frames:
        o = cls()
        for sig in _data_sigs(msg):
            setattr(o, next(x.attr for x in m.sigs if x.name == sig.name), _fw(sig, raws[sig.name]))
        d = bytearray(8)
        assert pack(o, d) == 0, (name, what, "saturated an in-range value")
        got = msg.decode(bytes(d), decode_choices=False, scaling=False)
        for sig in _data_sigs(msg):
            assert got[sig.name] == raws[sig.name], (name, what, sig.name)
        phys = msg.decode(bytes(d), decode_choices=True, scaling=True)
        for sig in _data_sigs(msg):
            raw = raws[sig.name]
            if sig.choices and raw in sig.choices:
                assert str(phys[sig.name]) == str(sig.choices[raw]), (name, what, sig.name)
            else:
                assert phys[sig.name] == pytest.approx(raw * sig.scale + sig.offset, rel=1e-12, abs=1e-9)
        want = dict(raws)
        if m.checksum:
            assert got["Checksum"] == _dbc_checksum(d, msg.frame_id), (name, what)
            want["Checksum"] = got["Checksum"]
        # byte for byte what cantools makes of the same values: no stray bits anywhere
        assert msg.encode(want, scaling=False, strict=True) == bytes(d), (name, what)


@pytest.mark.parametrize("name", sorted(MSGS))
def test_edges_cantools_encode_firmware_decode(name):
    msg = DB.get_message_by_name(name)
    m, cls, _, unpack = _codec(name)
    frames = _edge_frames(msg)
    for what, raws in frames:
        want = {sig.name: _fw(sig, raws[sig.name]) for sig in _data_sigs(msg)}
        phys = {}
        for sig in _data_sigs(msg):
            raw = raws[sig.name]
            # a value-table entry goes in by its name, the way a DBC tool writes it
            phys[sig.name] = sig.choices[raw] if sig.choices and raw in sig.choices else raw * sig.scale + sig.offset
        for scaling, vals in ((False, raws), (True, phys)):
            vals = dict(vals)
            if m.checksum:
                vals["Checksum"] = 0
            d = bytearray(msg.encode(vals, scaling=scaling, strict=True))
            if m.checksum:
                d[7] = _dbc_checksum(d, msg.frame_id)
            o = cls()
            assert unpack(d, o), (name, what, "refused an in-range frame")
            assert _attrs(m, o) == want, (name, what, scaling)
            if msg.frame_id in cm.CanRx.RX_IDS:
                rx = cm.CanRx()
                assert rx.feed(msg.frame_id, d, 8, 7) == msg.frame_id, (name, what)
                assert _attrs(m, getattr(rx, m.fn)) == want
                assert rx.stats.rx_ok == 1


def test_every_value_table_entry_has_a_firmware_constant():
    n = 0
    for msg in DB.messages:
        for sig in _data_sigs(msg):
            for v, label in (sig.choices or {}).items():
                const = gen_can.snake(sig.name).upper() + "_" + str(label).upper()
                assert _value(const) == v, const
                assert _value(gen_can.snake(sig.name).upper() + "_NAMES")[v] == str(label)
                n += 1
    assert n == sum(len(s.choices or {}) for msg in DB.messages for s in msg.signals) > 0


def test_names_other_modules_read_are_public_and_the_rest_folded_away():
    # can_msgs.<NAME> read anywhere in the tree (aliases M, cm) must exist without the
    # underscore (the firmware has no `_NAME` once mpy-cross folded it); an exported value
    # nobody reads is a global and a name in RAM for nothing
    used = set()
    for top in ("firmware", "boards", "host_tools", "bench", "tests"):
        for p in (ROOT / top).rglob("*.py"):
            text = p.read_text()
            for alias in re.findall(r"from core import can_msgs as (\w+)", text):
                used |= set(re.findall(r"\b" + alias + r"\.([A-Z][A-Z0-9_]*)\b", text))
            for names in re.findall(r"from core\.can_msgs import \(?([\w, \n]+)", text):
                # value names only: functions (checksum, pack_*) are not folded constants
                used |= {n.strip() for n in names.split(",") if re.fullmatch(r"[A-Z][A-Z0-9_]*", n.strip())}
    values = {n for n in used if not n.endswith("_ID")}
    assert values and values <= gen_can.EXPORTED, sorted(values - gen_can.EXPORTED)
    assert gen_can.EXPORTED <= values, sorted(gen_can.EXPORTED - values)
    for n in used:
        assert hasattr(cm, n), n


# ---- out-of-range values on encode: saturate at the DBC range, counted ---------------------
#
# pack_*() documents: rounding to the DBC resolution (half a step rounds up), saturating at
# the DBC range, returning how many values were saturated. A value past the range never
# wraps into the bits (a -5000 A request must not go out as a charge request).

def _mid(sig):
    lo, hi = _raw_range(sig)
    return (lo + hi) // 2


@pytest.mark.parametrize("name", sorted(MSGS))
def test_encode_out_of_range_saturates(name):
    msg = DB.get_message_by_name(name)
    m, cls, pack, _ = _codec(name)
    for sig in _data_sigs(msg):
        s = next(x for x in m.sigs if x.name == sig.name)
        lo, hi = _raw_range(sig)
        mul = abs(s.mul)
        fw_lo, fw_hi = _fw(sig, lo), _fw(sig, hi)
        # half a step rounds up: below the minimum by half a step still rounds to it
        cases = [
            (fw_hi + (mul - mul // 2) - 1, hi, 0),     # rounds down to the maximum
            (fw_hi + (mul - mul // 2), hi, 1),         # rounds past it: saturated
            (fw_hi + mul, hi, 1),
            (10**9, hi, 1),
            (fw_lo - mul // 2, lo, 0),                 # rounds up to the minimum
            (fw_lo - mul // 2 - 1, lo, 1),
            (fw_lo - mul, lo, 1),
            (-(10**9), lo, 1),
        ]
        for fw, raw, sat in cases:
            o = cls()
            for other in _data_sigs(msg):
                setattr(o, next(x.attr for x in m.sigs if x.name == other.name), _fw(other, _mid(other)))
            setattr(o, s.attr, fw)
            d = bytearray(8)
            assert pack(o, d) == sat, (name, sig.name, fw)
            got = msg.decode(bytes(d), decode_choices=False, scaling=False)
            assert got[sig.name] == raw, (name, sig.name, fw)
            for other in _data_sigs(msg):
                if other.name != sig.name:
                    assert got[other.name] == _mid(other), (name, sig.name, fw, other.name)
            if m.checksum:
                assert got["Checksum"] == _dbc_checksum(d, msg.frame_id)
    # every signal out of range at once: each one counted
    o = cls()
    for s in m.sigs:
        setattr(o, s.attr, 10**9)
    d = bytearray(8)
    assert pack(o, d) == len(m.sigs)
    got = msg.decode(bytes(d), decode_choices=False, scaling=False)
    assert all(got[sig.name] == _raw_range(sig)[1] for sig in _data_sigs(msg))


def test_transmitter_counts_saturated_values():
    tx = cm.CanTx()
    d = bytearray(8)
    tx.evse_limits.limit_charge_ma = 7_000_000      # beyond 6553.5 A
    tx.evse_limits.meter_current_ma = -4_000_000    # beyond -3276.8 A
    tx.evse_status.pwm_duty_pm = 1001               # beyond 100 %
    tx.frame_evse_limits(d)
    got = DB.get_message_by_name("EVSE_Limits").decode(bytes(d), scaling=False)
    assert got["LimitCharge"] == 65535 and got["MeterCurrent"] == -32768
    tx.frame_evse_status(d)
    assert DB.get_message_by_name("EVSE_Status").decode(bytes(d), scaling=False)["PwmDuty"] == 1000
    assert tx.stats.saturated == 3 and tx.stats.tx == 2


# ---- the decoder refuses what the DBC range excludes ---------------------------------------

@pytest.mark.parametrize("name", sorted(MSGS))
def test_decode_refuses_raw_values_outside_the_dbc_range(name):
    msg = DB.get_message_by_name(name)
    m, cls, _, unpack = _codec(name)
    narrow = [s for s in _data_sigs(msg) if _raw_range(s) != _bits(s)]
    for sig in narrow:
        lo, hi = _raw_range(sig)
        blo, bhi = _bits(sig)
        bad = [v for v in (lo - 1, blo, hi + 1, bhi) if blo <= v <= bhi and not lo <= v <= hi]
        assert bad
        for raw in bad:
            vals = {s.name: _mid(s) for s in _data_sigs(msg)}
            vals[sig.name] = raw
            if m.checksum:
                vals["Checksum"] = 0
            d = bytearray(msg.encode(vals, scaling=False, strict=False))
            if m.checksum:
                d[7] = _dbc_checksum(d, msg.frame_id)
            o = cls()
            for s in m.sigs:
                setattr(o, s.attr, 12345)
            assert not unpack(d, o), (name, sig.name, raw)
            assert all(v == 12345 for v in _attrs(m, o).values()), "a refused frame changed the reading"
            if msg.frame_id in cm.CanRx.RX_IDS:
                rx = cm.CanRx()
                assert rx.feed(msg.frame_id, d, 8, 7) == 0
                assert rx.stats.bad_range == 1 and rx.stats.rx_ok == 0
                assert rx.age_ms(cm.CanRx.RX_IDS.index(msg.frame_id), 8) >= 0x3FFFFFFF


def test_decode_range_checks_cover_the_receive_side():
    # the narrow signals the vehicle sends are the ones a reading depends on
    narrow = {(msg.name, s.name) for msg in DB.messages if msg.frame_id in cm.CanRx.RX_IDS
              for s in _data_sigs(msg) if _raw_range(s) != _bits(s)}
    assert narrow == {("BMS_Status", "SoC"), ("BMS_Status", "PackVoltage")}


# ---- checksum and counter bytes ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(n for n in MSGS if MSGS[n].checksum or MSGS[n].counter))
def test_counter_and_checksum_every_value(name):
    msg = DB.get_message_by_name(name)
    m, cls, pack, unpack = _codec(name)
    seen = set()
    first = m.sigs[0]
    lo, hi = _raw_range(msg.get_signal_by_name(first.name))
    for c in range(16) if m.counter else (0,):
        # walk the first signal so the checksum byte takes (nearly) every value
        for raw in range(lo, min(hi, lo + 255) + 1):
            o = cls()
            if m.counter:
                o.counter = c
            setattr(o, first.attr, _fw(msg.get_signal_by_name(first.name), raw))
            d = bytearray(8)
            assert pack(o, d) == 0
            got = msg.decode(bytes(d), decode_choices=False, scaling=False)
            if m.counter:
                assert got["Counter"] == c
            if m.checksum:
                assert d[7] == got["Checksum"] == _dbc_checksum(d, msg.frame_id) == cm.checksum(d, msg.frame_id)
                seen.add(d[7])
            back = cls()
            assert unpack(d, back) and _attrs(m, back) == _attrs(m, o)
    if m.checksum:
        assert len(seen) == 256


@pytest.mark.parametrize("can_id", cm.CanRx.RX_IDS)
def test_receiver_checksum_and_counter_wrap(can_id):
    msg = DB.get_message_by_name(next(n for n in MSGS if MSGS[n].id == can_id))
    m = MSGS[msg.name]
    rx = cm.CanRx()
    st = rx.stats
    frames = []
    for i in range(18):  # counter 0..15, then 0 and 1 again: a wrap is not a lost frame
        vals = {s.name: _mid(s) for s in _data_sigs(msg)}
        if m.counter:
            vals["Counter"] = i & 15
        if m.checksum:
            vals["Checksum"] = 0
        d = bytearray(msg.encode(vals, scaling=False, strict=True))
        if m.checksum:
            d[7] = _dbc_checksum(d, can_id)
        frames.append(d)
        assert rx.feed(can_id, d, 8, 100 * i) == can_id
    assert st.rx_ok == 18 and st.counter_skip == 0 and st.counter_repeat == 0
    if not m.checksum:
        return
    reading = _attrs(m, getattr(rx, m.fn))
    # every wrong value of byte 7 refused, counted, nothing changed
    for wrong in range(256):
        d = bytearray(frames[0])
        if wrong == d[7]:
            continue
        d[7] = wrong
        assert rx.feed(can_id, d, 8, 5000) == 0
    assert st.bad_checksum == 255 and st.rx_ok == 18
    assert _attrs(m, getattr(rx, m.fn)) == reading
    assert rx.last_ms[cm.CanRx.RX_IDS.index(can_id)] == 1700


# ---- wrong lengths and unknown ids: counted, never a reading -------------------------------

# classic CAN DLC 0..8 and the CAN FD lengths a mixed bus can carry
LENGTHS = list(range(0, 16)) + [20, 24, 32, 48, 64]


def _valid_frame(msg, can_id):
    m = MSGS[msg.name]
    vals = {s.name: _raw_range(s)[1] for s in _data_sigs(msg)}
    if m.checksum:
        vals["Checksum"] = 0
    d = bytearray(msg.encode(vals, scaling=False, strict=True)) + bytearray(56)
    if m.checksum:
        d[7] = _dbc_checksum(d, can_id)
    return d


def test_receiver_refuses_every_wrong_length():
    for can_id in cm.CanRx.RX_IDS:
        msg = DB.get_message_by_name(next(n for n in MSGS if MSGS[n].id == can_id))
        m = MSGS[msg.name]
        i = cm.CanRx.RX_IDS.index(can_id)
        rx = cm.CanRx()
        before = _attrs(m, getattr(rx, m.fn))
        d = _valid_frame(msg, can_id)
        wrong = [n for n in LENGTHS if n != msg.length]
        for n in wrong:
            assert rx.feed(can_id, d, n, 1000) == 0, (msg.name, n)
        st = rx.stats
        assert st.bad_dlc == len(wrong) and st.rx_ok == 0 and st.bad_checksum == 0
        assert _attrs(m, getattr(rx, m.fn)) == before and rx.age_ms(i, 1000) >= 0x3FFFFFFF
        # the same bytes with the right length are a reading
        assert rx.feed(can_id, d, msg.length, 1000) == can_id and rx.age_ms(i, 1000) == 0
        assert _attrs(m, getattr(rx, m.fn)) != before


def test_receiver_refuses_every_unknown_id():
    rx = cm.CanRx()
    st = rx.stats
    fresh = {msg.name: _attrs(MSGS[msg.name], getattr(rx, MSGS[msg.name].fn))
             for msg in DB.messages if msg.frame_id in cm.CanRx.RX_IDS}
    msgs = [DB.get_message_by_frame_id(i) for i in cm.CanRx.RX_IDS]
    n = 0
    # every other 11-bit id, and 29-bit ids whose low bits are ours: each one carrying a frame
    # that would be a good BMS frame (checksum worked out for the id it arrives on, too)
    ids = [i for i in range(0x800) if i not in cm.CanRx.RX_IDS]
    ids += [0x800 | i for i in cm.CanRx.RX_IDS] + [(1 << 28) | i for i in cm.CanRx.RX_IDS]
    good = [_valid_frame(msg, msg.frame_id) for msg in msgs]
    for can_id in ids:
        for msg, g in zip(msgs, good):
            for d in (g, _valid_frame(msg, can_id & 0x7FF)):
                assert rx.feed(can_id, d, 8, 1000) == 0, hex(can_id)
                n += 1
    assert st.unknown_id == n and st.rx_ok == 0
    assert st.bad_dlc == st.bad_checksum == st.bad_range == st.counter_repeat == 0
    for i, name in enumerate(fresh):
        assert _attrs(MSGS[name], getattr(rx, MSGS[name].fn)) == fresh[name]
        assert rx.age_ms(i, 1000) >= 0x3FFFFFFF

