"""The DBC is the single source: the generated firmware codec matches it, and
frames cross between the firmware codec and cantools in both directions."""

import random

import cantools
import pytest

from host_tools import gen_can, vm

vm.firmware_sys_path("sim")

from core import can_msgs as cm  # noqa: E402

DB = cantools.database.load_file(str(gen_can.DBC_PATH))
MSGS = {m.name: m for m in gen_can.load()}


def _codec(name):
    m = MSGS[name]
    return m, getattr(cm, m.cls), getattr(cm, "pack_" + m.fn), getattr(cm, "unpack_" + m.fn)


def test_generated_codec_is_up_to_date():
    assert gen_can.OUT_PATH.read_text() == gen_can.generate(), "run: python -m host_tools.gen_can"
    assert gen_can.main(["--check"]) == 0


def test_every_dbc_message_has_a_codec_and_id():
    for msg in DB.messages:
        m, cls, pack, unpack = _codec(msg.name)
        assert getattr(cm, m.const + "_ID") == msg.frame_id
        assert getattr(cm, m.const + "_CYCLE_MS") == msg.cycle_time
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
