"""`v2g bridge --local-link`: local tools reach the controller through a running bridge.

First the relay on its own (host_tools.bridge.local_link against a stand-in for the bridge's
controller link, over a real loopback socket): what is forwarded, what is not, txn mapping,
corrupt frames, a client that leaves mid-command, the client limit, an OCPP update in progress.

Then the whole thing: the virtual board (in-process, with an update key, as in test_fota),
`v2g bridge` as a subprocess connected to a CSMS written with the `ocpp` package, and the real
`v2g diag` and `v2g fota` commands on socket://127.0.0.1:PORT while the bridge stays online.
The tests below the rig share it and run in file order.
"""

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import time

import pytest
from bridge_helpers import BridgeProc, stop_all, wait_until
from ocpp.v21 import call
from ocpp_csms import Csms
from test_fota import firmware_tree, give_key
from vboard_fixture import V2G

from host_tools import fota, vboard
from host_tools import link as hl
from host_tools.bridge.local_link import LocalLink, controller_txn
from host_tools.link import Deframer, LinkClient, encode_frame
from signing import bundle as sb
from signing import keys

STATION = "CS-LOCAL-1"
HELLO = {"v": 1, "t": "hello", "fw": "0.1.0", "board": "sim", "cfg_hash": "ab", "reset_cause": "power_on",
         "boot_count": 3}


# ------------------------------------------------------------------ the relay on its own

class FakeLink:
    """Stands for the bridge's AsyncLink: records what is sent to the controller."""

    def __init__(self):
        self.sent = []
        self.subs = {}
        self.pending = {}
        self.error = None
        self.last_hello = dict(HELLO)

    def subscribe(self, t, fn):
        self.subs.setdefault(t, []).append(fn)

    def send(self, msg):
        self.sent.append(msg)

    def backlog(self):
        return 0

    def deliver(self, msg):            # a message from the controller
        for fn in self.subs.get(msg["t"], ()):
            fn(dict({"v": 1}, **msg))


class RawClient:
    """A local tool speaking the framing by hand over the loopback socket."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), 2)
        self.s.settimeout(0.05)
        self.d = Deframer()
        self.got = []

    def send(self, msg):
        self.s.sendall(encode_frame(dict({"v": 1}, **msg)))

    def poll(self):
        try:
            data = self.s.recv(65536)
        except (socket.timeout, BlockingIOError):
            return
        if not data:
            raise ConnectionError("closed by the bridge")
        self.got += self.d.feed(data)

    def close(self):
        self.s.close()


def _fits(msg):
    try:
        encode_frame(msg)
    except hl.LinkError:
        return False
    return True


async def _until(fn, clients, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for c in clients:
            c.poll()
        if fn():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@contextlib.asynccontextmanager
async def serving(**kw):
    """A LocalLink on a free port, serving and relaying to a FakeLink; stopped and its
    socket closed afterwards, whatever the test did."""
    ll = LocalLink(0, **kw)
    server = asyncio.ensure_future(ll.serve())
    fake = FakeLink()
    ll.attach(fake)
    try:
        yield ll, fake
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        ll.sock.close()


def test_relay_forwards_commands_copies_telemetry_and_filters_the_rest():
    async def run():
        logs = []
        busy = [False]
        async with serving(clog=lambda code, msg: logs.append(msg), busy=lambda: busy[0],
                           refused_hold_s=1.0) as (ll, fake):
            loop = asyncio.get_running_loop()
            a = await loop.run_in_executor(None, RawClient, ll.port)
            b = await loop.run_in_executor(None, RawClient, ll.port)
            await _until(lambda: len(ll.clients) == 2, [a, b])
            # hello: answered from the controller's last one, nothing sent to the controller
            a.send({"t": "hello"})
            # heartbeats and rtt: not forwarded (only the bridge's keep the controller out of charge-only)
            a.send({"t": "hb", "seq": 1, "host_ms": 5})
            a.send({"t": "rtt", "ms": 3})
            # corrupt frames: counted and dropped, never forwarded
            a.s.sendall(b"\x05garbage\x00" + b"\x03\x01\x02\x00" + encode_frame({"v": 1, "t": "cmd"})
                        + encode_frame({"v": 2, "t": "hb", "seq": 1, "host_ms": 1}))
            body = bytearray(encode_frame({"v": 1, "t": "cmd", "txn": "x1", "op": "status", "args": {}}))
            body[5] ^= 0x40   # a bit flipped: CRC
            a.s.sendall(bytes(body))
            # a command: forwarded under the controller txn, twice for a retry (same controller txn)
            a.send({"t": "cmd", "txn": "h000000000001", "op": "status", "args": {}})
            a.send({"t": "cmd", "txn": "h000000000001", "op": "status", "args": {}})
            b.send({"t": "cmd", "txn": "bb", "op": "diag", "args": {}, "ttl_ms": 3000})
            await _until(lambda: len(fake.sent) == 3 and a.got, [a, b])
            assert [m["t"] for m in a.got] == ["hello"] and a.got[0]["fw"] == "0.1.0"
            ctl_a, ctl_b = controller_txn("h000000000001"), controller_txn("bb")
            assert [m["txn"] for m in fake.sent] == [ctl_a, ctl_a, ctl_b]
            assert ctl_a.startswith("L") and len(ctl_a) == 13 and len(ctl_b) == 13   # as long, or 13 at least
            assert len(controller_txn("x" * 64)) == 64 and controller_txn("x" * 64) != controller_txn("x" * 63)
            assert fake.sent[2]["ttl_ms"] == 3000 and fake.sent[2]["op"] == "diag"   # the rest as sent
            assert ll.stats["hb_ignored"] == 2
            assert a.got == [dict(HELLO)]
            # the results go back to their own client only, under the client's txn
            fake.deliver({"t": "res", "txn": ctl_b, "ok": True, "code": None, "msg": "", "data": {"x": 1}})
            fake.deliver({"t": "res", "txn": ctl_a, "ok": True, "code": None, "msg": "", "data": {"y": 2}})
            fake.deliver({"t": "res", "txn": ctl_a, "ok": True, "code": None, "msg": "", "data": {"y": 2}})
            fake.deliver({"t": "res", "txn": "h123456789012", "ok": True, "code": None, "msg": "", "data": {}})
            # telemetry, events and hellos go to everyone; hback (the bridge's) to no one
            fake.deliver({"t": "tel", "samples": [{"t_ms": 1}]})
            fake.deliver({"t": "evt", "events": [{"t_ms": 1, "code": "V2G-101", "on": True, "msg": "m"}]})
            fake.deliver({"t": "hback", "seq": 1, "host_ms": 1})
            await _until(lambda: len(a.got) >= 4 and len(b.got) >= 3, [a, b])
            await asyncio.sleep(0.1)
            for c in (a, b):
                c.poll()
            assert [(m["t"], m.get("txn")) for m in a.got[1:]] == [("res", "h000000000001"), ("tel", None),
                                                                    ("evt", None)]
            assert a.got[1]["data"] == {"y": 2}
            assert [(m["t"], m.get("txn")) for m in b.got] == [("res", "bb"), ("tel", None), ("evt", None)]
            assert ll.stats["late_results"] == 1          # the retry's second answer: no one waits
            assert not ll.pending
            # a client that leaves mid-command leaves nothing pending; its late result goes nowhere
            b.send({"t": "cmd", "txn": "gone", "op": "status", "args": {}})
            await _until(lambda: len(fake.sent) == 4, [a, b])
            assert controller_txn("gone") in ll.pending
            b.close()
            await _until(lambda: len(ll.clients) == 1, [a])
            assert not ll.pending
            fake.deliver({"t": "res", "txn": controller_txn("gone"), "ok": True, "code": None, "msg": "", "data": {}})
            # the corrupt frames were counted on the client's side and logged when it left
            a.close()
            await _until(lambda: not ll.clients, [])
            left = [m for m in logs if "client 1 " in m and "left" in m][0]
            assert "'crc_errors': 2" in left and "'bad_msg': 2" in left and "'cobs_errors': 1" in left, left
            assert len(fake.sent) == 4                   # nothing corrupt, no hb, no rtt, no hello reached it
            # an OCPP update in progress: a local push is refused by the bridge, reads still go through
            c = await loop.run_in_executor(None, RawClient, ll.port)
            # a chunk filling the frame with a 2-character txn would not fit under the relayed one:
            # refused by the bridge, with the reason, instead of a silent drop
            n = next(n for n in range(1100, 0, -1) if _fits(
                {"v": 1, "t": "cmd", "txn": "ff", "op": "fota_chunk", "args": {"off": 0, "data": b"x" * n}}))
            c.send({"t": "cmd", "txn": "ff", "op": "fota_chunk", "args": {"off": 0, "data": b"x" * n}})
            await _until(lambda: c.got, [c])
            assert c.got[0]["code"] == "V2G-400" and "does not fit one frame" in c.got[0]["msg"]
            assert len(fake.sent) == 4 and not ll.pending
            c.got.clear()
            busy[0] = True
            c.send({"t": "cmd", "txn": "f1", "op": "fota_begin", "args": {"size": 10, "id": b"x" * 16}})
            c.send({"t": "cmd", "txn": "f2", "op": "fota_status", "args": {}})
            await _until(lambda: c.got and len(fake.sent) == 5, [c])
            assert c.got[0]["txn"] == "f1" and c.got[0]["code"] == "V2G-400" and "UpdateFirmware" in c.got[0]["msg"]
            assert fake.sent[-1]["op"] == "fota_status"
            # the controller offline: commands and hellos get no answer, as with no controller at all
            ll.detach(fake)
            c.send({"t": "cmd", "txn": "f3", "op": "status", "args": {}})
            c.send({"t": "hello"})
            await asyncio.sleep(0.2)
            c.poll()
            assert len(c.got) == 1 and len(fake.sent) == 5 and ll.stats["offline_drops"] == 2
            c.close()
    asyncio.run(run())


def test_relay_refuses_a_client_past_the_limit_with_the_reason():
    async def run():
        async with serving(max_clients=2, refused_hold_s=1.0) as (ll, fake):
            loop = asyncio.get_running_loop()
            cs = [await loop.run_in_executor(None, RawClient, ll.port) for _ in range(3)]
            await _until(lambda: len(ll.clients) == 2 and ll.stats["clients_refused"] == 1, cs)
            extra = cs[2]
            extra.send({"t": "hello"})
            extra.send({"t": "cmd", "txn": "t1", "op": "status", "args": {}})
            await _until(lambda: len(extra.got) == 2, [extra])
            assert extra.got[0]["t"] == "hello"
            res = extra.got[1]
            assert res["txn"] == "t1" and res["ok"] is False and res["code"] == "V2G-400"
            assert "2 local clients" in res["msg"], res["msg"]
            assert not fake.sent                       # nothing of the refused client reached the controller
            t0 = time.monotonic()
            with pytest.raises(ConnectionError):
                await _until(lambda: False, [extra], timeout=3.0)   # closed after the hold
            assert time.monotonic() - t0 < 1.5
            cs[0].close()
            await _until(lambda: len(ll.clients) == 1, [])
            again = await loop.run_in_executor(None, RawClient, ll.port)
            await _until(lambda: len(ll.clients) == 2, [again])
            again.send({"t": "cmd", "txn": "t2", "op": "status", "args": {}})
            await _until(lambda: len(fake.sent) == 1, [again])
            for c in (cs[1], again):
                c.close()
    asyncio.run(run())


def test_port_in_use_is_refused_clearly():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=f"local link: cannot listen on 127.0.0.1:{port}"):
            LocalLink(port)


# ------------------------------------------------------------------ through a running bridge

@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local_link")
    key = keys.generate()
    state = tmp / "board"
    vboard.provision(state)
    give_key(state, key)
    cfg = tmp / "etc"
    cfg.mkdir(mode=0o750)
    started = []
    try:
        vb = vboard.VirtualBoard(state)
        eps = vb.start()
        started.append(vb.stop)
        csms = Csms(heartbeat_s=2).start()
        started.append(csms.close)
        bridge = BridgeProc(eps["link"], csms.url, STATION, cfg, tmp / "log", tmp / "state",
                            "--retry-backoff", "0.3,0.3,2", "--local-link", "0")
        started.append(bridge.stop)
        m = wait_until(lambda: re.search(r"local link on (socket://127\.0\.0\.1:(\d+))", bridge.log_text()),
                       what="the local link's port in central_system.log")
        url = m.group(1)
        csms.wait_for("BootNotification", timeout=30)
        yield {"url": url, "port": int(m.group(2)), "csms": csms, "bridge": bridge, "key": key, "tmp": tmp,
               "state": state}
    finally:
        stop_all(started)


def _csms_online(csms):
    """The bridge is still connected: a fresh Heartbeat reaches the CSMS (2 s interval)."""
    n = len(csms.messages("Heartbeat"))
    wait_until(lambda: len(csms.messages("Heartbeat")) > n, timeout=6, what="a Heartbeat at the CSMS")
    assert STATION in csms.stations


def test_the_bridge_announces_its_local_link(rig):
    out = (rig["tmp"] / f"bridge-{STATION}.stderr").read_text()
    assert f"local link: {rig['url']}" in out            # printed at start: 0 picked this port
    assert rig["port"] != 0


def test_diag_and_console_through_the_running_bridge(rig):
    t0 = time.monotonic()
    p = subprocess.run([V2G, "diag", "--all", "--json", "--port", rig["url"]], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["firmware"]["fw"] == "0.1.0" and rep["firmware"]["board"] == "sim"
    assert rep["port"] == rig["url"] and isinstance(rep["events"], list)
    print("diag --all --json via the bridge: {:.1f} s".format(time.monotonic() - t0))
    p = subprocess.run([V2G, "diag", "--all", "--port", rig["url"]], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "0.1.0" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([V2G, "console", "--port", rig["url"], "--exec", "status", "--exec", "events"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "firmware 0.1.0 board sim" in p.stdout and "V2G-507" in p.stdout, p.stdout
    _csms_online(rig["csms"])


def test_commands_idempotent_and_telemetry_copied(rig):
    with LinkClient(rig["url"], heartbeat_s=0.5) as lk:
        assert lk.hello()["fw"] == "0.1.0"
        assert lk.wait_for("tel", 5)["samples"]                 # the controller's telemetry, copied
        r = lk.command("soc_target", {"soc_pct": 80}, txn="hlocal0000001")
        assert r.ok, r
        # the same txn again, now with a bad value: the controller answers it from its journal,
        # so the relay mapped the retry to the same controller txn
        again = lk.command("soc_target", {"soc_pct": 300}, txn="hlocal0000001")
        assert again.ok and again.msg == r.msg
        bad = lk.command("soc_target", {"soc_pct": 300})
        assert not bad.ok and bad.code == "V2G-400"
    with LinkClient(rig["url"], heartbeat_s=None) as lk:         # a new connection: still the same
        assert lk.command("soc_target", {"soc_pct": 300}, txn="hlocal0000001").ok
        before = lk.command("diag", {}).data["link"]
        # corrupt frames from a local tool never reach the controller
        lk._write(b"\x05junk\x00" + b"\x02\xff\x00" + b"\x7f" * 3000 + b"\x00")
        after = lk.command("diag", {}).data["link"]
        for k in ("crc_errors", "cobs_errors", "oversize", "cbor_errors", "bad_msg"):
            assert after[k] == before[k], (k, before, after)
    wait_until(lambda: re.search(r"client \d+ from \S+ left .*'oversize': 1", rig["bridge"].log_text()),
               what="the dropped frames in the bridge's log")


def test_fota_through_the_bridge_resumes_and_installs(rig):
    key = rig["key"]
    bundle = sb.sign(key, firmware_tree("0.2.0"), 5, "0.2.0", "sim", 1)
    path = rig["tmp"] / "update.v2gb"
    path.write_bytes(bundle)
    half = len(bundle) // 2
    t0 = time.monotonic()
    with LinkClient(rig["url"], heartbeat_s=None) as lk:
        fota.transfer(lk, bundle, window=4, stop_at=half)
        st = fota.status(lk)
        assert st["dl"]["next"] >= half
        # then the tool goes away with a window of chunks in flight
        step = fota.chunk_size(len(bundle))
        off = st["dl"]["next"]
        for i in range(4):
            lk.send({"t": "cmd", "txn": hl.new_txn(), "op": "fota_chunk",
                     "args": {"off": off + i * step, "data": bundle[off + i * step:off + (i + 1) * step]}})
    # while the local push is under way the CSMS's own update is turned away, not mixed in
    kind, res = rig["csms"].request(STATION, call.UpdateFirmware(
        request_id=9, firmware={"location": path.as_uri(), "retrieve_date_time": "2026-01-01T00:00:00Z"}))
    assert kind == "result" and res["status"] == "Rejected", res
    assert res["statusInfo"]["reasonCode"] == "InProgress"
    mark = rig["csms"].mark()
    p = subprocess.run([V2G, "fota", "--port", rig["url"], "--json", "--trial-s", "60", str(path)],
                       capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["ok"] is True and rep["size"] == len(bundle)
    assert half <= rep["resumed_from"] <= half + 5 * step + 1000      # resumed, not restarted
    assert rep["slot"] == "a" and rep["running"]["version"] == "0.2.0" and rep["running"]["active"] == "a"
    print("fota via the bridge: {} bytes, resumed at {}, {:.1f} s in all, transfer {:.2f} s".format(
        len(bundle), rep["resumed_from"], took, rep["transfer_s"]))
    # the bridge saw the new firmware and told the CSMS, without losing its connection
    boot = rig["csms"].wait_for("BootNotification", lambda kw: kw["reason"] == "FirmwareUpdate", after=mark)
    assert boot["charging_station"]["firmware_version"] == "0.2.0"
    _csms_online(rig["csms"])
    with LinkClient(rig["url"], heartbeat_s=None) as lk:
        assert lk.hello()["fw"] == "0.2.0"


def test_a_fifth_tool_is_refused_with_the_reason(rig):
    clients = [LinkClient(rig["url"], heartbeat_s=None).open() for _ in range(4)]
    try:
        for c in clients:
            assert c.hello()["fw"]
        p = subprocess.run([V2G, "diag", "--port", rig["url"]], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "4 local clients" in p.stderr, p.stdout + p.stderr
        clients.pop().close()
        wait_until(lambda: subprocess.run([V2G, "diag", "--port", rig["url"]], capture_output=True,
                                          timeout=60).returncode == 0, timeout=20, what="diag after a tool left")
    finally:
        for c in clients:
            c.close()
    assert "refused" in rig["bridge"].log_text()
