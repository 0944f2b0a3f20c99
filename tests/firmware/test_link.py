"""Host link framing: round trips, resync after garbage, every drop counter."""
from binascii import hexlify

from core import cbor, cobs, crc32, link


def _frame_of_payload(payload):
    c = crc32.crc32(payload)
    body = payload + bytes([c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF, (c >> 24) & 0xFF])
    return cobs.encode(body) + b"\x00"


def _frame(msg):
    return _frame_of_payload(cbor.dumps(msg))


def _pair(max_frame=link.MAX_FRAME):
    wire = []
    tx = link.Link(lambda b: wire.append(bytes(b)), max_frame)
    rx = link.Link(lambda b: None, max_frame)
    return tx, rx, wire


def _counts(lk):
    out = {}
    for k in link.STAT_NAMES:
        if lk.stats[k]:
            out[k] = lk.stats[k]
    return out


ALL_MESSAGES = [
    link.hello("0.1.0", "sim", "9f86d081", "power_on", 7),
    link.hello_request(),
    link.hb(1, 123456),
    link.hback(link.hb(2, 2 ** 40)),
    link.rtt(37),
    link.cmd("h1a2b3c", "soc_target", {"soc_pct": 80, "mode": "v2g"}, deadline_ms=5000, ttl_ms=2000),
    link.cmd("h1a2b3d", "status"),
    link.res("h1a2b3c", True, None, "", {"soc_pm": 800}),
    link.res_from("h1a2b3e", (False, "V2G-400", "soc_pct: not in 0..100", None)),
    link.tel([{"t_ms": 1000, "ma": -16000, "mv": 230000, "mode": "discharging"}] * 5),
    link.evt([(1000, "V2G-101", True, "host heartbeat lost"), (2000, "V2G-101", False, "")]),
]


def test_round_trip_all_types():
    tx, rx, wire = _pair()
    for m in ALL_MESSAGES:
        assert tx.send(m)
    got = rx.feed(b"".join(wire))
    assert got == ALL_MESSAGES
    assert _counts(rx) == {"frames_ok": len(ALL_MESSAGES)}
    assert _counts(tx) == {"tx_frames": len(ALL_MESSAGES)}


def test_first_frame_has_leading_delimiter():
    tx, rx, wire = _pair()
    tx.send(link.rtt(1))
    tx.send(link.rtt(2))
    assert wire[0][0] == 0 and wire[1][0] != 0
    assert wire[0][1:] == _frame(link.rtt(1))
    assert wire[1] == _frame(link.rtt(2))
    assert wire[0].count(b"\x00") == 2 and wire[1].count(b"\x00") == 1


def test_known_frame_hex():
    # pinned wire bytes of a heartbeat; docs/host-link.md shows the same frame
    f = link.encode_frame(link.hb(1, 1000))
    assert hexlify(f).decode() == "1ea46174626862617601637365710167686f73745f6d731903e875c303e100"
    assert link.Link(None).feed(f) == [link.hb(1, 1000)]


def test_split_feeds_and_input_kinds():
    tx, rx, wire = _pair()
    for m in ALL_MESSAGES:
        tx.send(m)
    stream = b"".join(wire)
    got = []
    for i in range(len(stream)):
        got.extend(rx.feed(stream[i:i + 1]))
    assert got == ALL_MESSAGES
    for chunk in (3, 7, 64, 1000):
        got = []
        for i in range(0, len(stream), chunk):
            got.extend(rx.feed(bytearray(stream[i:i + chunk])))
        assert got == ALL_MESSAGES
    buf = bytearray(len(stream) + 10)
    buf[:len(stream)] = stream
    assert rx.feed(memoryview(buf), len(stream)) == ALL_MESSAGES
    assert rx.feed(buf, len(stream)) == ALL_MESSAGES
    assert rx.feed(b"") == ()
    assert rx.stats["frames_ok"] == 7 * len(ALL_MESSAGES)


def test_idle_delimiters_are_not_errors():
    rx = link.Link(None)
    assert rx.feed(b"\x00\x00\x00" + _frame(link.rtt(5)) + b"\x00\x00") == [link.rtt(5)]
    assert _counts(rx) == {"frames_ok": 1}


def test_resync_after_garbage():
    rx = link.Link(None)
    good = _frame(link.hb(9, 99))
    # garbage without a delimiter merges with the next frame: that frame is lost, counted once
    out = rx.feed(b"\x13\x37\xff\xfe" + good + good)
    assert out == [link.hb(9, 99)]
    assert rx.stats["frames_ok"] == 1
    lost = rx.stats["cobs_errors"] + rx.stats["crc_errors"] + rx.stats["cbor_errors"]
    assert lost == 1
    # garbage ending in a delimiter costs nothing after it
    out = rx.feed(b"\x01\x02\x03\x00" + good + b"\xff" * 3000 + b"\x00" + good)
    assert out == [link.hb(9, 99), link.hb(9, 99)]
    assert rx.stats["oversize"] == 1


def test_each_drop_reason_is_counted():
    rx = link.Link(None)
    valid = cbor.dumps(link.rtt(3))
    bad_crc = bytearray(_frame(link.rtt(3)))
    bad_crc[3] ^= 0x01
    cases = [
        (bytes(bad_crc), "crc_errors"),
        (cobs.encode(b"\x01\x02") + b"\x00", "crc_errors"),  # too short for a CRC
        (b"\x05\x01\x02\x00", "cobs_errors"),  # code byte runs past the frame
        (b"\xff" * 1100 + b"\x00", "oversize"),
        (_frame_of_payload(b"\xa1\x61"), "cbor_errors"),  # truncated map
        (_frame_of_payload(valid + b"\x00"), "cbor_errors"),  # trailing byte
        (_frame_of_payload(b"\x9f\x01\xff"), "cbor_errors"),  # indefinite length
        (_frame_of_payload(b"\x81" * 20 + b"\x00"), "cbor_errors"),  # nesting
        (_frame_of_payload(b"\xa2\x61\x76\x01\x61\x76\x01"), "cbor_errors"),  # duplicate key
        (_frame({"v": 1, "t": "firmware_chunk", "x": 1}), "unknown_type"),
        (_frame([1, "hb"]), "bad_msg"),
        (_frame({"v": 2, "t": "hb", "seq": 1, "host_ms": 1}), "bad_msg"),
        (_frame({"v": True, "t": "hb", "seq": 1, "host_ms": 1}), "bad_msg"),
        (_frame({"v": 1, "t": 5}), "bad_msg"),
        (_frame({"v": 1, "t": "hb", "seq": 1}), "bad_msg"),
        (_frame({"v": 1, "t": "hb", "seq": "1", "host_ms": 1}), "bad_msg"),
        (_frame({"v": 1, "t": "hb", "seq": True, "host_ms": 1}), "bad_msg"),
        (_frame({"v": 1, "t": "cmd", "txn": "", "op": "stop"}), "bad_msg"),
        (_frame({"v": 1, "t": "cmd", "txn": "x" * 65, "op": "stop"}), "bad_msg"),
        (_frame({"v": 1, "t": "cmd", "txn": "a", "op": "stop", "args": [1]}), "bad_msg"),
        (_frame({"v": 1, "t": "res", "txn": "a", "ok": 1, "code": None, "msg": "", "data": {}}), "bad_msg"),
        (_frame({"v": 1, "t": "rtt", "ms": -1}), "bad_msg"),
        (_frame({"v": 1, "t": "tel", "samples": [1]}), "bad_msg"),
        (_frame({"v": 1, "t": "evt", "events": [{"t_ms": 1, "code": "V2G-101", "on": 1, "msg": ""}]}), "bad_msg"),
        (_frame({"v": 1, "t": "evt", "events": ["V2G-101"]}), "bad_msg"),
        (_frame({"v": 1, "t": "hello", "fw": "1.0"}), "bad_msg"),
    ]
    good = _frame(link.rtt(3))
    expect = {}
    for raw, stat in cases:
        before = rx.stats[stat]
        assert rx.feed(raw) == (), stat
        assert rx.stats[stat] == before + 1, (stat, rx.last_error)
        assert rx.last_error != ""
        expect[stat] = expect.get(stat, 0) + 1
        # the link is never left in a bad state: the next good frame decodes
        assert rx.feed(good) == [link.rtt(3)]
    expect["frames_ok"] = len(cases)
    assert _counts(rx) == expect
    rx.reset_stats()
    assert _counts(rx) == {}


def test_frame_size_limit_exact():
    for max_frame in (64, 1024):
        tx, rx, wire = _pair(max_frame)
        base = len(cbor.dumps({"v": 1, "t": "rtt", "ms": 0, "pad": b""}))
        pad = max_frame - 4 - base - 2  # leaves room for a 2-byte bstr head growth
        msg = None
        while True:
            m = {"v": 1, "t": "rtt", "ms": 0, "pad": b"\x00" * pad}
            size = len(cbor.dumps(m)) + 4
            if size == max_frame:
                msg = m
                break
            pad += 1 if size < max_frame else -1
        assert tx.send(msg)
        assert rx.feed(wire[-1]) == [msg]
        big = {"v": 1, "t": "rtt", "ms": 0, "pad": b"\x00" * (pad + 1)}
        assert not tx.send(big)
        assert tx.stats["tx_errors"] == 1 and "exceed" in tx.last_error
        # a peer that ignores the limit is refused on receive, then resync
        assert rx.feed(_frame(big) + _frame(link.rtt(1))) == [link.rtt(1)]
        assert rx.stats["oversize"] == 1


def test_send_refuses_unencodable():
    tx, rx, wire = _pair()
    assert not tx.send({"v": 1, "t": "tel", "samples": [object()]})
    assert tx.stats["tx_errors"] == 1 and "cannot encode" in tx.last_error
    assert wire == []
    assert tx.send(link.rtt(1))


def test_builders_and_defaults():
    tx, rx, wire = _pair()
    tx.send({"v": 1, "t": "cmd", "txn": "t1", "op": "start"})
    got = rx.feed(wire[0])
    assert got[0]["args"] == {}  # cmd always carries args after feed()
    assert link.is_hello_request(link.hello_request())
    assert not link.is_hello_request(link.hello("a", "b", "c", "d", 1))
    e = link.evt([(5, "V2G-011", True, "contactor welded")])
    assert e["events"] == [{"t_ms": 5, "code": "V2G-011", "on": True, "msg": "contactor welded"}]
    r = link.res_from("t9", (True, None, None, {"x": 1}))
    assert r["msg"] == "" and r["code"] is None and r["data"] == {"x": 1}
    assert link.check(link.hello_request()) is None
    for m in ALL_MESSAGES:
        assert link.check(m) is None, m
    assert link.check({"v": 1, "t": "hb", "seq": 1, "host_ms": 2, "extra": [1]}) is None


def test_heartbeat_and_rtt_take_the_fast_path_and_read_as_the_general_decoder_reads_them():
    got = []
    rx = link.Link(lambda b: None)

    def sink(msg):
        got.append(dict(msg))    # the fast path's map is reused: copy it
    wire = (_frame(link.hb(7, 1000)) + _frame(link.rtt(42)) + _frame(link.hb(300, 0x3FFFFFFF))
            + _frame(link.hb(8, 0x40000000))                   # over 30 bits: general path
            # keys in another order ("v" first): valid, taken by the general decoder
            + _frame_of_payload(bytes.fromhex("a461760161746268626373657109" "67686f73745f6d7305")))
    assert rx.feed(wire, sink=sink) == ()
    assert got == [link.hb(7, 1000), link.rtt(42), link.hb(300, 0x3FFFFFFF), link.hb(8, 0x40000000),
                   link.hb(9, 5)]
    assert rx.stats["frames_ok"] == 5
    # the same frames without a sink come out as a list, as before
    assert rx.feed(wire) == got


def test_a_damaged_heartbeat_is_counted_like_any_damaged_frame():
    rx = link.Link(lambda b: None)
    good = _frame(link.hb(7, 1000))
    payload = cbor.dumps(link.hb(7, 1000))
    bad_crc = _frame_of_payload(payload)[:-3] + b"\x01\x01\x00"   # last CRC bytes wrong
    got = []
    rx.feed(bad_crc + good, sink=got.append)
    assert len(got) == 1 and rx.stats["crc_errors"] == 1 and rx.stats["frames_ok"] == 1


def test_the_heartbeat_echo_written_in_place_is_the_echo_send_makes():
    wire = []
    a = link.Link(lambda b: wire.append(bytes(b)))
    b = link.Link(lambda b: wire.append(bytes(b)))
    a._sent_any = b._sent_any = True
    for seq, ms in ((1, 1000), (23, 24), (70000, 0x3FFFFFFF), (5, 0x40000000)):
        a.send_hback(link.hb(seq, ms))
        b.send(link.hback(link.hb(seq, ms)))
        assert wire[-2] == wire[-1]
    assert wire[0] == bytes.fromhex("21a4617465686261636b617601637365710167686f73745f6d731903e847c3114a00")


def test_answers_sent_from_the_sink_leave_the_frames_still_to_come_intact():
    # the station answers each command from inside feed(): the answer's send reuses the
    # buffer a frame is decoded into, so the frames after it in the same read must not suffer
    wire = []
    st = link.Link(lambda b: wire.append(bytes(b)))
    got = []

    def sink(msg):
        got.append(dict(msg))
        st.send(link.res("r{}".format(len(got)), True, None, "x" * 300, {"n": len(got)}))
    cmds = [link.cmd("c{}".format(i), "status", {"pad": "y" * (100 * i)}) for i in range(4)]
    frames = b"".join(_frame(c) for c in cmds)
    frames += _frame(link.hb(3, 1000)) + _frame(link.cmd("c9", "diag"))
    assert st.feed(frames, sink=sink) == ()
    assert [m["t"] for m in got] == ["cmd"] * 4 + ["hb", "cmd"]
    assert got[:4] == cmds and got[4] == link.hb(3, 1000)
    host = link.Link(lambda b: None)
    answers = host.feed(b"".join(wire))
    assert [a["data"]["n"] for a in answers] == [1, 2, 3, 4, 5, 6]


def test_a_link_keeps_three_frame_buffers_not_four():
    # received COBS, the decoded frame / the frame being sent (shared), the COBS being sent
    lk = link.Link(lambda b: None)
    held = {}
    for v in lk.__dict__.values():
        if isinstance(v, bytearray):
            held[id(v)] = len(v)
    enc = cobs.max_encoded_len(link.MAX_FRAME)
    assert sum(held.values()) <= 3 * enc + 2, sorted(held.values())
