"""Host link: firmware CBOR against cbor2, deframers against garbage, and the host
client against the firmware link module over a real pseudo-terminal.

The controller here is a tiny loop around firmware `core.link.Link` that echoes
heartbeats and answers commands; the full controller (core/controller.py behind the
firmware shell) is exercised over the link by the integration and simulator tests.
"""

import math
import os
import select
import threading
import time
import tty

import cbor2
import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import cbor, cobs, link
from host_tools import link as hlink

U64 = 2**64 - 1

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-U64 - 1, max_value=U64)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=40)
)


def values(keys, leaves=scalars):
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=6) | st.dictionaries(keys, kids, max_size=6),
        max_leaves=30,
    )


text_key_values = values(st.text(max_size=12))
# what crosses the link: no floats (the host sends a decimal as a decimal fraction)
link_values = values(st.text(max_size=12), st.none() | st.booleans()
                     | st.integers(min_value=-U64 - 1, max_value=U64) | st.text(max_size=40)
                     | st.binary(max_size=40))
mixed_key_values = values(st.integers(min_value=-U64 - 1, max_value=U64) | st.text(max_size=8)
                          | st.binary(max_size=8))


def _key_lengths_uniform(v):
    """True if, in every map, all keys have encodings of one length (where the
    RFC 8949 bytewise order and cbor2's length-first order coincide)."""
    if isinstance(v, list):
        return all(_key_lengths_uniform(x) for x in v)
    if isinstance(v, dict):
        if len({len(cbor.dumps(k)) for k in v}) > 1:
            return False
        return all(_key_lengths_uniform(x) for x in v.values())
    return True


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(text_key_values)
def test_canonical_equals_cbor2_for_text_keys(v):
    enc = cbor.dumps(v)
    assert enc == cbor2.dumps(v, canonical=True)
    assert cbor2.loads(enc) == v
    assert cbor.loads(enc, canonical=True) == v


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_key_values)
def test_mixed_keys_interoperate(v):
    enc = cbor.dumps(v)
    assert cbor2.loads(enc) == v
    assert cbor.loads(cbor2.dumps(v)) == v
    assert cbor.loads(cbor2.dumps(v, canonical=True)) == v
    if _key_lengths_uniform(v):
        assert enc == cbor2.dumps(v, canonical=True)


def test_key_order_differs_from_cbor2_only_where_rfc8949_says_so():
    # RFC 8949 4.2.1 sorts by encoded bytes; cbor2 canonical sorts shorter encodings first
    v = {100: "a", -1: "b"}
    assert cbor.dumps(v).hex() == "a218646161206162"
    assert cbor2.dumps(v, canonical=True).hex() == "a220616218646161"
    assert cbor2.loads(cbor.dumps(v)) == v


@settings(max_examples=300)
@given(st.floats(width=16) | st.floats(width=32) | st.floats())
def test_floats_shortest_like_cbor2(x):
    enc = cbor.dumps(x)
    assert enc == cbor2.dumps(x, canonical=True)
    back = cbor2.loads(enc)
    assert (math.isnan(x) and math.isnan(back)) or back == x


def test_tags_interoperate():
    t = cbor.Tag(18, [b"\xa1\x01\x26", {}, b"payload", b"sig"])
    got = cbor2.loads(cbor.dumps(t))
    assert isinstance(got, cbor2.CBORTag) and got.tag == 18
    assert [got.value[0], dict(got.value[1]), got.value[2], got.value[3]] == t.value
    assert cbor.loads(cbor2.dumps(cbor2.CBORTag(18, t.value))) == t


@settings(max_examples=1500)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_refuse_cleanly(data):
    try:
        v = cbor.loads(data)
    except cbor.CBORError:
        return
    if _has_tag(v):
        return  # cbor2 gives some tags a meaning (dates, bignums) and checks their content
    # what the firmware accepts, cbor2 accepts with the same meaning
    assert cbor.dumps(cbor2.loads(data)) == cbor.dumps(v)


def _has_tag(v):
    if isinstance(v, cbor.Tag):
        return True
    if isinstance(v, list):
        return any(_has_tag(x) for x in v)
    if isinstance(v, dict):
        return any(_has_tag(x) for x in v.values())
    return False


@settings(max_examples=300)
@given(text_key_values)
def test_truncations_refused(v):
    enc = cbor.dumps(v)
    for cut in range(len(enc)):
        with pytest.raises(cbor.CBORError):
            cbor.loads(enc[:cut])


# ------------------------------------------------------------------ framing

def _good_msgs():
    return [link.hb(7, 1234), link.rtt(12), link.res("t1", True, None, "", {"a": [1, 2]})]


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=64))
def test_firmware_deframer_survives_garbage(chunks, step):
    rx = link.Link(None, max_frame=256)
    good = b"".join(link.encode_frame(m) for m in _good_msgs())
    stream = b"".join(chunks) + b"\x00" + good
    got = []
    for i in range(0, len(stream), step):
        got.extend(rx.feed(stream[i:i + step]))
    # after the delimiter every good frame comes through, whatever came before
    assert got[-3:] == _good_msgs()
    assert sum(rx.stats.values()) >= 3


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_host_deframer_survives_garbage(chunks):
    d = hlink.Deframer(max_frame=256)
    got = []
    for c in chunks:
        got.extend(d.feed(c))
    got = d.feed(b"\x00" + b"".join(hlink.encode_frame(m) for m in _good_msgs()))
    assert got[-3:] == _good_msgs()


@settings(max_examples=200)
@given(st.lists(link_values, min_size=1, max_size=4))
def test_host_and_firmware_frames_agree(payloads):
    msgs = [{"v": 1, "t": "tel", "samples": [{"x": p}]} for p in payloads]
    wire_fw = []
    tx = link.Link(lambda b: wire_fw.append(bytes(b)))
    sent = [m for m in msgs if tx.send(m)]
    assert hlink.Deframer().feed(b"".join(wire_fw)) == sent
    host_frames = b"".join(hlink.encode_frame(m) for m in sent)
    assert host_frames == b"".join(wire_fw)[1:]  # firmware leads with one delimiter
    assert link.Link(None).feed(host_frames) == sent


def test_host_checks_match_firmware_checks():
    cases = [
        {"v": 1, "t": "hb", "seq": True, "host_ms": 1},
        {"v": 1, "t": "cmd", "txn": "", "op": "x"},
        {"v": 1, "t": "evt", "events": [{"t_ms": 1, "code": "c", "on": 1, "msg": ""}]},
        {"v": 1, "t": "res", "txn": "a", "ok": True, "code": 3, "msg": "", "data": {}},
        {"v": 2, "t": "hb"},
        {"v": 1, "t": "nope"},
        {"v": 1, "t": "hello"},
        {"v": 1, "t": "tel", "samples": [{}, 2]},
    ] + _good_msgs()
    for m in cases:
        a, b = link.check(m), hlink.check(m)
        assert (a and a[0]) == (b and b[0]), m


# ------------------------------------------------------------------ pty client

class TinyController:
    """Firmware Link on the master side of a pty, answering like a controller would."""

    def __init__(self, fd):
        self.fd = fd
        self.write_lock = threading.Lock()  # test-injected garbage must not split a frame
        self.link = link.Link(self._write)
        self.applied = {}  # txn -> result (idempotency as the real controller keeps it)
        self.applications = 0
        self.drop_next_answer = set()
        self.rtt_reports = []
        self.heartbeats = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _write(self, buf):
        data = bytes(buf)
        with self.write_lock:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]

    def raw(self, data):
        self._write(data)

    def run(self):
        while not self.stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            for msg in self.link.feed(data):
                self.handle(msg)

    def handle(self, msg):
        t = msg["t"]
        if t == "hb":
            self.heartbeats += 1
            self.link.send(link.hback(msg))
        elif t == "rtt":
            self.rtt_reports.append(msg["ms"])
        elif t == "hello" and link.is_hello_request(msg):
            self.link.send(link.hello("0.1.0-test", "pty", "c0ffee", "power_on", 3))
        elif t == "cmd":
            txn = msg["txn"]
            if msg["op"] == "mute":
                return
            if txn not in self.applied:
                self.applications += 1
                if msg["op"] == "soc_target" and not 0 <= msg["args"].get("soc_pct", -1) <= 100:
                    result = (False, "V2G-400", "soc_pct: must be 0..100", {})
                elif msg["op"] == "emit":
                    self.link.send(link.tel([{"t_ms": 1, "ma": 16000}]))
                    self.link.send(link.evt([(2, "V2G-101", True, "host heartbeat lost")]))
                    result = (True, None, "", {})
                else:
                    result = (True, None, "", {"op": msg["op"], "n": self.applications})
                self.applied[txn] = result
            if txn in self.drop_next_answer:
                self.drop_next_answer.discard(txn)
                return  # applied, but the answer is "lost on the wire"
            self.link.send(link.res_from(txn, self.applied[txn]))


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    ctl = TinyController(master)
    ctl.thread.start()
    client = hlink.LinkClient(os.ttyname(slave), heartbeat_s=0.1)
    client.open()
    yield ctl, client
    client.close()
    ctl.stop.set()
    ctl.thread.join(timeout=2)
    os.close(slave)
    os.close(master)


def test_pty_hello_commands_heartbeats(pty_pair):
    ctl, client = pty_pair
    hello = client.hello(timeout=2)
    assert hello["fw"] == "0.1.0-test" and hello["boot_count"] == 3
    assert client.last_hello == hello

    r = client.command("status", timeout=2)
    assert r.ok and r.code is None and r.data["op"] == "status" and r.rtt_ms is not None

    r = client.command("soc_target", {"soc_pct": 180}, timeout=2)
    assert not r and r.code == "V2G-400" and "soc_pct" in r.msg

    # answer lost once: the retry carries the same txn and gets the original result
    ctl.drop_next_answer.add("retry-1")
    before = ctl.applications
    r = client.command("start", txn="retry-1", timeout=0.3, retries=2)
    assert r.ok and ctl.applications == before + 1 and r.data["n"] == before + 1

    deadline = time.time() + 3
    while (not ctl.rtt_reports or client.rtt_ms is None) and time.time() < deadline:
        time.sleep(0.05)
    assert ctl.heartbeats >= 1 and ctl.rtt_reports and 0 <= client.rtt_ms < 1000
    assert ctl.rtt_reports[-1] >= 0

    s = client.stats
    assert s["frames_ok"] >= 5 and s["hb_sent"] >= 1 and s["hback"] >= 1
    assert s["crc_errors"] == s["cobs_errors"] == s["cbor_errors"] == 0
    assert ctl.link.stats["frames_ok"] >= 5 and ctl.link.stats["crc_errors"] == 0


def test_pty_subscriptions_and_garbage(pty_pair):
    ctl, client = pty_pair
    tels, evts = [], []
    client.subscribe("tel", tels.append)
    client.subscribe("evt", evts.append)
    client.subscribe("evt", lambda m: 1 / 0)  # a broken subscriber must not stop the reader
    assert client.command("emit", timeout=2).ok
    deadline = time.time() + 2
    while not (tels and evts) and time.time() < deadline:
        time.sleep(0.02)
    assert tels[0]["samples"] == [{"t_ms": 1, "ma": 16000}]
    assert evts[0]["events"][0]["code"] == "V2G-101" and evts[0]["events"][0]["on"] is True
    assert client.stats["callback_errors"] == 1

    ctl.raw(b"\x01\x02garbage\xff\x00" + b"\x7f" * 2000 + b"\x00")
    assert client.command("status", timeout=2).ok  # still in sync afterwards
    s = client.stats
    assert s["oversize"] == 1 and s["cobs_errors"] + s["crc_errors"] == 1


def test_pty_timeouts_and_deadlines(pty_pair):
    ctl, client = pty_pair
    t0 = time.monotonic()
    with pytest.raises(hlink.LinkTimeout, match="after 2 tries"):
        client.command("mute", timeout=0.2, retries=1)
    assert time.monotonic() - t0 >= 0.4
    assert client.stats["timeouts"] == 2      # each unanswered try is counted

    r = client.command("start", deadline_ms=client.now_ms() - 1)
    assert not r.ok and r.code == "V2G-110"  # refused locally, never sent
    with pytest.raises(hlink.LinkTimeout, match="deadline"):
        client.command("mute", deadline_ms=client.now_ms() + 300, timeout=1, retries=3)
    r = client.command("status", deadline_ms=client.now_ms() + 2000)
    assert r.ok


def test_loop_url_and_bad_input():
    with hlink.LinkClient("loop://", heartbeat_s=None) as client:
        # loop:// hands our own frames back: a sent hb arrives as an hb
        client.send({"t": "hb", "seq": 5, "host_ms": 1})
        assert client.wait_for("hb", timeout=2)["seq"] == 5
        with pytest.raises(hlink.LinkError, match="exceeds"):
            client.send({"t": "tel", "samples": [{"pad": b"x" * 2000}]})
        with pytest.raises(hlink.LinkError, match="txn length"):
            client.command("status", txn="x" * 65)
    with pytest.raises(hlink.LinkError, match="cannot open"):
        hlink.LinkClient("/dev/does-not-exist-v2g").open()


def test_reader_failure_wakes_waiters():
    master, slave = os.openpty()
    tty.setraw(slave)
    client = hlink.LinkClient(os.ttyname(slave), heartbeat_s=None).open()
    try:
        result = {}

        def run():
            try:
                client.command("status", timeout=5, retries=0)
            except hlink.LinkError as e:
                result["err"] = e

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.2)
        os.close(master)  # the controller side vanishes (USB unplugged)
        t.join(timeout=6)
        assert isinstance(result.get("err"), hlink.LinkError)
    finally:
        client.close()
        os.close(slave)


def _reference_cobs_encode(data):
    # COBS written out the plain way (one byte at a time), as the check on core.cobs
    out, block = bytearray(), bytearray()
    ended_full = False  # the last thing emitted was a full 254-byte block
    for b in data:
        ended_full = False
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out += b"\xff" + block  # a full block implies no zero
                block.clear()
                ended_full = True
    if not ended_full:
        out += bytes([len(block) + 1]) + block
    return bytes(out)


def test_cobs_matches_the_plain_algorithm_at_boundaries():
    for n in (0, 1, 253, 254, 255, 508, 509, 1100):
        for fill in (b"\x01", b"\x00", b"\x00\x11"):
            d = (fill * n)[:n]
            assert _reference_cobs_encode(d) == cobs.encode(d)
            assert cobs.decode(cobs.encode(d)) == d
    with pytest.raises(cobs.COBSError):
        cobs.decode(b"\x05\x01")


def test_doc_examples_are_real_frames():
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "host-link.md").read_text()
    frames = [bytes.fromhex(h) for h in re.findall(r"^([0-9a-f]{30,}00)$", doc, re.M)]
    assert len(frames) >= 5
    rx = link.Link(None)
    for f in frames:
        msgs = rx.feed(f)
        assert len(msgs) == 1 and link.check(msgs[0]) is None
        assert hlink.Deframer().feed(f) == msgs
    assert rx.stats["frames_ok"] == len(frames)


class _DeafPort:
    """A port whose reading side fails while writing still works (a half-broken adapter)."""

    in_waiting = 0

    def __init__(self):
        self.written = []

    def read(self, n):
        time.sleep(0.05)
        raise serial.SerialException("read failed: device reports readiness to read but returned no data")

    def write(self, data):
        self.written.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass


def test_a_deaf_client_stops_its_heartbeats_and_fails_commands_at_once():
    port = _DeafPort()
    client = hlink.LinkClient("deaf", heartbeat_s=0.05, port=port).open()
    try:
        time.sleep(0.5)
        assert client.error
        n = len(port.written)
        time.sleep(0.3)
        assert len(port.written) == n, "heartbeats went on after the reader failed"
        start = time.monotonic()
        with pytest.raises(hlink.LinkError, match="failed"):
            client.command("status", timeout=5)
        assert time.monotonic() - start < 0.5
    finally:
        client.close()
